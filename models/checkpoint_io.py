"""Reading checkpoint files (safe unpickling, clear errors) and the tensor-level upgrades that need no
model: legacy key renames, image rel-pos table resizing.  Kept apart from ``checkpoint.py`` (the key
rules built from the modality registry) so that modality hooks can read checkpoints too.
"""
import math
import os
import re
from typing import Dict

import numpy as np
import torch

from .pickle_allowlist import register_safe_globals  # noqa: F401 - imported from here by other modules


class CheckpointMismatchError(RuntimeError):
    """The checkpoint does not fit the model; the message lists the offending keys."""


def is_checkpoint(path: str) -> bool:
    """What :func:`load_checkpoint_file` reads: a file, a model directory of ``one-peace-convert`` or an
    FSDP2 run's sharded checkpoint directory."""
    from .model_dir import is_model_dir
    from .sharded_checkpoint import is_sharded_checkpoint

    path = os.path.expanduser(os.fspath(path))
    return os.path.isfile(path) or is_model_dir(path) or is_sharded_checkpoint(path)


def load_checkpoint_file(path: str, allow_pickle: bool = False, mmap: bool = False) -> dict:
    """``torch.load`` a checkpoint safely; ``allow_pickle=True`` opts into arbitrary pickles.

    ``mmap=True`` memory-maps a zip-format file instead of reading it: tensors are paged in from
    disk as they are used (legacy pickle files cannot be mapped and are read).  A model directory
    (``config.json`` + safetensors, ``models/model_dir.py``) is read without pickle, always mapped; a
    sharded checkpoint directory (FSDP2, ``models/sharded_checkpoint.py``) is read whole, not mapped.
    """
    if os.path.isdir(path):
        from .sharded_checkpoint import consolidate, is_sharded_checkpoint

        if is_sharded_checkpoint(path):  # an FSDP2 run's checkpoint directory: its shards put together
            return consolidate(path)
        from .model_dir import load_model_dir

        return load_model_dir(path)
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


def rename_legacy_keys(state_dict: Dict[str, torch.Tensor]):
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
        raise CheckpointMismatchError(  # new_size is the patch grid's side: the image size is the setting to raise
            f"cannot shrink an image rel-pos table from {src_side}x{src_side} to {dst_side}x{dst_side}: the "
            f"checkpoint was trained on a grid of {(src_side + 1) // 2}x{(src_side + 1) // 2} patches, this model "
            f"cuts images into {new_size}x{new_size}; use images at least as large (patch_image_size)")
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
