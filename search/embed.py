"""The checkpoint side of an index: its identity, loading the hub, embedding batches of items.

A batch that fails to decode is split so that one bad file costs only itself: each item is
prepared alone, the failures are reported with their reason, and the rest is embedded as a batch.
"""
import hashlib
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

logger = logging.getLogger(__name__)

HASH_BYTES = 16 << 20  # sha256 of the first 16 MiB (the whole file if smaller) + its size
IDENTITY_KEYS = ("size", "hashed_bytes", "sha256")


class CheckpointMismatch(ValueError):
    """An index used with another checkpoint than the one that built it."""


def checkpoint_identity(path: str, hash_bytes: int = HASH_BYTES) -> Dict:
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    size = os.path.getsize(path)
    digest, left = hashlib.sha256(), min(size, hash_bytes)
    with open(path, "rb") as fh:
        while left > 0:
            chunk = fh.read(min(left, 1 << 20))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return {"checkpoint": path, "size": size, "hashed_bytes": min(size, hash_bytes), "sha256": digest.hexdigest()}


def describe(identity: Dict) -> str:
    return (f"{identity['checkpoint']} ({identity['size']} bytes, sha256 {identity['sha256'][:16]} of the first "
            f"{identity['hashed_bytes']} bytes)")


def check_same_checkpoint(recorded: Dict, given: Dict, index_dir: str) -> None:
    """Refuse ``given`` unless it is the file (same size and hash; it may have moved) that built the index."""
    if any(recorded.get(k) != given.get(k) for k in IDENTITY_KEYS):
        raise CheckpointMismatch(
            f"index {index_dir} was built with checkpoint {describe(recorded)}; refusing checkpoint "
            f"{describe(given)}: its embeddings live in another space. Use the original checkpoint or build "
            "a new index directory.")


def checkpoint_modalities(path: str) -> List[str]:
    """The modality branches a checkpoint has weights for (memory-mapped: no tensor is read)."""
    from ..hub.loading import modalities_in as _modalities_in
    from ..models.checkpoint import load_checkpoint_file

    return _modalities_in(load_checkpoint_file(path, mmap=True)["model"])


def branches_for(checkpoint_has: Sequence[str], wanted: Sequence[str]) -> Tuple[str, ...]:
    """Branches to build: the checkpoint's, plus video (started from the image branch, deterministic:
    copies and zeros, ``models/video.py``) when wanted and the checkpoint has images but no video.

    Video-specific on purpose: it is what the video modality's registry hook (``Modality.upgrade`` =
    ``init_video_from_image``) does, and the registry does not say which branch a hook derives from.
    Any other absent branch would start from random weights, useless for an index, so it is not built
    (its files fail with "the checkpoint has no ... branch")."""
    out = list(checkpoint_has)
    if "video" in wanted and "video" not in out and "image" in out:
        out.append("video")
    return tuple(out)


def load_hub(checkpoint: str, model_type: str, dtype: str, device: Optional[str], bpe_dir: Optional[str],
             modalities: Sequence[str]):
    from ..hub import from_pretrained

    if model_type not in ("one_peace_retrieval", "one_peace_pretrain"):
        raise ValueError(f"--model-type must be an embedding model (one_peace_retrieval or one_peace_pretrain), "
                         f"got {model_type!r}")
    hub = from_pretrained(checkpoint, model_type=model_type, device=device or "cpu", dtype=dtype, bpe_dir=bpe_dir,
                          modalities=tuple(modalities) if model_type == "one_peace_retrieval" else None)
    return hub


def embedding_dim(hub) -> int:
    proj = getattr(hub.model, f"{hub.model.modalities[0]}_proj")
    return int(proj.out_features)


def _normalised(features: torch.Tensor) -> np.ndarray:
    # Re-normalised in float32: a bf16/fp16 hub normalises in its own precision.
    vectors = features.float().cpu().numpy()
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def embed(hub, modality: str, items: Sequence) -> Tuple[np.ndarray, List[int], List[Tuple[int, str]]]:
    """Embed ``items`` (texts, or file paths) of one modality.

    Returns (vectors of the good items (N, D) float32 L2-normalised, their indices in ``items``,
    [(index, reason)] of the items that could not be decoded)."""
    items = list(items)
    try:
        net_input, good, failed = hub.process(modality, items), list(range(len(items))), []
    except Exception:  # noqa: BLE001 - any decoder error: find the culprits one by one
        good, failed = [], []
        for i, item in enumerate(items):
            try:
                hub.process(modality, [item])
                good.append(i)
            except Exception as exc:  # noqa: BLE001 - recorded with its reason, never fatal
                failed.append((i, _reason(exc)))
        if not good:
            return np.zeros((0, 0), np.float32), [], failed
        net_input = hub.process(modality, [items[i] for i in good])
    vectors = _normalised(hub.extract_features(modality, **net_input))
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        failed += [(good[j], "non-finite embedding") for j in np.flatnonzero(~finite)]
        vectors, good = vectors[finite], [g for g, ok in zip(good, finite) if ok]
    return vectors, good, sorted(failed)


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500]
