"""Fused CPU kernels (``cpu_fused.c``) as autograd functions, and when the model uses them.

* ``geglu_norm(a, b, weight, bias, eps)`` = ``F.layer_norm(F.gelu(a) * b, (F,), weight, bias, eps)``: the GeGLU
  and the sub-LayerNorm of each modality's FFN (``components.ModalityFFN``).
* ``norm_gelu(x, weight, bias, eps)`` = ``F.gelu(F.layer_norm(x, (C,), weight, bias, eps))``: the channel
  LayerNorm and GELU after each convolution of the audio front end (``adapters/audio.py``).

Each is one pass over the rows, forward and backward, in float arithmetic: bf16 tensors are rounded once, on
the output, where torch's chain rounds each intermediate too.  They save their inputs and the row statistics
for the backward, not the chain's intermediates.

:func:`applies` decides per call, from the switch ``ONE_PEACE_CPU_FUSED`` (``switches.py``): float32 or bfloat16
CPU tensors, outside autocast, tracing and ``torch.compile``.  Under ``auto`` a library that cannot be built
(no C compiler) means torch's ops, with one warning; ``fused`` raises instead.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import cpu_build, switches

_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}


def _call(lib, name, dtype, *args):
    getattr(lib, f"{name}_{_SUFFIX[dtype]}")(*[a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args],
                                             torch.get_num_threads())


def _row_stats(rows):
    return torch.empty(rows, dtype=torch.float32), torch.empty(rows, dtype=torch.float32)


def _geglu_norm_forward(lib, a, b, weight, bias, eps):
    width = a.shape[-1]
    y, (mean, rstd) = torch.empty_like(a), _row_stats(a.numel() // width)
    _call(lib, "geglu_norm_forward", a.dtype, a, b, weight, bias, y, mean, rstd, a.numel() // width, width, eps)
    return y, mean, rstd


def _geglu_norm_backward(lib, dy, a, b, weight, mean, rstd):
    width = a.shape[-1]
    da, db = torch.empty_like(a), torch.empty_like(b)
    dweight, dbias = torch.zeros(width), torch.zeros(width)
    _call(lib, "geglu_norm_backward", a.dtype, dy, a, b, weight, mean, rstd, da, db, dweight, dbias,
          a.numel() // width, width)
    return da, db, dweight, dbias


def _norm_gelu_forward(lib, x, weight, bias, eps):
    width = x.shape[-1]
    y, (mean, rstd) = torch.empty_like(x), _row_stats(x.numel() // width)
    _call(lib, "norm_gelu_forward", x.dtype, x, weight, bias, y, mean, rstd, x.numel() // width, width, eps)
    return y, mean, rstd


def _norm_gelu_backward(lib, dy, x, weight, bias, mean, rstd):
    width = x.shape[-1]
    dx, dweight, dbias = torch.empty_like(x), torch.zeros(width), torch.zeros(width)
    _call(lib, "norm_gelu_backward", x.dtype, dy, x, weight, bias, mean, rstd, dx, dweight, dbias,
          x.numel() // width, width)
    return dx, dweight, dbias


def _self_check(lib):
    """The library against torch on odd sizes (a tail shorter than any vector), forward and backward."""
    gen = torch.Generator().manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 6e-2)):
        a, b, dy, weight, bias = (torch.randn(shape, generator=gen) * scale for shape, scale in
                                  (((3, 37), 2), ((3, 37), 1), ((3, 37), 1), (37, 0.25), (37, 0.25)))
        weight = weight + 1
        a, b, dy, weight, bias = (t.to(dtype) for t in (a, b, dy, weight, bias))
        y, mean, rstd = _geglu_norm_forward(lib, a, b, weight, bias, 1e-5)
        y2, mean2, rstd2 = _norm_gelu_forward(lib, a, weight, bias, 1e-5)
        got = {"geglu_norm": [y, *_geglu_norm_backward(lib, dy, a, b, weight, mean, rstd)],
               "norm_gelu": [y2, *_norm_gelu_backward(lib, dy, a, weight, bias, mean2, rstd2)]}
        leaves = [t.float().requires_grad_() for t in (a, b, weight, bias)]
        with torch.enable_grad():  # also when the first call comes from inside an autograd function
            chains = {"geglu_norm": (F.layer_norm(F.gelu(leaves[0]) * leaves[1], (37,), *leaves[2:], 1e-5),
                                     leaves),
                      "norm_gelu": (F.gelu(F.layer_norm(leaves[0], (37,), *leaves[2:], 1e-5)),
                                    [leaves[0], leaves[2], leaves[3]])}
            for kernel, (ref, inputs) in chains.items():
                grads = torch.autograd.grad(ref, inputs, dy.float())
                for i, (g, r) in enumerate(zip(got[kernel], [ref.detach(), *grads])):
                    err = (g.float() - r).abs().max().item() / max(r.abs().max().item(), 1.0)
                    if not err < tol:  # not an assert: python -O would drop it
                        raise AssertionError(f"cpu_fused.c self-check: {kernel} output {i} in {dtype} is off by "
                                             f"{err:.2e}")


class _GegluNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, weight, bias, eps):
        a, b, weight, bias = a.contiguous(), b.contiguous(), weight.contiguous(), bias.contiguous()
        y, mean, rstd = _geglu_norm_forward(cpu_build.load(), a, b, weight, bias, eps)
        ctx.save_for_backward(a, b, weight, mean, rstd)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        a, b, weight, mean, rstd = ctx.saved_tensors
        da, db, dweight, dbias = _geglu_norm_backward(cpu_build.load(), dy.contiguous(), a, b, weight, mean, rstd)
        return da, db, dweight.to(weight.dtype), dbias.to(weight.dtype), None


class _NormGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        x, weight, bias = x.contiguous(), weight.contiguous(), bias.contiguous()
        y, mean, rstd = _norm_gelu_forward(cpu_build.load(), x, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        dx, dweight, dbias = _norm_gelu_backward(cpu_build.load(), dy.contiguous(), x, weight, bias, mean, rstd)
        return dx, dweight.to(weight.dtype), dbias.to(weight.dtype), None


def _checked(name, inputs, weight, bias):
    reason = unsupported_reason(inputs, weight, bias)
    if reason is not None:
        raise ValueError(f"{name}: {reason}")
    cpu_build.load(_self_check)


def geglu_norm(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               eps: float = 1e-5) -> torch.Tensor:
    """``layer_norm(gelu(a) * b)`` over the last dimension through the C kernel (see the module docstring)."""
    _checked("geglu_norm", (a, b), weight, bias)
    return _GegluNorm.apply(a, b, weight, bias, eps)


def norm_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``gelu(layer_norm(x))`` over the last dimension through the C kernel (see the module docstring)."""
    _checked("norm_gelu", (x,), weight, bias)
    return _NormGelu.apply(x, weight, bias, eps)


def _plain(t: torch.Tensor) -> bool:
    return type(t) in (torch.Tensor, torch.nn.Parameter) and t.layout == torch.strided


def unsupported_reason(inputs: Sequence[torch.Tensor], weight: Optional[torch.Tensor],
                       bias: Optional[torch.Tensor]) -> Optional[str]:
    """Why a kernel cannot compute a call on ``inputs`` (same shapes) and a LayerNorm's ``weight`` and ``bias``
    over their last dimension (None when it can)."""
    x = inputs[0]
    if weight is None or bias is None:
        return "the LayerNorm has no weight or bias"
    if x.device.type != "cpu":
        return f"{x.device.type} tensors (the kernels are for the CPU)"
    if x.dtype not in _SUFFIX:
        return f"dtype {x.dtype} (float32 and bfloat16 only)"
    tensors = (*inputs, weight, bias)
    if any(t.dtype != x.dtype or t.device != x.device or not _plain(t) for t in tensors):
        return "mixed dtypes, devices or tensor subclasses"
    if any(t.shape != x.shape for t in inputs) or any(tuple(t.shape) != (x.shape[-1],) for t in (weight, bias)):
        return f"shapes {', '.join(str(tuple(t.shape)) for t in tensors)}"
    if x.numel() == 0:
        return "empty input"
    if torch.is_autocast_enabled("cpu"):
        return "autocast (its LayerNorm runs in float32)"
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return "tracing or compiling (the kernel is opaque to them)"
    return None


def applies(inputs: Sequence[torch.Tensor], norm) -> bool:
    """Whether a chain around the LayerNorm module ``norm`` runs as a kernel, per the switch (module docstring)."""
    impl = switches.requested_cpu_fused_impl()
    norm_impl = getattr(norm, "impl", None)
    if impl == "torch" or inputs[0].device.type != "cpu" or norm_impl == "fused" \
            or (norm_impl is None and switches.requested_layer_norm_impl() == "fused"):
        return False  # a demanded Triton LayerNorm stays the Triton LayerNorm
    reason = unsupported_reason(inputs, getattr(norm, "weight", None), getattr(norm, "bias", None))
    if reason is None:
        problem = cpu_build.library_problem(_self_check)
        return problem is None or cpu_build.without_library(problem, impl, "CPU fused kernels")
    if impl == "fused" and reason != "empty input":
        raise cpu_build.demanded_but(reason)
    return False
