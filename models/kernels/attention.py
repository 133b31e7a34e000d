"""Fused attention core (Triton): out = softmax(q k^T + bias, key padding) v.

Host side of the kernels in ``_attention_triton.py``: input checks, launch
configuration and the autograd Function.  See docs/KERNELS.md.

* ``q`` is already scaled by ``head_dim ** -0.5``; no scaling happens here.
* ``bias``: None or (B|1, H|1, S, S) (or (S, S)), any float dtype; its gradient is
  returned (summed over broadcast dims) when it requires grad.
* ``key_padding_mask``: None or bool (B, S), True = padded key (excluded).
* ``fused_attention_bucketed``: the bias gathered in-kernel from a (buckets, H) table
  and a bucket map, never materialised; the table gets its gradient.
* Softmax statistics and every accumulator are float32; the output has q's dtype.
* A query row whose keys are all masked returns 0 (and gets zero gradients).
"""
from collections import namedtuple

import torch
from torch.autograd.function import once_differentiable

from ._triton_utils import interpret_requested, kernel_module, launch_context, triton_available

_KERNELS = "one_peace.models.kernels._attention_triton"
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)

KernelConfig = namedtuple("KernelConfig", "block_m block_n num_warps num_stages")
LaunchConfig = namedtuple("LaunchConfig", "fwd dkdv dq reduce")


def _launch_config(head_dim: int, interpret: bool, arch: int = 90) -> LaunchConfig:
    """Tiles per kernel (BLOCK_M = queries, BLOCK_N = keys), warps and pipeline stages.

    Not autotuned (no GPU was available when they were picked): the largest tiles for
    which ``ptxas`` reports no register spills at the launch's alignment, checked with
    ``python -m one_peace.models.kernels.compile_check`` for sm_80 and sm_90.  Under the
    interpreter 32x32 tiles keep CI fast and still give several key blocks, with a
    ragged last one, for the test lengths 33 and 70.
    """
    if interpret:
        tile = KernelConfig(32, 32, 4, 1)
        return LaunchConfig(tile, tile, tile, tile)
    if 90 <= arch < 120:  # Hopper/datacenter Blackwell: up to 227 KiB of shared memory
        bwd = KernelConfig(64, 64, 8, 2)
        return LaunchConfig(KernelConfig(128, 64, 8, 3), bwd, bwd, bwd)
    # sm_80-89 and consumer Blackwell: every tile below needs <= 88 KiB of shared memory.
    fwd = KernelConfig(128, 64, 8, 3) if head_dim <= 64 else KernelConfig(64, 64, 8, 3)
    if head_dim <= 16:
        dkdv, dq = KernelConfig(64, 64, 8, 2), KernelConfig(64, 64, 8, 2)
    elif head_dim <= 32:
        dkdv, dq = KernelConfig(32, 64, 4, 2), KernelConfig(64, 64, 8, 2)
    elif head_dim <= 64:
        dkdv, dq = KernelConfig(64, 32, 4, 2), KernelConfig(64, 32, 8, 2)
    else:
        dkdv, dq = KernelConfig(64, 64, 8, 2), KernelConfig(64, 64, 8, 2)
    return LaunchConfig(fwd, dkdv, dq, KernelConfig(64, 64, 8, 2))


_ARCH_CACHE = {}


def _device_arch(t: torch.Tensor) -> int:
    if not t.is_cuda:
        return 0
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    if index not in _ARCH_CACHE:
        major, minor = torch.cuda.get_device_capability(index)
        _ARCH_CACHE[index] = 10 * major + minor
    return _ARCH_CACHE[index]


def _config_for(q: torch.Tensor, interpret: bool) -> LaunchConfig:
    return _launch_config(q.shape[-1], interpret, _device_arch(q))


def _unsupported_reason(q: torch.Tensor):
    if not triton_available():
        return "triton is not installed"
    interpret = interpret_requested()
    if not (q.is_cuda or interpret):
        return f"tensor on {q.device} (needs CUDA, or TRITON_INTERPRET=1)"
    allowed = (torch.float16, torch.bfloat16, torch.float32) if interpret else (torch.float16, torch.bfloat16)
    if q.dtype not in allowed:
        return f"dtype {q.dtype} (supported: {', '.join(str(d) for d in allowed)})"
    if q.dim() != 4:
        return f"q must be (B, H, S, head_dim), got shape {tuple(q.shape)}"
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return f"head_dim {q.shape[-1]} (supported: {SUPPORTED_HEAD_DIMS})"
    return None


def fused_attention_supported(q: torch.Tensor) -> bool:
    """True iff :func:`fused_attention` can run on tensors like ``q``."""
    return _unsupported_reason(q) is None


def fused_attention_unsupported_reason(q: torch.Tensor):
    """Why :func:`fused_attention` cannot run on tensors like ``q`` (None when it can)."""
    return _unsupported_reason(q)


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _dummy(device, dtype=torch.float32) -> torch.Tensor:
    return torch.empty(1, dtype=dtype, device=device)


def _bias_args(bias, index, device):
    """(bias-or-table pointer, index pointer, BIAS_MODE, (stride_bb, _bh, _bm, _bn, stride_t))."""
    if bias is None:
        return _dummy(device), _dummy(device, torch.int32), 0, (0, 0, 0, 0, 0)
    if index is None:
        # Dense.  Size-1 (broadcast) dims get stride 0: every batch/head reads the same slice.
        strides = tuple(0 if n == 1 else st for n, st in zip(bias.shape, bias.stride()))
        return bias, _dummy(device, torch.int32), 1, strides + (0,)
    # Bucketed: bias[b, h, i, j] = table[index[b, i, j], h]; a size-1 index batch broadcasts.
    index_bb = 0 if index.shape[0] == 1 else index.stride(0)
    strides = (index_bb, bias.stride(1), index.stride(1), index.stride(2), bias.stride(0))
    return bias, index, 2, strides


def _mask_args(mask, device):
    if mask is None:
        return torch.empty(1, dtype=torch.uint8, device=device), 0
    return mask, mask.stride(0)


def _forward(q, k, v, bias, index, mask):
    B, H, S, D = q.shape
    interpret = interpret_requested()
    cfg = _config_for(q, interpret).fwd
    kern = kernel_module(_KERNELS, interpret)
    # Output in (B, S, H, D) memory order: the caller's transpose(1, 2).reshape is free.
    out = torch.empty((B, S, H, D), dtype=q.dtype, device=q.device).transpose(1, 2)
    lse = torch.empty((B, H, S), dtype=torch.float32, device=q.device)
    bias_t, index_t, bias_mode, sb = _bias_args(bias, index, q.device)
    mask_t, sm = _mask_args(mask, q.device)
    grid = (triton_cdiv(S, cfg.block_m), B * H)
    with launch_context(q):
        kern.attn_fwd[grid](
            q, k, v, bias_t, index_t, mask_t, out, lse,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            *sb, sm, H, S,
            HEAD_DIM=D, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
            BIAS_MODE=bias_mode, HAS_MASK=mask is not None, DOT_F32=_dot_f32(q, interpret),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, enable_fp_fusion=True,
        )
    return out, lse


def _dot_f32(q, interpret: bool) -> bool:
    # The interpreter mishandles bfloat16 arithmetic (raw uint16 storage); fp32 inputs
    # must not go through TF32 either.  On a GPU, fp16/bf16 use tensor cores.
    return (interpret and q.dtype != torch.float16) or q.dtype == torch.float32


def _backward(dout, q, k, v, bias, index, mask, out, lse, need_dbias):
    B, H, S, D = q.shape
    interpret = interpret_requested()
    cfg = _config_for(q, interpret)
    kern = kernel_module(_KERNELS, interpret)
    dot_f32 = _dot_f32(q, interpret)
    dout = _last_dim_contiguous(dout)
    bias_t, index_t, bias_mode, sb = _bias_args(bias, index, q.device)
    mask_t, sm = _mask_args(mask, q.device)
    delta = torch.empty((B, H, S), dtype=torch.float32, device=q.device)
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    dbias, dbias_mode, reduce_bias = None, 0, False
    dbias_t, sg = _dummy(q.device), (0, 0, 0, 0)
    if need_dbias and index is not None:
        # Table gradient accumulated with float32 atomics, cast to the table dtype after.
        dbias_t = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
        dbias_mode, sg = 2, (0, dbias_t.stride(1), dbias_t.stride(0), 0)
    elif need_dbias:
        dbias = dbias_t = torch.empty(bias.shape, dtype=bias.dtype, device=bias.device)
        sg = dbias.stride()
        reduce_bias = (bias.shape[0] != B) or (bias.shape[1] != H)
        dbias_mode = 0 if reduce_bias else 1

    def tiles(c):
        return dict(HEAD_DIM=D, BLOCK_M=c.block_m, BLOCK_N=c.block_n, num_warps=c.num_warps,
                    num_stages=c.num_stages, enable_fp_fusion=True)

    with launch_context(q):
        kern.attn_bwd_delta[(triton_cdiv(S, cfg.dq.block_m), B * H)](
            out, dout, delta,
            out.stride(0), out.stride(1), out.stride(2),
            dout.stride(0), dout.stride(1), dout.stride(2),
            H, S, HEAD_DIM=D, BLOCK_M=cfg.dq.block_m, num_warps=4, enable_fp_fusion=True,
        )
        qkv_strides = (q.stride(0), q.stride(1), q.stride(2),
                       k.stride(0), k.stride(1), k.stride(2),
                       v.stride(0), v.stride(1), v.stride(2),
                       dout.stride(0), dout.stride(1), dout.stride(2))
        kern.attn_bwd_dkdv[(triton_cdiv(S, cfg.dkdv.block_n), B * H)](
            q, k, v, bias_t, index_t, mask_t, dout, lse, delta, dk, dv,
            *qkv_strides,
            dk.stride(0), dk.stride(1), dk.stride(2),
            dv.stride(0), dv.stride(1), dv.stride(2),
            *sb, sm, H, S,
            BIAS_MODE=bias_mode, HAS_MASK=mask is not None, DOT_F32=dot_f32, **tiles(cfg.dkdv),
        )
        kern.attn_bwd_dq[(triton_cdiv(S, cfg.dq.block_m), B * H)](
            q, k, v, bias_t, index_t, mask_t, dout, lse, delta, dq, dbias_t,
            *qkv_strides,
            dq.stride(0), dq.stride(1), dq.stride(2),
            *sb, *sg, sm, H, S,
            BIAS_MODE=bias_mode, HAS_MASK=mask is not None, DBIAS_MODE=dbias_mode, DOT_F32=dot_f32,
            **tiles(cfg.dq),
        )
        if reduce_bias:
            bias_b, bias_h = bias.shape[0], bias.shape[1]
            grid = (triton_cdiv(S, cfg.reduce.block_m), triton_cdiv(S, cfg.reduce.block_n), bias_b * bias_h)
            kern.attn_bwd_dbias_reduce[grid](
                q, k, v, bias_t, mask_t, dout, lse, delta, dbias_t,
                *qkv_strides, *sb, *sg, sm,
                H, S, bias_h, B // bias_b, H // bias_h,
                HAS_MASK=mask is not None, DOT_F32=dot_f32, **tiles(cfg.reduce),
            )
    if dbias_mode == 2:
        dbias = dbias_t.to(bias.dtype)
    return dq, dk, dv, dbias


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


class _FusedAttentionFunction(torch.autograd.Function):
    """bias: None, a dense (B|1, H|1, S, S) bias (index None) or a (buckets, H) table."""

    @staticmethod
    def forward(ctx, q, k, v, bias, index, mask):
        out, lse = _forward(q, k, v, bias, index, mask)
        ctx.save_for_backward(q, k, v, bias, index, mask, out, lse)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        q, k, v, bias, index, mask, out, lse = ctx.saved_tensors
        need_dbias = bias is not None and ctx.needs_input_grad[3]
        dq, dk, dv, dbias = _backward(dout, q, k, v, bias, index, mask, out, lse, need_dbias)
        return dq, dk, dv, dbias, None, None


def _check_qkv_mask(q, k, v, key_padding_mask, api="fused_attention"):
    reason = _unsupported_reason(q)
    if reason is not None:
        raise ValueError(f"{api} does not support these inputs: {reason}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must have the same dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError("q, k, v must be on the same device")
    B, _, S, _ = q.shape
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool:
            raise ValueError(f"key_padding_mask must be bool (True = padded), got {key_padding_mask.dtype}")
        if tuple(key_padding_mask.shape) != (B, S):
            raise ValueError(f"key_padding_mask must be (B, S) = ({B}, {S}), got {tuple(key_padding_mask.shape)}")
        if key_padding_mask.device != q.device:
            raise ValueError("key_padding_mask must be on q's device")


def _prepare(q, k, v, key_padding_mask):
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    mask = None
    if key_padding_mask is not None:
        # bool and uint8 share the element size: reinterpret, no copy
        mask = _last_dim_contiguous(key_padding_mask).view(torch.uint8)
    return q, k, v, mask


def _empty_attention(q, k, v, bias):
    scores = q @ k.transpose(-1, -2)
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    return scores.float().softmax(-1).to(q.dtype) @ v


def fused_attention(q, k, v, bias=None, key_padding_mask=None):
    """softmax(q k^T + bias, padded keys -> -inf) v with a Triton forward and backward.

    q, k, v: (B, H, S, head_dim), same dtype, q pre-scaled.  bias: None, (S, S) or
    (B|1, H|1, S, S), any float dtype.  Returns (B, H, S, head_dim) in q's dtype (memory
    laid out as (B, S, H, head_dim)).
    """
    if bias is not None and bias.dim() == 2:
        bias = bias[None, None]  # a view: autograd sums the gradient back to (S, S)
    _check_qkv_mask(q, k, v, key_padding_mask)
    B, H, S, _ = q.shape
    if bias is not None:
        if not bias.is_floating_point():
            raise ValueError(f"bias must be a float tensor, got {bias.dtype}")
        if bias.dim() != 4 or bias.shape[2:] != (S, S) or bias.shape[0] not in (1, B) or bias.shape[1] not in (1, H):
            raise ValueError(f"bias must be (S, S) or (B|1, H|1, S, S) = (.., {S}, {S}), got {tuple(bias.shape)}")
        if bias.device != q.device:
            raise ValueError("bias must be on q's device")
    if q.numel() == 0:  # nothing to launch; keep autograd with plain torch
        return _empty_attention(q, k, v, bias)
    q, k, v, mask = _prepare(q, k, v, key_padding_mask)
    if bias is not None:
        bias = _last_dim_contiguous(bias)
    return _FusedAttentionFunction.apply(q, k, v, bias, None, mask)


def fused_attention_bucketed(q, k, v, table, bucket_index, key_padding_mask=None):
    """:func:`fused_attention` with ``bias[b, h, i, j] = table[bucket_index[(b,) i, j], h]``
    gathered inside the kernels: the (B|1, H, S, S) bias is never materialised.

    table: (num_buckets, H) float (learned; its gradient is accumulated with float32
    atomics, so it is not bitwise deterministic).  bucket_index: (S, S) or (B, S, S)
    integers in [0, num_buckets) -- checked on CPU only (a check on CUDA would
    synchronise the host).
    """
    _check_qkv_mask(q, k, v, key_padding_mask, api="fused_attention_bucketed")
    B, H, S, _ = q.shape
    if table.dim() != 2 or table.shape[1] != H or not table.is_floating_point():
        raise ValueError(f"table must be a float (num_buckets, H={H}) tensor, got {tuple(table.shape)} {table.dtype}")
    if bucket_index.dtype.is_floating_point or bucket_index.dtype == torch.bool or bucket_index.is_complex():
        raise ValueError(f"bucket_index must be an integer tensor, got {bucket_index.dtype}")
    index = bucket_index[None] if bucket_index.dim() == 2 else bucket_index
    if index.dim() != 3 or index.shape[1:] != (S, S) or index.shape[0] not in (1, B):
        raise ValueError(f"bucket_index must be (S, S) or (B, S, S) = (.., {S}, {S}), got {tuple(bucket_index.shape)}")
    if table.device != q.device or index.device != q.device:
        raise ValueError("table and bucket_index must be on q's device")
    if not index.is_cuda and index.numel() and (int(index.min()) < 0 or int(index.max()) >= table.shape[0]):
        raise ValueError(f"bucket_index values must lie in [0, {table.shape[0]})")
    if q.numel() == 0:
        bias = table[index.long()].permute(0, 3, 1, 2)
        return _empty_attention(q, k, v, bias)
    q, k, v, mask = _prepare(q, k, v, key_padding_mask)
    index = index.to(torch.int32).contiguous()
    return _FusedAttentionFunction.apply(q, k, v, table, index, mask)
