"""The gradient factors of a fairseq step folded into the fused Adam kernel instead of passes over every gradient.

Before the update, fairseq's trainer multiplies every gradient by ``world_size / sample_size``
(``multiply_grads``) and then by the clipping coefficient (``clip_grad_norm``): two passes over all
gradients in float32 -- 2 GB read and written each at base size -- that change nothing when the factor is 1.
Its bf16/fp16 wrappers already defer the factor (``_multiply_factor``) but then spend the same pass
unscaling, unless the optimizer "supports step with scale": divides the gradients by a ``scale`` inside its
step, as apex's FusedAdam does.  ``torch._fused_adamw_`` does that too (its ``grad_scale``), so:

* :func:`optim.fused_adam.install` marks fairseq's Adam as supporting it, which fairseq's own
  ``--bf16`` / ``--memory-efficient-bf16`` wrappers then use;
* this module gives the float32 wrapper (``FairseqOptimizer``) the same deferral, as fairseq's
  ``_FP16OptimizerMixin`` does it: the factor is kept, the norm is that of the unscaled gradients times the
  factor, clipping multiplies the factor, and the step passes ``scale = 1 / factor``.

fairseq's ``--bf16`` wrapper (``FP16Optimizer``) resets its factor only when it unscales, or in ``zero_grad``
with a loss scaler (fp16); after a scaled bf16 step the factor would carry into the next step, so
:func:`install` resets it there (:func:`_reset_after_scaled_step`).

Only for optimizers that support the scale; every other optimizer keeps fairseq's passes.  Anything that
reads the gradients between the multiply and the step must take :func:`apply_pending_factor` first (the
FSDP2 trainer's norm over shards does).
"""
import functools

import torch

_PENDING = "_one_peace_grad_factor"


def _defers(optimizer) -> bool:
    return bool(getattr(optimizer, "supports_step_with_scale", False))


def pending_factor(optimizer):
    """The factor not yet applied to ``optimizer``'s gradients (a float or a 0-d tensor; 1.0 if none)."""
    return getattr(optimizer, _PENDING, 1.0)


def apply_pending_factor(optimizer):
    """Multiplies the gradients by the pending factor now (fairseq's own pass), for readers of the gradients."""
    factor = pending_factor(optimizer)
    if getattr(optimizer, _PENDING, None) is not None:
        delattr(optimizer, _PENDING)
    if not (isinstance(factor, float) and factor == 1.0):
        _ORIGINAL["multiply_grads"](optimizer, factor)


def _is_one(value) -> bool:
    return not torch.is_tensor(value) and float(value) == 1.0


def _multiply_grads(original):
    @functools.wraps(original)
    def multiply_grads(self, c):
        if not _defers(self):
            return original(self, c)
        if not _is_one(c):
            setattr(self, _PENDING, pending_factor(self) * c)
    return multiply_grads


def _clip_grad_norm(original):
    @functools.wraps(original)
    def clip_grad_norm(self, max_norm, aggregate_norm_fn=None):
        factor = pending_factor(self)
        if not _defers(self):
            return original(self, max_norm, aggregate_norm_fn)
        grad_norm = factor * original(self, 0, aggregate_norm_fn)  # the norm only, of the unscaled gradients
        if max_norm > 0:
            setattr(self, _PENDING, factor * (max_norm / (grad_norm + 1e-6)).clamp_(max=1))  # fairseq's coefficient
        return grad_norm
    return clip_grad_norm


def _step(original):
    @functools.wraps(original)
    def step(self, closure=None, scale=1.0, groups=None):
        factor = pending_factor(self)
        if _defers(self) and not _is_one(factor):
            delattr(self, _PENDING)
            scale = scale / factor  # the optimizer divides the gradients by scale
        return original(self, closure, scale=scale, groups=groups)
    return step


def _zero_grad(original):
    @functools.wraps(original)
    def zero_grad(self):
        if getattr(self, _PENDING, None) is not None:
            delattr(self, _PENDING)
        return original(self)
    return zero_grad


def _reset_after_scaled_step(original):
    @functools.wraps(original)
    def step(self, closure=None, groups=None):
        out = original(self, closure, groups=groups)
        if getattr(self, "supports_step_with_scale", False) and self.scaler is None:
            self._multiply_factor = 1.0  # applied inside the step, as _unscale_grads would have reset it
        return out
    return step


_ORIGINAL = {}
_WRAPPERS = {"multiply_grads": _multiply_grads, "clip_grad_norm": _clip_grad_norm, "step": _step,
             "zero_grad": _zero_grad}


def install():
    """Defers ``FairseqOptimizer``'s gradient factors into steps that take a scale (idempotent).  fairseq's
    bf16/fp16 wrappers override these methods with their own deferral; their ``step`` gets the reset."""
    from fairseq.optim.fairseq_optimizer import FairseqOptimizer
    from fairseq.optim.fp16_optimizer import _FP16OptimizerMixin

    if not getattr(_FP16OptimizerMixin.step, "one_peace_patched", False):
        _FP16OptimizerMixin.step = _reset_after_scaled_step(_FP16OptimizerMixin.step)
        _FP16OptimizerMixin.step.one_peace_patched = True
    for name, wrap in _WRAPPERS.items():
        current = getattr(FairseqOptimizer, name)
        if getattr(current, "one_peace_patched", False):
            continue
        _ORIGINAL[name] = current
        patched = wrap(current)
        patched.one_peace_patched = True
        setattr(FairseqOptimizer, name, patched)
