"""Loading official and our own checkpoints: safe unpickling and state-dict upgrades.

Upgrades reproduce the official load-time logic (legacy renames, derived buffers,
per-layer copies of a shared rel-pos table, image rel-pos table resizing, pruning of
modalities the model does not have).  Unlike the official loader, nothing is silently
re-initialised: a whole component absent from the checkpoint (a new classification
head, a modality added in stage 2, a reset ``logit_scale``) starts from its fresh
initialisation and is logged; anything else missing, unexpected or mis-shaped raises
``CheckpointMismatchError`` listing the keys.
"""
import logging
import math
import re
from typing import Dict, Iterable, List

import torch

from .checkpoint_io import (  # noqa: F401 - load_checkpoint_file & co. are imported from here too
    CheckpointMismatchError,
    load_checkpoint_file,
    register_safe_globals,
    rename_legacy_keys,
    resize_image_rel_pos_table,
)
from .modalities import all_modalities, modality_names

logger = logging.getLogger(__name__)


def _any_modality() -> str:
    """Regex alternation of the registered modality names."""
    return "(" + "|".join(re.escape(m) for m in modality_names()) + ")"


def pretrain_only_patterns():
    """Keys that exist only in the pretraining model (decoder, mask tokens, mask heads)."""
    m = _any_modality()
    return (r"^decoder_wrapper\.", rf"^{m}_mask_token$", rf"^decoder_{m}_embed\.", rf"^{m}_mask_head\.")


def _image_upgrades(model, state_dict, prefix):
    adapter = model.encoder_wrapper.image_adapter
    if adapter is None or adapter.rel_pos_table_list is None:
        return
    key = f"{prefix}image_adapter.rel_pos_table_list.0.weight"
    want = adapter.rel_pos_table_list[0].weight.size(0)
    if key in state_dict and state_dict[key].size(0) != want:
        logger.info("resizing %s from %d to %d buckets", key, state_dict[key].size(0), want)
        state_dict[key] = resize_image_rel_pos_table(state_dict[key], adapter.rel_bucket_size)
        state_dict[f"{prefix}image_adapter.rp_bucket"] = adapter.rp_bucket.clone()
    pos_key = f"{prefix}image_adapter.pos_embed"
    if pos_key in state_dict and state_dict[pos_key].size(0) < adapter.pos_embed.size(0):
        from .adapters.image import resize_grid_pos_embed

        side = int(math.isqrt(adapter.pos_embed.size(0) - 1))
        state_dict[pos_key] = resize_grid_pos_embed(state_dict[pos_key], side)
        state_dict[f"{prefix}image_adapter.position_idx"] = adapter.position_idx.clone()


def _copy_shared_rel_pos_tables(model, state_dict, prefix):
    for modality in modality_names():
        adapter = getattr(model.encoder_wrapper, f"{modality}_adapter", None)
        if adapter is None or adapter.num_tables <= 1:
            continue
        base = f"{prefix}{modality}_adapter.rel_pos_table_list."
        if f"{base}0.weight" in state_dict and f"{base}1.weight" not in state_dict:
            for idx in range(1, adapter.num_tables):
                state_dict[f"{base}{idx}.weight"] = state_dict[f"{base}0.weight"].clone()


def _prune(model, state_dict):
    """Drop keys of modalities/components this model does not have (official pruning)."""
    model_keys = set(model.state_dict())
    has_decoder = any(k.startswith("decoder_wrapper.") for k in model_keys)
    absent = [m for m in modality_names() if m not in model.modalities]
    patterns = pretrain_only_patterns()
    contrastive = rf"^({_any_modality()}_proj\.|logit_scale$)"
    dropped = []
    for key in list(state_dict):
        if key in model_keys:
            continue
        if (any(f"{m}_" in key for m in absent)
                or (not has_decoder and any(re.search(p, key) for p in patterns))
                or (not hasattr(model, "logit_scale") and re.match(contrastive, key))):
            state_dict.pop(key)
            dropped.append(key)
    if dropped:
        logger.info("ignoring %d checkpoint keys this model does not use (e.g. %s)", len(dropped), dropped[:3])


def component_of(key: str) -> str:
    """The component a key belongs to, for deciding what may start fresh."""
    if key.startswith("classify_head."):
        return "classify_head"
    if key.startswith(("seg_head.", "aux_head.")):
        return "segmentation_head"
    if key == "logit_scale":
        return "logit_scale"
    if any(re.search(p, key) for p in pretrain_only_patterns()):
        return "decoder"
    for m in modality_names():
        if re.search(rf"(^|\.){m}_(adapter|ffn|layer_norm|proj)\b", key):
            return m
    return "shared"


def upgrade_state_dict(model, state_dict: Dict[str, torch.Tensor], reset_logit_scale=False,
                       drop_image=False, fresh_keys=None) -> Dict[str, torch.Tensor]:
    """Apply the official load-time upgrades to a copy of ``state_dict``, then the registered
    modalities' ``upgrade`` hooks (keys they let start fresh are added to the set ``fresh_keys``)."""
    state_dict = dict(state_dict)
    rename_legacy_keys(state_dict)
    for modality in all_modalities():  # before drop_image: a hook may derive from the image branch
        if modality.upgrade is not None and modality.name in getattr(model, "modalities", ()):
            allowed = set(modality.upgrade(model, state_dict))
            if fresh_keys is not None:
                fresh_keys |= allowed
    if reset_logit_scale:
        state_dict.pop("logit_scale", None)
    if drop_image:  # stage-2 pretraining starts without the image branch
        for key in [k for k in state_dict if "image_" in k]:
            state_dict.pop(key)
    _image_upgrades(model, state_dict, "encoder_wrapper.")
    _copy_shared_rel_pos_tables(model, state_dict, "encoder_wrapper.")
    _prune(model, state_dict)
    return state_dict


def fresh_components(model, reset_logit_scale=False, drop_image=False) -> set:
    """Components that may start from fresh initialisation when a checkpoint lacks them entirely:
    a new classification head or segmentation decoder; the image branch of the audio-visual model
    (from an audio-only checkpoint); the stage-2 audio branch and decoder (``drop_image``); a reset logit scale."""
    allowed = set()
    if hasattr(model, "classify_head"):
        allowed.add("classify_head")
    if hasattr(model, "seg_head"):
        allowed.add("segmentation_head")
    if getattr(model, "head_type", None) == "av":
        allowed.add("image")
    if drop_image:
        allowed |= {"audio", "decoder", "logit_scale"}
    if reset_logit_scale:
        allowed.add("logit_scale")
    return allowed


def check_and_fill(model, state_dict: Dict[str, torch.Tensor], source: str = "checkpoint",
                   fresh_ok: Iterable[str] = (), fresh_keys: Iterable[str] = ()):
    """Fill derived buffers, the wholly-absent components named in ``fresh_ok`` and the keys in
    ``fresh_keys`` (from modality hooks) from the model; raise on everything else missing,
    unexpected or mis-shaped.  Returns (state_dict, fresh keys)."""
    fresh_ok, fresh_keys = set(fresh_ok), set(fresh_keys)
    own = model.state_dict()
    buffers = {name for name, _ in model.named_buffers()}
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    present_components = {component_of(k) for k in state_dict if k in own}
    fresh, bad_missing = [], []
    for key in missing:
        if key in buffers:
            state_dict[key] = own[key]  # derived (rp_bucket, position_idx, version)
        elif key in fresh_keys or (component_of(key) in fresh_ok and component_of(key) not in present_components):
            state_dict[key] = own[key]
            fresh.append(key)
        else:
            bad_missing.append(key)
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in state_dict if k in own and state_dict[k].shape != own[k].shape]
    if bad_missing or unexpected or shapes:
        parts = [f"{source} does not fit {type(model).__name__}"]
        if bad_missing:
            absent = sorted({component_of(k) for k in bad_missing} - present_components)
            if absent:
                parts.append(f"absent components: {', '.join(absent)} (only {', '.join(sorted(fresh_ok)) or 'none'} "
                             "may start fresh for this model)")
            parts.append(f"missing keys ({len(bad_missing)}): {_short(bad_missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_short(unexpected)}")
        if shapes:
            parts.append(f"wrong shapes ({len(shapes)}): {_short(shapes)}")
        raise CheckpointMismatchError("\n  ".join(parts))
    if fresh:
        comps = sorted({component_of(k) for k in fresh})
        logger.warning("%s has no %s weights: %d tensors start from fresh initialisation",
                       source, "/".join(comps), len(fresh))
    return state_dict, fresh


def _short(items: List[str], limit: int = 20) -> str:
    items = list(items)
    more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def load_into(model, state_dict, source="checkpoint", **upgrade_kwargs):
    """Upgrade, check and strictly load ``state_dict`` into ``model``."""
    hook_fresh = set()
    state_dict = upgrade_state_dict(model, state_dict, fresh_keys=hook_fresh, **upgrade_kwargs)
    state_dict, fresh = check_and_fill(model, state_dict, source,
                                       fresh_ok=fresh_components(model, **upgrade_kwargs), fresh_keys=hook_fresh)
    if getattr(model, "_deferred_init", None) is not None:
        # Built without initialisation (models/deferred_init.py): initialise only what the
        # checkpoint lacks, adopt or copy the rest.
        from .deferred_init import load_deferred

        load_deferred(model, state_dict, fresh)
        return model
    # Keep the model's dtype for parameters (official checkpoints are often bf16).
    torch.nn.Module.load_state_dict(model, state_dict, strict=True)
    return model
