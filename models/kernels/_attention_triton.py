"""Triton kernels of the fused attention core (definitions only: imports nothing but triton).

out = softmax(q k^T + bias, masked) v with q pre-scaled.  Scores are kept in the log2
domain (multiplied by log2(e)) so the softmax uses exp2; LSE is stored in that domain.
All reductions and accumulators are float32.  Loaded on demand by
``_triton_utils.kernel_module`` in compiled or interpreted form; see ``attention.py``
for the host side and docs/KERNELS.md for the design.

Bias modes (``BIAS_MODE``): 0 none; 1 dense, ``Bias`` is the (B|1, H|1, S, S) tensor
with strides ``stride_b*``; 2 bucketed, ``Bias`` is the (num_buckets, H) table (row
stride ``stride_t``, head stride ``stride_bh``) and ``Index`` the (B|1, S, S) bucket map
with strides ``stride_bb, stride_bm, stride_bn`` -- the bias is gathered per tile and
never materialised.

``DOT_F32`` upcasts every matmul operand to float32 after it has been rounded to the
input dtype: Triton's CPU interpreter keeps bfloat16 as raw uint16 bits and its
``tl.dot``/arithmetic on them is wrong, while its float32<->bfloat16 casts are exact.
On a GPU it is always False (tensor-core dots on fp16/bf16 with fp32 accumulation).
"""
import triton
import triton.language as tl

# tl.sum / tl.max / tl.zeros are @jit functions decorated when triton itself is
# imported, so they only work in the mode (compiled or interpreted) that triton was
# imported in.  The builtins tl.reduce / tl.full work in both, and the interpreter
# runs tl.reduce with triton's own combine functions as one numpy call.
_ADD = getattr(tl.standard, "_sum_combine", None)
_MAX = getattr(tl.standard, "_elementwise_max", None)
if _ADD is None or _MAX is None:  # private names moved: same maths, slower interpreter
    @triton.jit
    def _ADD(a, b):
        return a + b

    @triton.jit
    def _MAX(a, b):
        return tl.maximum(a, b)


@triton.jit
def _bias_tile(Bias, Index, b, h, rows, cols, tile_ok, stride_bb, stride_bh, stride_row, stride_col, stride_t,
               BIAS_MODE: tl.constexpr):
    # float32 bias tile [rows, cols].  The dK/dV kernel asks for the transposed tile by
    # passing keys as rows and swapping the two strides.
    if BIAS_MODE == 1:
        tile = tl.load(Bias + b * stride_bb + h * stride_bh + rows[:, None] * stride_row + cols[None, :] * stride_col,
                       mask=tile_ok, other=0.0)
    else:
        idx = tl.load(Index + b * stride_bb + rows[:, None] * stride_row + cols[None, :] * stride_col,
                      mask=tile_ok, other=0)
        tile = tl.load(Bias + idx.to(tl.int64) * stride_t + h * stride_bh, mask=tile_ok, other=0.0)
    return tile.to(tl.float32)


@triton.jit
def attn_fwd(Q, K, V, Bias, Index, Mask, Out, Lse,
             stride_qb, stride_qh, stride_qm,
             stride_kb, stride_kh, stride_kn,
             stride_vb, stride_vh, stride_vn,
             stride_ob, stride_oh, stride_om,
             stride_bb, stride_bh, stride_bm, stride_bn, stride_t,
             stride_mb,
             H, S,
             HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             BIAS_MODE: tl.constexpr, HAS_MASK: tl.constexpr, DOT_F32: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)  # int64: bias offsets of large batches pass 2**31
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < S

    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, HEAD_DIM], 0.0, tl.float32)
    for start_n in range(0, S, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < S
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=key_ok[:, None], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=key_ok[:, None], other=0.0)
        if DOT_F32:
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k))
        if BIAS_MODE != 0:
            s += _bias_tile(Bias, Index, b, h, offs_m, offs_n, row_ok[:, None] & key_ok[None, :],
                            stride_bb, stride_bh, stride_bm, stride_bn, stride_t, BIAS_MODE)
        if HAS_MASK:
            pad = tl.load(Mask + b * stride_mb + offs_n, mask=key_ok, other=1)
            key_ok = key_ok & (pad == 0)
        # Padded and out-of-range keys get -inf before the running max.
        s = tl.where(key_ok[None, :], s * 1.4426950408889634, float("-inf"))
        m_new = tl.maximum(m_i, tl.reduce(s, 1, _MAX))
        # A row whose keys so far are all masked keeps m = -inf; shift by 0 to avoid inf - inf.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_shift[:, None])
        alpha = tl.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.reduce(p, 1, _ADD)
        # P is rounded to the value dtype before the PV product (as the reference does).
        p_mm = p.to(V.dtype.element_ty)
        if DOT_F32:
            p_mm = p_mm.to(tl.float32)
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p_mm, v)
        m_i = m_new

    # Rows with every key masked: output 0 and LSE = +inf so the backward gets P = 0.
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    tl.store(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    tl.store(Lse + pid_bh.to(tl.int64) * S + offs_m, lse, mask=row_ok)


@triton.jit
def attn_bwd_delta(Out, DO, Delta,
                   stride_ob, stride_oh, stride_om,
                   stride_db, stride_dh, stride_dm,
                   H, S,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    # delta_i = sum_d dO_id * O_id = sum_j P_ij dP_ij, the softmax-backward row term.
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < S
    o = tl.load(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
                mask=row_ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + b * stride_db + h * stride_dh + offs_m[:, None] * stride_dm + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0).to(tl.float32)
    tl.store(Delta + pid_bh.to(tl.int64) * S + offs_m, tl.reduce(o * do, 1, _ADD), mask=row_ok)


@triton.jit
def attn_bwd_dkdv(Q, K, V, Bias, Index, Mask, DO, Lse, Delta, DK, DV,
                  stride_qb, stride_qh, stride_qm,
                  stride_kb, stride_kh, stride_kn,
                  stride_vb, stride_vh, stride_vn,
                  stride_dob, stride_doh, stride_dom,
                  stride_dkb, stride_dkh, stride_dkn,
                  stride_dvb, stride_dvh, stride_dvn,
                  stride_bb, stride_bh, stride_bm, stride_bn, stride_t,
                  stride_mb,
                  H, S,
                  HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BIAS_MODE: tl.constexpr, HAS_MASK: tl.constexpr, DOT_F32: tl.constexpr):
    # One program owns a block of keys and walks over every query block; working on the
    # transposed tiles (keys x queries) avoids transposing P and dS before the dots.
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    key_in = offs_n < S
    k = tl.load(K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
                mask=key_in[:, None], other=0.0)
    v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :],
                mask=key_in[:, None], other=0.0)
    if DOT_F32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    key_ok = key_in
    if HAS_MASK:
        pad = tl.load(Mask + b * stride_mb + offs_n, mask=key_in, other=1)
        key_ok = key_ok & (pad == 0)

    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_dob + h * stride_doh
    row_base = pid_bh.to(tl.int64) * S
    dk = tl.full([BLOCK_N, HEAD_DIM], 0.0, tl.float32)
    dv = tl.full([BLOCK_N, HEAD_DIM], 0.0, tl.float32)
    for start_m in range(0, S, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < S
        q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dom + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        # Out-of-range rows: LSE = +inf gives P = 0 there.
        lse = tl.load(Lse + row_base + offs_m, mask=row_ok, other=float("inf"))
        delta = tl.load(Delta + row_base + offs_m, mask=row_ok, other=0.0)
        if DOT_F32:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        s_t = tl.dot(k, tl.trans(q))
        if BIAS_MODE != 0:
            s_t += _bias_tile(Bias, Index, b, h, offs_n, offs_m, key_in[:, None] & row_ok[None, :],
                              stride_bb, stride_bh, stride_bn, stride_bm, stride_t, BIAS_MODE)
        p_t = tl.exp2(s_t * 1.4426950408889634 - lse[None, :])
        p_t = tl.where(key_ok[:, None], p_t, 0.0)
        p_mm = p_t.to(Q.dtype.element_ty)
        if DOT_F32:
            p_mm = p_mm.to(tl.float32)
        dv += tl.dot(p_mm, do)
        dp_t = tl.dot(v, tl.trans(do))
        ds_t = p_t * (dp_t - delta[None, :])
        ds_mm = ds_t.to(Q.dtype.element_ty)
        if DOT_F32:
            ds_mm = ds_mm.to(tl.float32)
        dk += tl.dot(ds_mm, q)

    tl.store(DK + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=key_in[:, None])
    tl.store(DV + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=key_in[:, None])


@triton.jit
def attn_bwd_dq(Q, K, V, Bias, Index, Mask, DO, Lse, Delta, DQ, DBias,
                stride_qb, stride_qh, stride_qm,
                stride_kb, stride_kh, stride_kn,
                stride_vb, stride_vh, stride_vn,
                stride_dob, stride_doh, stride_dom,
                stride_dqb, stride_dqh, stride_dqm,
                stride_bb, stride_bh, stride_bm, stride_bn, stride_t,
                stride_gb, stride_gh, stride_gm, stride_gn,
                stride_mb,
                H, S,
                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BIAS_MODE: tl.constexpr, HAS_MASK: tl.constexpr, DBIAS_MODE: tl.constexpr,
                DOT_F32: tl.constexpr):
    # One program owns a block of queries.  DBIAS_MODE 1 (bias per (batch, head)): dBias
    # = dS and each tile of it is produced exactly once here, so it is stored without
    # atomics.  DBIAS_MODE 2: bucketed table gradient, see below.
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < S
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0)
    row_base = pid_bh.to(tl.int64) * S
    lse = tl.load(Lse + row_base + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(Delta + row_base + offs_m, mask=row_ok, other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
        do = do.to(tl.float32)

    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    dbias_base = DBias + b * stride_gb + h * stride_gh
    dq = tl.full([BLOCK_M, HEAD_DIM], 0.0, tl.float32)
    for start_n in range(0, S, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_in = offs_n < S
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=key_in[:, None], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=key_in[:, None], other=0.0)
        if DOT_F32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k))
        tile_ok = row_ok[:, None] & key_in[None, :]
        if BIAS_MODE != 0:
            s += _bias_tile(Bias, Index, b, h, offs_m, offs_n, tile_ok,
                            stride_bb, stride_bh, stride_bm, stride_bn, stride_t, BIAS_MODE)
        key_ok = key_in
        if HAS_MASK:
            pad = tl.load(Mask + b * stride_mb + offs_n, mask=key_in, other=1)
            key_ok = key_ok & (pad == 0)
        p = tl.exp2(s * 1.4426950408889634 - lse[:, None])
        p = tl.where(key_ok[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        ds_mm = ds.to(Q.dtype.element_ty)
        if DOT_F32:
            ds_mm = ds_mm.to(tl.float32)
        dq += tl.dot(ds_mm, k)
        if DBIAS_MODE == 1:
            tl.store(dbias_base + offs_m[:, None] * stride_gm + offs_n[None, :] * stride_gn,
                     ds.to(DBias.dtype.element_ty), mask=tile_ok)
        if DBIAS_MODE == 2:
            # Bucketed: dTable[bucket, h] += dS through float32 atomics (the bucket map
            # sends many (i, j) -- and every batch -- to the same table entry).
            idx = tl.load(Index + b * stride_bb + offs_m[:, None] * stride_bm + offs_n[None, :] * stride_bn,
                          mask=tile_ok, other=0)
            tl.atomic_add(DBias + idx.to(tl.int64) * stride_gm + h * stride_gh, ds, mask=tile_ok)

    tl.store(DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def attn_bwd_dbias_reduce(Q, K, V, Bias, Mask, DO, Lse, Delta, DBias,
                          stride_qb, stride_qh, stride_qm,
                          stride_kb, stride_kh, stride_kn,
                          stride_vb, stride_vh, stride_vn,
                          stride_dob, stride_doh, stride_dom,
                          stride_bb, stride_bh, stride_bm, stride_bn, stride_t,
                          stride_gb, stride_gh, stride_gm, stride_gn,
                          stride_mb,
                          H, S, BIAS_H, RED_B, RED_H,
                          HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          HAS_MASK: tl.constexpr, DOT_F32: tl.constexpr):
    # Gradient of a bias broadcast over batch (and/or heads): one program owns one
    # (query block, key block) tile of dBias and sums dS over the broadcast (b, h) in
    # registers -- deterministic, no atomics, no (B, H, S, S) buffer.  It recomputes
    # S and dP for the tile (two extra dots per tile and batch).
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_g = tl.program_id(2)
    gb = (pid_g // BIAS_H).to(tl.int64)
    gh = (pid_g % BIAS_H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < S
    key_in = offs_n < S
    tile_ok = row_ok[:, None] & key_in[None, :]
    bias_ptrs = Bias + gb * stride_bb + gh * stride_bh + offs_m[:, None] * stride_bm + offs_n[None, :] * stride_bn
    acc = tl.full([BLOCK_M, BLOCK_N], 0.0, tl.float32)
    for r in range(0, RED_B * RED_H):
        # RED_B > 1 only when the bias batch is 1 (gb = 0); likewise for heads.
        b = gb + r // RED_H
        h = gh + r % RED_H
        q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                    mask=row_ok[:, None], other=0.0)
        do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :],
                     mask=row_ok[:, None], other=0.0)
        k = tl.load(K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
                    mask=key_in[:, None], other=0.0)
        v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :],
                    mask=key_in[:, None], other=0.0)
        if DOT_F32:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        row_base = (b * H + h) * S
        lse = tl.load(Lse + row_base + offs_m, mask=row_ok, other=float("inf"))
        delta = tl.load(Delta + row_base + offs_m, mask=row_ok, other=0.0)
        key_ok = key_in
        if HAS_MASK:
            pad = tl.load(Mask + b * stride_mb + offs_n, mask=key_in, other=1)
            key_ok = key_ok & (pad == 0)
        # Re-read the (cache-resident) bias tile each round: holding it costs registers.
        s = tl.dot(q, tl.trans(k)) + tl.load(bias_ptrs, mask=tile_ok, other=0.0).to(tl.float32)
        p = tl.exp2(s * 1.4426950408889634 - lse[:, None])
        p = tl.where(key_ok[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v))
        acc += p * (dp - delta[:, None])
    tl.store(DBias + gb * stride_gb + gh * stride_gh + offs_m[:, None] * stride_gm + offs_n[None, :] * stride_gn,
             acc.to(DBias.dtype.element_ty), mask=tile_ok)
