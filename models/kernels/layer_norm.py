"""Fused LayerNorm, Triton forward/backward.

``FusedLayerNorm`` is a drop-in ``torch.nn.LayerNorm`` (same parameters, state-dict
keys and eps).  It runs ``F.layer_norm`` unless the Triton kernel of
``_layer_norm_triton.py`` is explicitly requested: ``impl="fused"``, or
``ONE_PEACE_LAYER_NORM=fused`` / ``set_layer_norm_impl("fused")`` (see ``switches.py``).
``fused_layer_norm`` (the functional form) is itself the explicit request: kernel when
usable, else ``F.layer_norm``.
"""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import switches
from ._triton_utils import interpret_requested, kernel_module, launch_context, triton_available

_KERNELS = "one_peace.models.kernels._layer_norm_triton"
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_BLOCK_D = 16384  # one row lives in registers; wider rows fall back to torch


def layer_norm_unsupported_reason(x: torch.Tensor, width: int) -> Optional[str]:
    """Why the Triton LayerNorm cannot run on inputs like ``x`` of row width ``width`` (None: it can)."""
    if not triton_available():
        return "triton is not installed"
    if not (x.is_cuda or interpret_requested()):
        return f"tensor on {x.device} (needs CUDA, or TRITON_INTERPRET=1)"
    if x.dtype not in _FLOAT_DTYPES:
        return f"dtype {x.dtype} (supported: {', '.join(str(d) for d in _FLOAT_DTYPES)})"
    if not 0 < width <= _MAX_BLOCK_D:
        return f"row width {width} (supported: 1 to {_MAX_BLOCK_D})"
    return None


def _kernel_usable(x: torch.Tensor, width: int) -> bool:
    return x.numel() > 0 and layer_norm_unsupported_reason(x, width) is None


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
    def forward(ctx, x, weight, bias, eps, out_dtype, width):
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
        return dx.view(ctx.x_shape), dw, db, None, None, None


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
    return _kernel_layer_norm(x, weight, bias, eps, width)


def _kernel_layer_norm(x, weight, bias, eps, width):
    out_dtype = torch.float32 if _autocast_to_fp32(x) else x.dtype
    w = weight.reshape(-1) if weight is not None else None
    b = bias.reshape(-1) if bias is not None else None
    return _LayerNormFunction.apply(x, w, b, eps, out_dtype, width)


class FusedLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters and state dict) that can run the Triton kernel.

    ``impl``: ``None`` follows the process-wide switch (``ONE_PEACE_LAYER_NORM`` /
    ``set_layer_norm_impl``; default ``torch``), ``"torch"`` always ``F.layer_norm``,
    ``"fused"`` always the kernel.  The choice is resolved on the first forward and
    cached per (device type, dtype) until a switch changes; a ``fused`` request that the
    kernel cannot serve raises (empty inputs just go through ``F.layer_norm``).
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None, impl: Optional[str] = None):
        super().__init__(normalized_shape, eps=eps, elementwise_affine=elementwise_affine, bias=bias,
                         device=device, dtype=dtype)
        if impl is not None and impl not in switches.LAYER_NORM_IMPLS:
            raise ValueError(f"impl must be None or one of {switches.LAYER_NORM_IMPLS}, got {impl!r}")
        self.impl = impl
        self._resolved = None  # (switch version, device type, dtype, use the kernel)

    def _use_kernel(self, x: torch.Tensor) -> bool:
        cached = self._resolved
        if cached is not None and cached[0] == switches.version and cached[1] == x.device.type \
                and cached[2] is x.dtype:
            return cached[3]
        impl = self.impl or switches.requested_layer_norm_impl()
        use = impl == "fused"
        if use:
            reason = layer_norm_unsupported_reason(x, math.prod(self.normalized_shape))
            if reason is not None:
                source = ("impl='fused'" if self.impl else
                          f"{switches.LAYER_NORM_ENV}=fused (or set_layer_norm_impl('fused'))")
                raise RuntimeError(f"{source} but the Triton LayerNorm kernel cannot run here: {reason}")
        self._resolved = (switches.version, x.device.type, x.dtype, use)
        return use

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_kernel(x) and x.numel() > 0:
            if x.shape[x.dim() - len(self.normalized_shape):] != self.normalized_shape:
                raise ValueError(f"input {tuple(x.shape)} does not end with normalized_shape {self.normalized_shape}")
            return _kernel_layer_norm(x, self.weight, self.bias, self.eps, math.prod(self.normalized_shape))
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", impl={self.impl!r}" if self.impl else "")
