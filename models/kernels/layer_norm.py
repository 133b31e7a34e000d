"""Fused LayerNorm and residual + layer-scale (+ drop-path) add, Triton forward/backward.

``FusedLayerNorm`` is a drop-in ``torch.nn.LayerNorm`` (same parameters, state-dict
keys and eps) that uses the kernels of ``_layer_norm_triton.py`` when the input is on
CUDA (or TRITON_INTERPRET=1) and triton is installed, else ``F.layer_norm``.
"""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._triton_utils import interpret_requested, kernel_module, launch_context, triton_available

_KERNELS = "one_peace.models.kernels._layer_norm_triton"
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_BLOCK_D = 16384  # one row lives in registers; wider rows fall back to torch


def _kernel_usable(x: torch.Tensor, width: int) -> bool:
    return (triton_available() and (x.is_cuda or interpret_requested()) and x.dtype in _FLOAT_DTYPES
            and 0 < width <= _MAX_BLOCK_D and x.numel() > 0)


def _tiling(width: int, interpret: bool):
    block_d = triton_next_pow2(width)
    rows = max(1, min(16, 4096 // block_d))  # ~4K elements per tile
    num_warps = 4 if block_d <= 2048 else (8 if block_d <= 8192 else 16)
    return block_d, rows, (1 if interpret else num_warps)


def _num_partials(m: int, rows: int, x: torch.Tensor, interpret: bool) -> int:
    tiles = -(-m // rows)
    if interpret or not x.is_cuda:
        return max(1, min(tiles, 4))
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    return max(1, min(tiles, 4 * sms))


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _rows(t: torch.Tensor, width: int) -> torch.Tensor:
    t2 = t.reshape(-1, width)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _autocast_to_fp32(x: torch.Tensor) -> bool:
    # CUDA autocast runs layer_norm in (and returns) float32; CPU autocast keeps the
    # input dtype.  Mirror torch's op so FusedLayerNorm is a drop-in either way.
    if not x.is_cuda:
        return False
    try:
        return torch.is_autocast_enabled("cuda")
    except TypeError:  # torch < 2.4 has only the CUDA query without argument
        return torch.is_autocast_enabled()


class _LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, out_dtype):
        width = weight.numel() if weight is not None else x.shape[-1]
        x2 = _rows(x, width)
        m = x2.shape[0]
        interpret = interpret_requested()
        block_d, rows, warps = _tiling(width, interpret)
        kern = kernel_module(_KERNELS, interpret)
        y = torch.empty((m, width), dtype=out_dtype, device=x.device)
        mean = torch.empty(m, dtype=torch.float32, device=x.device)
        rstd = torch.empty(m, dtype=torch.float32, device=x.device)
        dummy = mean
        with launch_context(x):
            kern.ln_fwd[(-(-m // rows),)](
                x2, weight if weight is not None else dummy, bias if bias is not None else dummy,
                y, mean, rstd, x2.stride(0), y.stride(0), m, width, float(eps),
                BLOCK_D=block_d, ROWS=rows, HAS_W=weight is not None, HAS_B=bias is not None,
                num_warps=warps, enable_fp_fusion=True,
            )
        ctx.save_for_backward(x2, weight, bias, mean, rstd)
        ctx.x_shape = x.shape
        ctx.x_dtype = x.dtype
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, bias, mean, rstd = ctx.saved_tensors
        m, width = x2.shape
        dy2 = _rows(dy, width)
        interpret = interpret_requested()
        block_d, rows, warps = _tiling(width, interpret)
        kern = kernel_module(_KERNELS, interpret)
        need_dwb = (weight is not None and ctx.needs_input_grad[1]) or (bias is not None and ctx.needs_input_grad[2])
        nprog = _num_partials(m, rows, x2, interpret)
        dx = torch.empty((m, width), dtype=ctx.x_dtype, device=x2.device)
        dw_part = torch.empty((nprog, width) if need_dwb else (1,), dtype=torch.float32, device=x2.device)
        db_part = torch.empty_like(dw_part)
        with launch_context(x2):
            kern.ln_bwd[(nprog,)](
                x2, weight if weight is not None else mean, dy2, dx, mean, rstd, dw_part, db_part,
                x2.stride(0), dy2.stride(0), dx.stride(0), m, width,
                BLOCK_D=block_d, ROWS=rows, HAS_W=weight is not None, NEED_DWB=need_dwb,
                num_warps=warps, enable_fp_fusion=True,
            )
        dw = db = None
        if need_dwb and weight is not None and ctx.needs_input_grad[1]:
            dw = dw_part.sum(0).to(weight.dtype)
        if need_dwb and bias is not None and ctx.needs_input_grad[2]:
            db = db_part.sum(0).to(bias.dtype)
        return dx.view(ctx.x_shape), dw, db, None, None


def fused_layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                     eps: float = 1e-5, normalized_shape=None) -> torch.Tensor:
    """LayerNorm over the trailing dims of ``weight`` (or ``normalized_shape``, or the last dim).

    Triton kernel when usable, else ``F.layer_norm``; float32 statistics either way.
    """
    if normalized_shape is None:
        normalized_shape = tuple(weight.shape) if weight is not None else (x.shape[-1],)
    normalized_shape = tuple(normalized_shape) if isinstance(normalized_shape, (tuple, list, torch.Size)) \
        else (int(normalized_shape),)
    width = math.prod(normalized_shape)
    if tuple(x.shape[x.dim() - len(normalized_shape):]) != normalized_shape:
        raise ValueError(f"input {tuple(x.shape)} does not end with normalized_shape {normalized_shape}")
    if not _kernel_usable(x, width):
        return F.layer_norm(x, normalized_shape, weight, bias, eps)
    out_dtype = torch.float32 if _autocast_to_fp32(x) else x.dtype
    w = weight.reshape(-1) if weight is not None else None
    b = bias.reshape(-1) if bias is not None else None
    return _LayerNormFunction.apply(x, w, b, eps, out_dtype)


class FusedLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` whose forward runs the Triton kernel on CUDA (same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_layer_norm(x, self.weight, self.bias, self.eps, self.normalized_shape)


class _ResidualFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, residual, x, gamma, scale, out_dtype):
        bsz, seq, width = x.shape
        x2, r2 = _rows(x, width), _rows(residual, width)
        m = x2.shape[0]
        interpret = interpret_requested()
        block_d, rows, warps = _tiling(width, interpret)
        kern = kernel_module(_KERNELS, interpret)
        y = torch.empty((m, width), dtype=out_dtype, device=x.device)
        with launch_context(x):
            kern.residual_fwd[(-(-m // rows),)](
                r2, x2, gamma if gamma is not None else y, scale if scale is not None else y, y,
                r2.stride(0), x2.stride(0), y.stride(0), m, width, seq,
                BLOCK_D=block_d, ROWS=rows, HAS_G=gamma is not None, HAS_SCALE=scale is not None,
                num_warps=warps, enable_fp_fusion=True,
            )
        ctx.save_for_backward(x2 if (gamma is not None and ctx.needs_input_grad[2]) else None, gamma, scale)
        ctx.shape, ctx.x_dtype, ctx.r_dtype = x.shape, x.dtype, residual.dtype
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, gamma, scale = ctx.saved_tensors
        bsz, seq, width = ctx.shape
        need_dx = ctx.needs_input_grad[1]
        need_dg = gamma is not None and ctx.needs_input_grad[2]
        dres = dy.to(ctx.r_dtype) if ctx.needs_input_grad[0] else None
        if not (need_dx or need_dg):
            return dres, None, None, None, None
        dy2 = _rows(dy, width)
        m = dy2.shape[0]
        interpret = interpret_requested()
        block_d, rows, warps = _tiling(width, interpret)
        kern = kernel_module(_KERNELS, interpret)
        nprog = _num_partials(m, rows, dy2, interpret)
        dx = torch.empty((m, width), dtype=ctx.x_dtype, device=dy.device) if need_dx else None
        dg_part = torch.empty((nprog, width), dtype=torch.float32, device=dy.device) if need_dg else None
        dummy = dy2
        with launch_context(dy2):
            kern.residual_bwd[(nprog,)](
                x2 if x2 is not None else dummy, gamma if gamma is not None else dummy,
                scale if scale is not None else dummy, dy2,
                dx if dx is not None else dummy, dg_part if dg_part is not None else dummy,
                x2.stride(0) if x2 is not None else 0, dy2.stride(0), dx.stride(0) if dx is not None else 0,
                m, width, seq,
                BLOCK_D=block_d, ROWS=rows, HAS_G=gamma is not None, HAS_SCALE=scale is not None,
                NEED_DX=need_dx, NEED_DG=need_dg, num_warps=warps, enable_fp_fusion=True,
            )
        dx = dx.view(ctx.shape) if need_dx else None
        dg = dg_part.sum(0).to(gamma.dtype) if need_dg else None
        return dres, dx, dg, None, None


def residual_gamma_add_reference(residual, x, gamma=None, drop_path_scale=None):
    """Plain torch: residual + drop_path_scale[:, None, None] * (gamma * x)."""
    if gamma is not None:
        x = gamma * x
    if drop_path_scale is not None:
        x = x * drop_path_scale.to(x.dtype)[:, None, None]
    return residual + x


def fused_residual_gamma_add(residual: torch.Tensor, x: torch.Tensor, gamma: Optional[torch.Tensor] = None,
                             drop_path_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """residual + drop_path_scale[:, None, None] * (gamma * x) for batch-first (B, S, D).

    ``drop_path_scale``: None or (B,) per-sample 0 or 1/keep (treated as a constant: no
    gradient).  One pass on CUDA (or TRITON_INTERPRET=1); plain torch otherwise.  The
    result dtype follows torch's type promotion of residual, x and gamma.
    """
    if x.dim() != 3 or residual.shape != x.shape:
        raise ValueError(f"residual and x must both be (B, S, D), got {tuple(residual.shape)}, {tuple(x.shape)}")
    bsz, _, width = x.shape
    if gamma is not None and tuple(gamma.shape) != (width,):
        raise ValueError(f"gamma must be ({width},), got {tuple(gamma.shape)}")
    if drop_path_scale is not None and tuple(drop_path_scale.shape) != (bsz,):
        raise ValueError(f"drop_path_scale must be ({bsz},), got {tuple(drop_path_scale.shape)}")
    out_dtype = torch.promote_types(residual.dtype, x.dtype)
    if gamma is not None:
        out_dtype = torch.promote_types(out_dtype, gamma.dtype)
    usable = (_kernel_usable(x, width) and residual.dtype in _FLOAT_DTYPES and out_dtype in _FLOAT_DTYPES
              and residual.device == x.device and not (drop_path_scale is not None and drop_path_scale.requires_grad))
    if not usable:
        return residual_gamma_add_reference(residual, x, gamma, drop_path_scale)
    scale = drop_path_scale.detach().contiguous() if drop_path_scale is not None else None
    return _ResidualFunction.apply(residual, x, gamma, scale, out_dtype)
