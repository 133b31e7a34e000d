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
"""
import functools

import torch


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


def _step(original):
    @functools.wraps(original)
    def step(self, closure=None, groups=None):
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
    from fairseq.optim.fp16_optimizer import _FP16OptimizerMixin as mixin

    for name, replacement in (("_sync_fp16_grads_to_fp32", _sync_grads), ("_sync_fp32_params_to_fp16", _sync_params),
                              ("zero_grad", _zero_grad)):
        if not getattr(getattr(mixin, name), "one_peace_patched", False):
            setattr(mixin, name, _per_parameter(getattr(mixin, name), replacement))
    if not getattr(mixin.step, "one_peace_patched", False):
        mixin.step = _step(mixin.step)
