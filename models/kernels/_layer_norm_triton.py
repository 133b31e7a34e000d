"""Triton kernels of the fused LayerNorm (definitions only).

Rows are the flattened leading dims; one tile is ROWS x BLOCK_D (BLOCK_D = next power
of two >= D, masked).  Statistics and all arithmetic are float32; values are cast on
load and on store, which also keeps Triton's CPU interpreter exact for bfloat16.
Weight-type reductions (dW, dB) are written as one float32 partial row per
program and summed on the host: deterministic, no atomics.
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
def ln_fwd(X, W, B, Y, Mean, Rstd,
           stride_x, stride_y, M, D, eps,
           BLOCK_D: tl.constexpr, ROWS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < M
    col_ok = cols < D
    tile_ok = row_ok[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)
    x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=tile_ok, other=0.0).to(tl.float32)
    mean = tl.reduce(x, 1, _ADD) / D
    xc = tl.where(tile_ok, x - mean[:, None], 0.0)
    # Two-pass variance on the centred row (already in registers): no cancellation.
    var = tl.reduce(xc * xc, 1, _ADD) / D
    rstd = 1.0 / tl.sqrt(var + eps)
    y = xc * rstd[:, None]
    if HAS_W:
        y = y * tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows64[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=tile_ok)
    tl.store(Mean + rows, mean, mask=row_ok)
    tl.store(Rstd + rows, rstd, mask=row_ok)


@triton.jit
def ln_bwd(X, W, DY, DX, Mean, Rstd, DWp, DBp,
           stride_x, stride_dy, stride_dx, M, D,
           BLOCK_D: tl.constexpr, ROWS: tl.constexpr, HAS_W: tl.constexpr, NEED_DWB: tl.constexpr):
    # Grid-stride over row tiles so each program's dW/dB partial covers many rows.
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    if HAS_W:
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw = tl.full([BLOCK_D], 0.0, tl.float32)
    db = tl.full([BLOCK_D], 0.0, tl.float32)
    for start in range(pid * ROWS, M, nprog * ROWS):
        rows = start + tl.arange(0, ROWS)
        row_ok = rows < M
        tile_ok = row_ok[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)
        x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=tile_ok, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows64[:, None] * stride_dy + cols[None, :], mask=tile_ok, other=0.0).to(tl.float32)
        mean = tl.load(Mean + rows, mask=row_ok, other=0.0)
        rstd = tl.load(Rstd + rows, mask=row_ok, other=0.0)
        xhat = tl.where(tile_ok, (x - mean[:, None]) * rstd[:, None], 0.0)
        g = dy
        if HAS_W:
            g = dy * w[None, :]
        # dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
        c1 = tl.reduce(g * xhat, 1, _ADD) / D
        c2 = tl.reduce(g, 1, _ADD) / D
        dx = (g - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        tl.store(DX + rows64[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=tile_ok)
        if NEED_DWB:
            dw += tl.reduce(dy * xhat, 0, _ADD)
            db += tl.reduce(dy, 0, _ADD)
    if NEED_DWB:
        tl.store(DWp + pid * D + cols, dw, mask=col_ok)
        tl.store(DBp + pid * D + cols, db, mask=col_ok)
