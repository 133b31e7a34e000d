"""Fused attention core (Triton): out = softmax(q k^T + bias, key padding) v.

Host side of the kernels in ``_attention_triton.py``: input checks, launch
configuration and the autograd Function.  See docs/KERNELS.md.

* ``q`` is already scaled by ``head_dim ** -0.5``; no scaling happens here.
* ``bias``: None or (B|1, H|1, S, S) (or (S, S)), any float dtype; its gradient is
  returned (summed over broadcast dims) when it requires grad.
* ``key_padding_mask``: None or bool (B, S), True = padded key (excluded).
* Softmax statistics and every accumulator are float32; the output has q's dtype.
* A query row whose keys are all masked returns 0 (and gets zero gradients).
"""
from collections import namedtuple

import torch

from ._triton_utils import interpret_requested, kernel_module, launch_context, triton_available

_KERNELS = "one_peace.models.kernels._attention_triton"
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)

LaunchConfig = namedtuple("LaunchConfig", "fwd_m fwd_n bwd_m bwd_n red_m red_n num_warps num_stages")


def _launch_config(head_dim: int, interpret: bool) -> LaunchConfig:
    """Tile sizes (not autotuned: sensible defaults for sm80/sm90, see bench/attention.py).

    Under the interpreter 32x32 tiles keep the CI fast and still give several key
    blocks (with a ragged last one) for the test lengths 33 and 70.
    """
    if interpret:
        return LaunchConfig(32, 32, 32, 32, 32, 32, 4, 1)
    if head_dim <= 64:
        return LaunchConfig(128, 64, 64, 64, 64, 64, 4, 3)
    return LaunchConfig(128, 64, 64, 64, 64, 64, 8, 2)


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


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _dummy(device) -> torch.Tensor:
    return torch.empty(1, dtype=torch.float32, device=device)


def _bias_args(bias, device):
    if bias is None:
        return _dummy(device), (0, 0, 0, 0)
    # Size-1 (broadcast) dims get stride 0 so every batch/head reads the same slice.
    return bias, tuple(0 if n == 1 else st for n, st in zip(bias.shape, bias.stride()))


def _mask_args(mask, device):
    if mask is None:
        return torch.empty(1, dtype=torch.uint8, device=device), 0
    return mask, mask.stride(0)


def _forward(q, k, v, bias, mask):
    B, H, S, D = q.shape
    interpret = interpret_requested()
    cfg = _launch_config(D, interpret)
    kern = kernel_module(_KERNELS, interpret)
    # Output in (B, S, H, D) memory order: the caller's transpose(1, 2).reshape is free.
    out = torch.empty((B, S, H, D), dtype=q.dtype, device=q.device).transpose(1, 2)
    lse = torch.empty((B, H, S), dtype=torch.float32, device=q.device)
    bias_t, sb = _bias_args(bias, q.device)
    mask_t, sm = _mask_args(mask, q.device)
    grid = (triton_cdiv(S, cfg.fwd_m), B * H)
    with launch_context(q):
        kern.attn_fwd[grid](
            q, k, v, bias_t, mask_t, out, lse,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            *sb, sm, H, S,
            HEAD_DIM=D, BLOCK_M=cfg.fwd_m, BLOCK_N=cfg.fwd_n,
            HAS_BIAS=bias is not None, HAS_MASK=mask is not None,
            DOT_F32=_dot_f32(q, interpret),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    return out, lse


def _dot_f32(q, interpret: bool) -> bool:
    # The interpreter mishandles bfloat16 arithmetic (raw uint16 storage); fp32 inputs
    # must not go through TF32 either.  On a GPU, fp16/bf16 use tensor cores.
    return (interpret and q.dtype != torch.float16) or q.dtype == torch.float32


def _backward(dout, q, k, v, bias, mask, out, lse, need_dbias):
    B, H, S, D = q.shape
    interpret = interpret_requested()
    cfg = _launch_config(D, interpret)
    kern = kernel_module(_KERNELS, interpret)
    dot_f32 = _dot_f32(q, interpret)
    dout = _last_dim_contiguous(dout)
    bias_t, sb = _bias_args(bias, q.device)
    mask_t, sm = _mask_args(mask, q.device)
    delta = torch.empty((B, H, S), dtype=torch.float32, device=q.device)
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    dbias = None
    reduce_bias = False
    if need_dbias:
        dbias = torch.empty(bias.shape, dtype=bias.dtype, device=bias.device)
        reduce_bias = (bias.shape[0] != B) or (bias.shape[1] != H)
    dbias_t, sg = _bias_args(dbias, q.device)
    common = dict(HEAD_DIM=D, num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    with launch_context(q):
        kern.attn_bwd_delta[(triton_cdiv(S, cfg.bwd_m), B * H)](
            out, dout, delta,
            out.stride(0), out.stride(1), out.stride(2),
            dout.stride(0), dout.stride(1), dout.stride(2),
            H, S, BLOCK_M=cfg.bwd_m, **common,
        )
        qkv_strides = (q.stride(0), q.stride(1), q.stride(2),
                       k.stride(0), k.stride(1), k.stride(2),
                       v.stride(0), v.stride(1), v.stride(2),
                       dout.stride(0), dout.stride(1), dout.stride(2))
        kern.attn_bwd_dkdv[(triton_cdiv(S, cfg.bwd_n), B * H)](
            q, k, v, bias_t, mask_t, dout, lse, delta, dk, dv,
            *qkv_strides,
            dk.stride(0), dk.stride(1), dk.stride(2),
            dv.stride(0), dv.stride(1), dv.stride(2),
            *sb, sm, H, S,
            BLOCK_M=cfg.bwd_m, BLOCK_N=cfg.bwd_n,
            HAS_BIAS=bias is not None, HAS_MASK=mask is not None, DOT_F32=dot_f32, **common,
        )
        kern.attn_bwd_dq[(triton_cdiv(S, cfg.bwd_m), B * H)](
            q, k, v, bias_t, mask_t, dout, lse, delta, dq, dbias_t,
            *qkv_strides,
            dq.stride(0), dq.stride(1), dq.stride(2),
            *sb, *sg, sm, H, S,
            BLOCK_M=cfg.bwd_m, BLOCK_N=cfg.bwd_n,
            HAS_BIAS=bias is not None, HAS_MASK=mask is not None,
            STORE_DBIAS=need_dbias and not reduce_bias, DOT_F32=dot_f32, **common,
        )
        if reduce_bias:
            bias_b, bias_h = bias.shape[0], bias.shape[1]
            kern.attn_bwd_dbias_reduce[(triton_cdiv(S, cfg.red_m), triton_cdiv(S, cfg.red_n), bias_b * bias_h)](
                q, k, v, bias_t, mask_t, dout, lse, delta, dbias_t,
                *qkv_strides, *sb, *sg, sm,
                H, S, bias_h, B // bias_b, H // bias_h,
                BLOCK_M=cfg.red_m, BLOCK_N=cfg.red_n,
                HAS_MASK=mask is not None, DOT_F32=dot_f32, **common,
            )
    return dq, dk, dv, dbias


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


class _FusedAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, mask):
        out, lse = _forward(q, k, v, bias, mask)
        ctx.save_for_backward(q, k, v, bias, mask, out, lse)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, bias, mask, out, lse = ctx.saved_tensors
        need_dbias = bias is not None and ctx.needs_input_grad[3]
        dq, dk, dv, dbias = _backward(dout, q, k, v, bias, mask, out, lse, need_dbias)
        return dq, dk, dv, dbias, None


def _check_inputs(q, k, v, bias, key_padding_mask):
    reason = _unsupported_reason(q)
    if reason is not None:
        raise ValueError(f"fused_attention does not support these inputs: {reason}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must have the same dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError("q, k, v must be on the same device")
    B, H, S, _ = q.shape
    if bias is not None:
        if not bias.is_floating_point():
            raise ValueError(f"bias must be a float tensor, got {bias.dtype}")
        if bias.dim() != 4 or bias.shape[2:] != (S, S) or bias.shape[0] not in (1, B) or bias.shape[1] not in (1, H):
            raise ValueError(f"bias must be (S, S) or (B|1, H|1, S, S) = (.., {S}, {S}), got {tuple(bias.shape)}")
        if bias.device != q.device:
            raise ValueError("bias must be on q's device")
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool:
            raise ValueError(f"key_padding_mask must be bool (True = padded), got {key_padding_mask.dtype}")
        if tuple(key_padding_mask.shape) != (B, S):
            raise ValueError(f"key_padding_mask must be (B, S) = ({B}, {S}), got {tuple(key_padding_mask.shape)}")
        if key_padding_mask.device != q.device:
            raise ValueError("key_padding_mask must be on q's device")


def fused_attention(q, k, v, bias=None, key_padding_mask=None):
    """softmax(q k^T + bias, padded keys -> -inf) v with a Triton forward and backward.

    q, k, v: (B, H, S, head_dim), same dtype, q pre-scaled.  Returns (B, H, S, head_dim)
    in q's dtype (memory laid out as (B, S, H, head_dim)).
    """
    if bias is not None and bias.dim() == 2:
        bias = bias[None, None]  # a view: autograd sums the gradient back to (S, S)
    _check_inputs(q, k, v, bias, key_padding_mask)
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    if bias is not None:
        bias = _last_dim_contiguous(bias)
    mask = None
    if key_padding_mask is not None:
        # bool and uint8 share the element size: reinterpret, no copy
        mask = _last_dim_contiguous(key_padding_mask).view(torch.uint8)
    return _FusedAttentionFunction.apply(q, k, v, bias, mask)
