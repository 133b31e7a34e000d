"""fairseq's Adam update in one fused kernel per step instead of ten elementwise passes per parameter.

fairseq's ``Adam`` (behind ``--optimizer adam`` and our ``adjust_adam`` wherever apex's CUDA
FusedAdam is absent: always on a CPU) loops over the parameters in Python and runs each update as
about ten separate tensor operations.  On a CPU those passes over the weights and both moments cost
as much as the forward pass of a small model (bench/pretrain.py: a third of the tiny model's step).
torch's own fused AdamW kernel (``torch._fused_adamw_``, what ``torch.optim.AdamW(fused=True)``
runs, on CPU and CUDA) does the whole update in one pass over all parameters.

Its formula differs from fairseq's only in where ``eps`` sits:
fairseq divides by ``sqrt(v) + eps`` and scales the step by ``sqrt(1 - beta2^t)``, torch divides by
``sqrt(v) / sqrt(1 - beta2^t) + eps``.  Passing ``eps / sqrt(1 - beta2^t)`` makes them the same
update (equal up to float rounding; tests/test_fused_adam.py).  Weight decay is the same decoupled
``p -= lr * wd * p`` before the step in both.  The optimizer state keeps fairseq's layout (an int
``step``, float32 ``exp_avg`` / ``exp_avg_sq``), so checkpoints move freely between the two.
bf16/fp16 parameters (``--memory-efficient-bf16``) are updated in float32, as fairseq does: on a CPU in one
pass per bf16 parameter (``models/kernels/cpu_adam.py``), elsewhere through float32 copies.
"""
import functools
import math
from collections import defaultdict

import torch

from one_peace.models.kernels import cpu_adam

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def fused_adam_step(self, closure=None, scale=1.0, *, _original=None, twins=None):
    """``fairseq.optim.adam.Adam.step`` computed with ``torch._fused_adamw_`` (same update and state).
    ``scale``: the gradients are divided by it inside the kernel (apex FusedAdam's argument): fairseq's
    ``--bf16`` / ``--memory-efficient-bf16`` wrappers pass their gradient factor (1/sample_size times the
    clipping coefficient) when ``supports_step_with_scale`` instead of unscaling every float32 gradient in a
    pass of their own.

    ``twins``: {float32 master parameter: its bf16 model parameter}, from ``--bf16``'s wrapper
    (optim/master_weights.py).  Each master is then updated from its twin's bf16 gradient (zeros where the
    twin got none, as fairseq's wrapper gives them), and the result written into the twin; the masters'
    own ``.grad`` is not read.  bf16 parameters on a CPU go through ``cpu_adam`` (one pass each)."""
    loss = closure() if closure is not None else None
    for group in self.param_groups:
        if group.get("amsgrad", False):  # not fused here; fairseq's loop handles it
            if twins is not None:
                raise ValueError("amsgrad: fairseq's own loop needs the float32 gradients (no twins)")
            if not _is_one(scale):
                _scale_grads(group, scale)
            _original(_OneGroup(self, group))
            continue
        beta1, beta2 = group["betas"]
        buckets = defaultdict(list)  # (device, step) -> params: one kernel call each
        for p in group["params"]:
            if twins is not None:
                if p not in twins:
                    continue
                grad = twins[p].grad
            elif p.grad is None:
                continue
            else:
                grad = p.grad
            if grad is not None and grad.is_sparse:
                raise RuntimeError("Adam does not support sparse gradients, please consider SparseAdam instead")
            state = self.state[p]
            if len(state) == 0:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p.data, dtype=torch.float32)
                state["exp_avg_sq"] = torch.zeros_like(p.data, dtype=torch.float32)
            # float32, on the parameter's device (a loaded state may be elsewhere), contiguous whatever the
            # parameter's strides: the kernel needs it (see _update); each a no-op once so
            for key in ("exp_avg", "exp_avg_sq"):
                state[key] = state[key].to(device=p.device, dtype=torch.float32).contiguous()
            state["step"] += 1
            buckets[(p.device, state["step"])].append(p)
        for (device, step), params in buckets.items():
            _update(self, params, group, beta1, beta2, step, device, scale, twins)
    return loss


def _is_one(scale) -> bool:
    return not torch.is_tensor(scale) and float(scale) == 1.0


def _scale_grads(group, scale):
    grads = [p.grad for p in group["params"] if p.grad is not None]
    if grads:
        torch._foreach_div_(grads, scale.to(grads[0].device) if torch.is_tensor(scale) else scale)


def _local(tensor):
    """A sharded (FSDP2) tensor's own shard, which the update changes in place; Adam is elementwise, so
    updating each shard is updating the whole."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _fp32_contiguous(tensor):
    if tensor.dtype == torch.float32 and tensor.is_contiguous():
        return tensor
    return tensor.float().contiguous()


def _update(optimizer, params, group, beta1, beta2, step, device, scale=1.0, twins=None):
    params = _update_bf16_in_one_pass(optimizer, params, group, beta1, beta2, step, device, scale, twins)
    if not params:
        return
    # The CPU kernel (torch 2.13) walks every tensor as contiguous memory whatever its strides: a
    # transposed weight or gradient got a wrong update (tests/test_fused_adam.py).  Such tensors go
    # through contiguous float32 copies, as bf16 ones do.
    weights = [_local(p.data) for p in params]
    masters = [_fp32_contiguous(w) for w in weights]
    if twins is None:
        grads = [_fp32_contiguous(_local(p.grad.data)) for p in params]
    else:  # the twin's bf16 gradient, or zeros where it got none (fairseq's --bf16 wrapper's semantics)
        grads = [torch.zeros_like(m) if twins[p].grad is None else _fp32_contiguous(_local(twins[p].grad.data))
                 for p, m in zip(params, masters)]
    exp_avgs = [_local(optimizer.state[p]["exp_avg"]) for p in params]  # float32, contiguous (the step's caller)
    exp_avg_sqs = [_local(optimizer.state[p]["exp_avg_sq"]) for p in params]
    step_tensor = torch.tensor(float(step), dtype=torch.float32, device=device)
    grad_scale = None if _is_one(scale) else torch.as_tensor(scale, dtype=torch.float32, device=device).reshape(())
    torch._fused_adamw_(
        masters, grads, exp_avgs, exp_avg_sqs, [], [step_tensor] * len(params), grad_scale=grad_scale,
        lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2),
        weight_decay=float(group["weight_decay"]),
        eps=float(group["eps"]) / math.sqrt(1 - beta2 ** step),  # fairseq's eps placement (module doc)
        amsgrad=False, maximize=False)
    for p, weight, master in zip(params, weights, masters):
        if master is not weight:
            weight.copy_(master)
        if twins is not None:
            _local(twins[p].data).copy_(weight)


def _update_bf16_in_one_pass(optimizer, params, group, beta1, beta2, step, device, scale, twins):
    """Updates the bf16 CPU parameters among ``params`` with ``cpu_adam`` (``--memory-efficient-bf16``'s bf16
    parameters, ``--bf16``'s masters through their twins); returns the others."""
    if device.type != "cpu" or not (twins is not None or any(p.dtype == torch.bfloat16 for p in params)) \
            or not cpu_adam.available():
        return params
    rest, batch = [], []
    for p in params:
        state = optimizer.state[p]
        if twins is None:
            tensors = (p.data, p.grad, None, state["exp_avg"], state["exp_avg_sq"])
        else:
            tensors = (twins[p].data, twins[p].grad, p.data, state["exp_avg"], state["exp_avg_sq"])
        if cpu_adam.supported(*tensors):
            batch.append(tensors)
        else:
            rest.append(p)
    if batch:
        cpu_adam.adam_step_bf16(*zip(*batch), lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2),
                                eps=float(group["eps"]), weight_decay=float(group["weight_decay"]), step=step,
                                grad_scale=float(scale))
    return rest


class _OneGroup:
    """A view of an optimizer with one parameter group, for fairseq's own loop."""

    def __init__(self, optimizer, group):
        self.param_groups = [group]
        self.state = optimizer.state


def install():
    """Makes fairseq's ``Adam.step`` the fused one (idempotent)."""
    from fairseq.optim import adam

    if getattr(adam.Adam.step, "one_peace_patched", False):
        return
    original = adam.Adam.step

    @functools.wraps(original)
    def step(self, closure=None, scale=1.0):
        return fused_adam_step(self, closure, scale, _original=original)

    step.one_peace_patched = True
    step.fairseq_step = original
    adam.Adam.step = step
    adam.Adam.supports_step_with_scale = True  # fairseq's bf16 wrappers then pass their gradient factor as scale
