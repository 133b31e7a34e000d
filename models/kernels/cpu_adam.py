"""fairseq's Adam step for bf16 parameters on the CPU in one pass (``adam_step_bf16`` in ``cpu_fused.c``), and the
bf16 gradients' norms for clipping (``sum_squares_bf16``).

With ``--bf16`` fairseq keeps float32 master weights and float32 gradients: each step copies every bf16
gradient into its float32 twin, updates the masters, and copies them back into the bf16 model, three passes
over the parameters.  The kernel reads the bf16 gradient, the master and both moments once, and writes the
master, the moments and the bf16 weight: 28 bytes per parameter instead of 40, and no float32 gradients at
all (4 bytes per parameter less memory).  With ``--memory-efficient-bf16`` the bf16 weight is the parameter
and the kernel updates it in float, rounding once, without float32 copies of the weight and the gradient.

The update is fairseq's Adam (``fairseq/optim/adam.py``), computed in float:
``p -= lr*wd*p;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g²;  p -= lr*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+eps)``
with ``g`` the bf16 gradient times 1/``grad_scale`` (the wrapper's gradient factor), or zero where a parameter
got no gradient (fairseq's ``--bf16`` gives those zero gradients too).  Each operation rounds as torch's op in
fairseq's code does (``cpu_fused.c``), so the result is fairseq's to the bit but for the square root, which is
correctly rounded here and not in torch.  It follows the switch ``ONE_PEACE_CPU_FUSED`` like the other CPU
kernels (``cpu_fused.applies``).
"""
import math
from typing import Optional, Sequence

import torch

from . import cpu_build, switches

_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _fits(t: Optional[torch.Tensor], dtype, shape) -> bool:
    return t is None or (t.dtype is dtype and type(t) in _PLAIN and t.is_cpu and t.is_contiguous()
                         and t.shape == shape)


def supported(weight: torch.Tensor, grad: Optional[torch.Tensor], master: Optional[torch.Tensor],
              exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor) -> bool:
    """Whether the kernel can update this parameter (a few attribute reads: the optimizer asks per parameter and
    step); :func:`unsupported_reason` says why not."""
    shape = weight.shape
    return (_fits(weight, torch.bfloat16, shape) and _fits(grad, torch.bfloat16, shape)
            and _fits(master, torch.float32, shape) and _fits(exp_avg, torch.float32, shape)
            and _fits(exp_avg_sq, torch.float32, shape))


def unsupported_reason(weight: torch.Tensor, grad: Optional[torch.Tensor], master: Optional[torch.Tensor],
                       exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor) -> Optional[str]:
    """Why the kernel cannot update this parameter (None when it can): all plain contiguous CPU tensors of one
    shape, the weight and gradient bf16, the master and moments float32."""
    if supported(weight, grad, master, exp_avg, exp_avg_sq):
        return None
    if any(t is not None and t.shape != weight.shape for t in (grad, master, exp_avg, exp_avg_sq)):
        return "shapes differ"
    if not all(_fits(t, torch.bfloat16, t.shape) for t in (weight, grad) if t is not None):
        return "the weight and its gradient must be contiguous bf16 CPU tensors"
    return "the master weight and the moments must be contiguous float32 CPU tensors"


def _self_check(lib):
    """One step on an odd size, every variant, against fairseq's formula in float64."""
    gen = torch.Generator().manual_seed(0)
    n = 8192 * 2 + 37  # several blocks and a tail
    p0 = torch.randn(n, generator=gen).bfloat16()
    g = (torch.randn(n, generator=gen) * 3).bfloat16()
    m0, v0 = torch.randn(n, generator=gen) * 0.1, torch.rand(n, generator=gen) * 0.1
    # a large lr: the update must stand out of the bf16 weight's rounding
    hp = dict(lr=0.5, beta1=0.9, beta2=0.98, eps=1e-6, weight_decay=0.1, step=3, grad_scale=2.0)
    for with_grad in (True, False):
        for with_master in (True, False):
            w, m, v = p0.clone(), m0.clone(), v0.clone()
            master = p0.float() if with_master else None
            _call(lib, [w], [g if with_grad else None], [master], [m], [v], **hp)
            ref_p, ref_m, ref_v = _reference(p0.double(), g.double() if with_grad else None, m0.double(),
                                             v0.double(), **hp)
            for name, got, ref, tol in (("moment 1", m, ref_m, 1e-6), ("moment 2", v, ref_v, 1e-6),
                                        ("weight", w.float(), ref_p, 2 ** -7),
                                        ("master", master if with_master else ref_p, ref_p, 1e-6)):
                err = (got.double() - ref).abs().max().item() / max(ref.abs().max().item(), 1.0)
                if not err <= tol:  # not an assert: python -O would drop it
                    raise AssertionError(f"cpu_fused.c self-check: adam_step_bf16 {name} (gradient: {with_grad}, "
                                         f"master: {with_master}) is off by {err:.2e}")
    _check_norms(lib)


def _check_norms(lib):
    gen = torch.Generator().manual_seed(1)
    tensors = [torch.randn(n, generator=gen).bfloat16() for n in (1, 37, 8192 * 2 + 5)]
    out = torch.empty(len(tensors), dtype=torch.float64)
    _sum_squares(lib, tensors, out, 2)
    ref = torch.stack([t.double().square().sum() for t in tensors])
    err = ((out - ref).abs() / ref).max().item()
    if not err < 1e-5:
        raise AssertionError(f"cpu_fused.c self-check: sum_squares_bf16 is off by {err:.2e}")


def _reference(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, step, grad_scale):
    """fairseq's Adam on float tensors (a copy): the formula in the module docstring."""
    g = torch.zeros_like(p) if g is None else g / grad_scale
    m = m * beta1 + (1 - beta1) * g
    v = v * beta2 + (1 - beta2) * g * g
    step_size = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
    p = p - weight_decay * lr * p
    return p - step_size * m / (v.sqrt() + eps), m, v


def _pointers(tensors):
    return torch.tensor([0 if t is None else t.data_ptr() for t in tensors], dtype=torch.int64)


def _call(lib, weights, grads, masters, exp_avgs, exp_avg_sqs, *, lr, beta1, beta2, eps, weight_decay, step,
          grad_scale):
    step_size = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)  # fairseq's, in double
    arrays = [_pointers(ts) for ts in (grads, masters, weights, exp_avgs, exp_avg_sqs)]  # held during the call
    sizes = torch.tensor([w.numel() for w in weights], dtype=torch.int64)
    lib.adam_step_bf16(len(weights), *[a.data_ptr() for a in arrays], sizes.data_ptr(), 1.0 / grad_scale,
                       beta1, beta2, 1.0 - beta1, 1.0 - beta2, -weight_decay * lr, eps, -step_size,
                       torch.get_num_threads())


def norms_bf16(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of each contiguous bf16 CPU tensor, as float32 (``torch.norm(t, dtype=torch.float32)`` each),
    in one call: the squares summed in float per block of 8192 values, the blocks in double, in a fixed order."""
    for i, t in enumerate(tensors):
        if not _fits(t, torch.bfloat16, t.shape):
            raise ValueError(f"norms_bf16: tensor {i} is not a contiguous bf16 CPU tensor")
    out = torch.empty(len(tensors), dtype=torch.float64)
    if tensors:
        _sum_squares(cpu_build.load(_self_check), tensors, out, torch.get_num_threads())
    return out.sqrt_().float()


def _sum_squares(lib, tensors, out, threads):
    pointers, sizes = _pointers(tensors), torch.tensor([t.numel() for t in tensors], dtype=torch.int64)  # held
    lib.sum_squares_bf16(len(tensors), pointers.data_ptr(), sizes.data_ptr(), out.data_ptr(), threads)


def available() -> bool:
    """Whether the switch allows the kernel and the library loads (under ``auto``, one warning where it does
    not; under ``fused``, an error)."""
    impl = switches.requested_cpu_fused_impl()
    if impl == "torch":
        return False
    problem = cpu_build.library_problem(_self_check)
    return problem is None or cpu_build.without_library(problem, impl, "the bf16 Adam kernel")


@torch.no_grad()
def adam_step_bf16(weights: Sequence[torch.Tensor], grads: Sequence[Optional[torch.Tensor]],
                   masters: Optional[Sequence[Optional[torch.Tensor]]], exp_avgs: Sequence[torch.Tensor],
                   exp_avg_sqs: Sequence[torch.Tensor], *, lr: float, beta1: float, beta2: float, eps: float,
                   weight_decay: float, step: int, grad_scale: float = 1.0):
    """One fairseq Adam step in place over parameters with the same hyperparameters and step count (module
    docstring), in one call.  ``grads[i]`` None: parameter i got no gradient (zeros); ``masters`` None, or
    ``masters[i]`` None: ``weights[i]`` is the parameter."""
    masters = [None] * len(weights) if masters is None else list(masters)
    for i, tensors in enumerate(zip(weights, grads, masters, exp_avgs, exp_avg_sqs)):
        if not supported(*tensors):
            raise ValueError(f"adam_step_bf16: parameter {i}: {unsupported_reason(*tensors)}")
    if not weights:
        return
    _call(cpu_build.load(_self_check), weights, grads, masters, exp_avgs, exp_avg_sqs, lr=float(lr),
          beta1=float(beta1), beta2=float(beta2), eps=float(eps), weight_decay=float(weight_decay), step=int(step),
          grad_scale=float(grad_scale))
