"""fairseq's ``--bf16`` / ``--fp16`` master weights without the redundant passes over them.

With ``--bf16`` fairseq keeps one float32 master copy per parameter (not flattened: bf16 turns flat
grads off).  Each step it zeroed every float32 gradient in ``zero_grad``, then overwrote every one of
them with the bf16 gradient in ``_sync_fp16_grads_to_fp32``, then copied every master weight back,
one tensor at a time.  At the base size (259 M parameters) the zeroing alone wrote 1 GB per step for
nothing.  Here ``zero_grad`` only marks the float32 gradients stale; the next sync writes each of
them (the bf16 gradient, or zeros where a parameter got none) as before, and both copies run as one
``torch._foreach_copy_`` each.  The values every step sees are unchanged; the flat-parameter case
(fp16 with flat grads) keeps fairseq's code.

fairseq's Adam takes the wrapper's gradient factor as the fused step's ``scale`` (optim/fused_adam.py), so
``step`` no longer unscales.  fairseq resets that factor only when it unscales, or in ``zero_grad`` with an
fp16 loss scaler: after a scaled bf16 step it would carry into the next one (:func:`_step`).

**Direct mode** (:func:`direct`: bf16 parameters on a CPU, fairseq's Adam with the fused step, no loss scaler,
per-parameter masters, and the ``cpu_adam`` kernel allowed by ``ONE_PEACE_CPU_FUSED``): no float32 gradient is
made at all.  ``clip_grad_norm`` takes the norm of the bf16 gradients (fairseq's own function, accumulating in
float32: the float32 copies hold the same values), and ``step`` updates each master from its bf16 twin's
gradient and writes the twin, in one pass (``models/kernels/cpu_adam.py``).  The masters' float32 gradients,
4 bytes per parameter, are dropped.
"""
import functools

import torch

from one_peace.models.kernels import cpu_adam

from . import fused_adam


def _sync_grads(self):
    if not (self._needs_sync or getattr(self, "_one_peace_stale_grads", False)):
        return
    sources, targets = [], []
    for p, p32 in zip(self.fp16_params, self.fp32_params):
        if not p.requires_grad:
            continue
        if p.grad is None:  # no gradient this step: zeros, as fairseq gives it
            if p32.grad is None:
                p32.grad = torch.zeros_like(p.data, dtype=torch.float)
            else:
                p32.grad.zero_()
        elif p32.grad is None:
            p32.grad = p.grad.data.float()
        else:
            sources.append(p.grad.data)
            targets.append(p32.grad.data)
    if targets:
        torch._foreach_copy_(targets, sources)
    self._needs_sync = False
    self._one_peace_stale_grads = False


def _sync_params(self):
    pairs = [(p.data, p32.data) for p, p32 in zip(self.fp16_params, self.fp32_params) if p.requires_grad]
    if pairs:
        torch._foreach_copy_([p for p, _ in pairs], [p32 for _, p32 in pairs])


def _zero_grad(self):
    for p in self.fp16_params:
        p.grad = None
    # Every float32 gradient is rewritten by the next sync: marking them is enough.
    self._one_peace_stale_grads = True
    self._needs_sync = False
    if self.scaler is not None:
        self._multiply_factor = 1.0 / float(self.scaler.loss_scale)


def direct(self) -> bool:
    """Whether this wrapper runs in direct mode (module docstring)."""
    shape = getattr(self, "_one_peace_direct_shape", None)
    if shape is None:  # what cannot change during a run, looked at once
        inner = getattr(self.fp32_optimizer, "optimizer", None)
        shape = (not self.has_flat_params and self.scaler is None
                 and getattr(type(inner).step, "one_peace_patched", False)
                 and not any(g.get("amsgrad", False) for g in inner.param_groups)
                 and all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in self.fp16_params))
        self._one_peace_direct_shape = shape
    return shape and cpu_adam.available()


def _direct_step(self, closure):
    twins = {p32: p for p, p32 in zip(self.fp16_params, self.fp32_params) if p.requires_grad}
    fused_adam.fused_adam_step(self.fp32_optimizer.optimizer, closure, scale=1.0 / self._multiply_factor,
                               twins=twins)
    self._multiply_factor = 1.0
    self._needs_sync = False
    self._one_peace_stale_grads = True  # a later step out of direct mode syncs them all
    for p32 in self.fp32_params:  # fairseq made them at the start; direct mode never reads them
        p32.grad = None


def _bf16_cpu_grads(params):
    """The gradients of ``params`` if all are contiguous bf16 CPU tensors (None otherwise, or with fairseq's
    expert parameters, which its clipping treats apart)."""
    grads = [p.grad.detach() for p in params if p.requires_grad and p.grad is not None]
    if grads and not any(hasattr(p, "expert") for p in params) \
            and all(g.dtype is torch.bfloat16 and g.is_cpu and g.is_contiguous() for g in grads):
        return grads
    return None


def _grad_norm(grads, aggregate_norm_fn):
    """fairseq's ``utils.clip_grad_norm_(params, 0, ...)``, the norm of the per-tensor float32 norms, for bf16
    gradients in one kernel call (``cpu_adam.norms_bf16``): a ``torch.norm`` per tensor converts bf16 at half
    the speed of reading float32."""
    total = torch.linalg.vector_norm(cpu_adam.norms_bf16(grads))
    return aggregate_norm_fn(total) if aggregate_norm_fn is not None else total


def _clip_without_scaler(self, grad_norm, max_norm):
    """The end of fairseq's wrappers' ``clip_grad_norm`` without a loss scaler: the clipping coefficient goes
    into the gradient factor."""
    if torch.is_tensor(self._multiply_factor):
        self._multiply_factor = self._multiply_factor.to(grad_norm.device)
    if max_norm > 0.0:
        self._multiply_factor *= (max_norm / (grad_norm + 1e-6)).clamp_(max=1)
    return grad_norm


def _clip_grad_norm(original):
    """--bf16: in direct mode the norm of the bf16 gradients (fairseq's of the float32 copies otherwise)."""
    @functools.wraps(original)
    def clip_grad_norm(self, max_norm, aggregate_norm_fn=None):
        if not direct(self):
            return original(self, max_norm, aggregate_norm_fn)
        grads = _bf16_cpu_grads(self.fp16_params)
        if grads is None:
            from fairseq import utils

            norm = utils.clip_grad_norm_([p for p in self.fp16_params if p.requires_grad], 0, aggregate_norm_fn)
        else:
            norm = _grad_norm(grads, aggregate_norm_fn)
        return _clip_without_scaler(self, self._multiply_factor * norm, float(max_norm))

    clip_grad_norm.one_peace_patched = True
    return clip_grad_norm


def _memory_efficient_clip_grad_norm(original):
    """--memory-efficient-bf16: the norm of bf16 CPU gradients in one kernel call (fairseq's otherwise)."""
    @functools.wraps(original)
    def clip_grad_norm(self, max_norm, aggregate_norm_fn=None):
        grads = _bf16_cpu_grads(self.wrapped_optimizer.params) if self.scaler is None else None
        if grads is None or not cpu_adam.available():
            return original(self, max_norm, aggregate_norm_fn)
        return _clip_without_scaler(self, self._multiply_factor * _grad_norm(grads, aggregate_norm_fn),
                                    float(max_norm))

    clip_grad_norm.one_peace_patched = True
    return clip_grad_norm


def _step(original):
    @functools.wraps(original)
    def step(self, closure=None, groups=None):
        if groups is None and direct(self):
            return _direct_step(self, closure)
        out = original(self, closure, groups=groups)
        if getattr(self, "supports_step_with_scale", False) and self.scaler is None:
            self._multiply_factor = 1.0  # divided out inside the step; _unscale_grads would have reset it
        return out

    step.one_peace_patched = True
    return step


def _per_parameter(original, replacement):
    """The mixin's method: ``replacement`` for per-parameter master copies, fairseq's own for flat ones."""
    @functools.wraps(original)
    def method(self):
        return original(self) if self.has_flat_params else replacement(self)

    method.one_peace_patched = True
    return method


def install():
    """Patches fairseq's fp16/bf16 optimizer mixin (idempotent)."""
    from fairseq.optim import fp16_optimizer
    from fairseq.optim.fp16_optimizer import _FP16OptimizerMixin as mixin

    for name, replacement in (("_sync_fp16_grads_to_fp32", _sync_grads), ("_sync_fp32_params_to_fp16", _sync_params),
                              ("zero_grad", _zero_grad)):
        if not getattr(getattr(mixin, name), "one_peace_patched", False):
            setattr(mixin, name, _per_parameter(getattr(mixin, name), replacement))
    if not getattr(mixin.step, "one_peace_patched", False):
        mixin.step = _step(mixin.step)
    if not getattr(mixin.clip_grad_norm, "one_peace_patched", False):
        mixin.clip_grad_norm = _clip_grad_norm(mixin.clip_grad_norm)
    efficient = fp16_optimizer._MemoryEfficientFP16OptimizerMixin
    if not getattr(efficient.clip_grad_norm, "one_peace_patched", False):
        efficient.clip_grad_norm = _memory_efficient_clip_grad_norm(efficient.clip_grad_norm)
