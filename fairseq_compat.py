"""Compatibility shims between official ONE-PEACE checkpoints and stock fairseq 0.12.

* Checkpoints written by the official (vendored, modified) fairseq may lack
  ``optimizer_history``; stock fairseq's upgrade step then raises ``KeyError:
  'best_loss'``.  We fill an empty history instead.
* The torch.load allow-list for fairseq checkpoints (``weights_only=True`` is the
  default of the torch.load call inside fairseq) is registered here.
"""
import functools

from fairseq import checkpoint_utils

from .models.checkpoint import register_safe_globals


def _tolerant_upgrade(original):
    @functools.wraps(original)
    def upgrade(state):
        if "optimizer_history" not in state and "best_loss" not in state:
            # A weights-only checkpoint: record "no training history" in fairseq's format.
            state["optimizer_history"] = [{"criterion_name": None, "optimizer_name": None,
                                           "lr_scheduler_state": {}, "num_updates": 0}]
        state.setdefault("extra_state", {})
        return original(state)

    upgrade.one_peace_patched = True
    return upgrade


def install():
    if not getattr(checkpoint_utils._upgrade_state_dict, "one_peace_patched", False):
        checkpoint_utils._upgrade_state_dict = _tolerant_upgrade(checkpoint_utils._upgrade_state_dict)
    register_safe_globals()


install()
