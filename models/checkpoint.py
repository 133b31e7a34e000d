"""Loading official and our own checkpoints: safe unpickling and state-dict upgrades.

Upgrades reproduce the official load-time logic (legacy renames, derived buffers,
per-layer copies of a shared rel-pos table, image rel-pos table resizing, pruning of
modalities the model does not have).  Unlike the official loader, nothing is silently
re-initialised: a whole component absent from the checkpoint (a new classification
head, a modality added in stage 2, a reset ``logit_scale``) starts from its fresh
initialisation and is logged; anything else missing, unexpected or mis-shaped raises
``CheckpointMismatchError`` listing the keys.
"""
import argparse
import collections
import logging
import math
import os
import re
from typing import Dict, Iterable, List

import numpy as np
import torch

from .modalities import all_modalities, modality_names

logger = logging.getLogger(__name__)


def _any_modality() -> str:
    """Regex alternation of the registered modality names."""
    return "(" + "|".join(re.escape(m) for m in modality_names()) + ")"


def pretrain_only_patterns():
    """Keys that exist only in the pretraining model (decoder, mask tokens, mask heads)."""
    m = _any_modality()
    return (r"^decoder_wrapper\.", rf"^{m}_mask_token$", rf"^decoder_{m}_embed\.", rf"^{m}_mask_head\.")


class CheckpointMismatchError(RuntimeError):
    """The checkpoint does not fit the model; the message lists the offending keys."""


def _safe_globals():
    # What fairseq checkpoints (official and ours) pickle besides tensors and containers.
    items = [argparse.Namespace, collections.OrderedDict, collections.defaultdict, np.dtype]
    for name in ("float64", "float32", "int64", "int32", "bool_"):
        items.append(getattr(np, name))
        items.append(type(np.dtype(name)))
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    items.append(scalar)
    return items


def register_safe_globals():
    """Allow-list the non-tensor types of fairseq checkpoints for ``weights_only`` loading.

    fairseq's own loader calls ``torch.load`` with the default ``weights_only=True``.
    """
    torch.serialization.add_safe_globals(_safe_globals())


def load_checkpoint_file(path: str, allow_pickle: bool = False, mmap: bool = False) -> dict:
    """``torch.load`` a checkpoint safely; ``allow_pickle=True`` opts into arbitrary pickles.

    ``mmap=True`` memory-maps a zip-format file instead of reading it: tensors are paged in from
    disk as they are used (legacy pickle files cannot be mapped and are read).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    kind = _file_kind(path)
    register_safe_globals()
    try:
        state = torch.load(path, map_location="cpu", weights_only=not allow_pickle, mmap=mmap and kind == "zip")
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"cannot load checkpoint {path}: {_load_failure(err, kind, allow_pickle)}") from err
    if not isinstance(state, dict) or "model" not in state:
        keys = list(state)[:10] if isinstance(state, dict) else type(state).__name__
        raise CheckpointMismatchError(
            f"{path} is not a ONE-PEACE/fairseq checkpoint: expected a dict with a 'model' entry, got {keys}"
        )
    return state


def _file_kind(path: str) -> str:
    """``zip`` (torch >= 1.6 format) or ``pickle`` (legacy); ValueError for anything else."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise ValueError(f"cannot load checkpoint {path}: the file is empty (0 bytes)")
    if head.startswith(b"PK"):
        return "zip"
    if head[0] == 0x80:  # pickle protocol 2+ opcode
        return "pickle"
    raise ValueError(f"cannot load checkpoint {path}: not a PyTorch checkpoint (neither a zip archive nor a "
                     f"pickle; it starts with {head!r})")


def _load_failure(err: Exception, kind: str, allow_pickle: bool) -> str:
    text = str(err)
    if "Weights only load failed" in text or "weights_only" in text:
        hint = "" if allow_pickle else (" It holds objects outside the allow-list; if you trust this file, "
                                        "load it with allow_pickle=True (arbitrary code can run).")
        return text.splitlines()[0] + "." + hint
    if kind == "zip":
        return f"the zip archive is truncated or corrupt ({text.splitlines()[0]})"
    return f"the pickle is truncated or corrupt ({text.splitlines()[0] if text else type(err).__name__})"


def _rename_legacy_keys(state_dict: Dict[str, torch.Tensor]):
    for key in list(state_dict):
        new = key.replace(".rel_pos_table.weight", ".rel_pos_table_list.0.weight")
        new = re.sub(r"\.layer_norms\.0\.", ".self_attn_layer_norm.", new)
        new = re.sub(r"\.layer_norms\.1\.", ".final_layer_norm.", new)
        if new != key:
            state_dict[new] = state_dict.pop(key)


def resize_image_rel_pos_table(table: torch.Tensor, new_size: int) -> torch.Tensor:
    """Resize a BEiT-style (2r-1)^2+3 bucket table to another grid (3 special rows kept).

    Follows BEiT's geometric-progression coordinates with bicubic spline interpolation
    per head (the official code used scipy's removed ``interp2d``; RectBivariateSpline
    is its documented replacement for gridded data).
    """
    from scipy.interpolate import RectBivariateSpline

    num_heads = table.size(1)
    src_side = int(math.isqrt(table.size(0) - 3))
    dst_side = 2 * new_size - 1
    if src_side == dst_side:
        return table
    if dst_side < src_side:
        raise CheckpointMismatchError(
            f"cannot shrink an image rel-pos table from {src_side}x{src_side} to {dst_side}x{dst_side}"
        )
    grid, extra = table[:-3], table[-3:]
    half_src, half_dst = src_side // 2, dst_side // 2

    def geometric(ratio):
        return sum(ratio ** i for i in range(half_src))

    low, high = 1.01, 1.5
    while high - low > 1e-6:  # ratio whose geometric sum spans the target half-width
        mid = (low + high) / 2
        low, high = (mid, high) if geometric(mid) < half_dst else (low, mid)
    ratio = (low + high) / 2
    steps, cur = [], 1.0
    for i in range(half_src):
        steps.append(cur)
        cur += ratio ** (i + 1)
    src_coords = np.array([-s for s in reversed(steps)] + [0] + steps)
    dst_coords = np.arange(-half_dst, half_dst + 1, 1.0)
    resized = []
    values = grid.float().numpy()
    for head in range(num_heads):
        z = values[:, head].reshape(src_side, src_side)
        order = min(3, src_side - 1)  # cubic where the grid allows it
        spline = RectBivariateSpline(src_coords, src_coords, z, kx=order, ky=order)
        resized.append(torch.from_numpy(spline(dst_coords, dst_coords)).reshape(-1, 1))
    new_grid = torch.cat(resized, dim=1).to(table.dtype)
    return torch.cat([new_grid, extra], dim=0)


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
    _rename_legacy_keys(state_dict)
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
