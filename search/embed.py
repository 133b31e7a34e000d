"""The checkpoint side of an index: its BPE folder, loading the hub, embedding batches of items
(its identity: ``identity.py``).

A batch that fails to decode is split so that one bad file costs only itself: each item is
prepared alone, the failures are reported with their reason, and the rest is embedded as a batch.
"""
import logging
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data_utils.bpe_files import BPE_FILES, ENV_BPE_DIR, missing_bpe_files

logger = logging.getLogger(__name__)


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


def bpe_dir_for(given: Optional[str], recorded: Optional[str], index_dir: str) -> Optional[str]:
    """The BPE folder to tokenise with: ``--bpe-dir``, else the index's recorded one; when the recorded
    folder lost its files, ``$ONE_PEACE_BPE_DIR`` (with a warning), else an error naming both."""
    if given:
        given = os.path.abspath(os.path.expanduser(given))
        missing = missing_bpe_files(given)
        if missing:
            raise FileNotFoundError(f"--bpe-dir {given} lacks {', '.join(missing)} (a BPE folder holds "
                                    f"{', '.join(BPE_FILES)})")
        return given
    if not recorded or not missing_bpe_files(recorded):
        return recorded
    env = os.environ.get(ENV_BPE_DIR)
    if env and not missing_bpe_files(os.path.expanduser(env)):
        logger.warning("the BPE folder %s recorded by index %s lacks %s: using $%s=%s", recorded, index_dir,
                       ", ".join(missing_bpe_files(recorded)), ENV_BPE_DIR, env)
        return os.path.expanduser(env)
    raise FileNotFoundError(
        f"the BPE folder {recorded} recorded by index {index_dir} lacks {', '.join(missing_bpe_files(recorded))}"
        f" and ${ENV_BPE_DIR} " + (f"({env}) lacks files too" if env else "is not set")
        + f": pass --bpe-dir (or set ${ENV_BPE_DIR}) naming a folder with the files that built the index")


def load_hub(checkpoint: str, model_type: str, dtype: str, device: Optional[str], bpe_dir: Optional[str],
             modalities: Sequence[str]):
    from ..hub import from_pretrained
    from ..models.checkpoint_io import CheckpointMismatchError

    if model_type not in ("one_peace_retrieval", "one_peace_pretrain"):
        raise ValueError(f"--model-type must be an embedding model (one_peace_retrieval or one_peace_pretrain), "
                         f"got {model_type!r}")
    try:
        return from_pretrained(checkpoint, model_type=model_type, device=device or "cpu", dtype=dtype,
                               bpe_dir=bpe_dir, modalities=tuple(modalities) if model_type == "one_peace_retrieval"
                               else None)
    except CheckpointMismatchError as exc:
        detail = " ".join(str(exc).split())
        if "embed_tokens" in detail:  # the text embedding has one row per dictionary entry
            where = (f"{os.path.join(bpe_dir, 'dict.txt')}" if bpe_dir else
                     f"dict.txt of the default BPE folder (the checkpoint's, ${ENV_BPE_DIR} or the cache)")
            raise ValueError(f"the BPE dictionary {where} does not fit checkpoint {checkpoint}: pass the "
                             f"--bpe-dir it was trained with ({detail})") from None
        raise ValueError(f"checkpoint {checkpoint} cannot be loaded as {model_type}: {detail}") from None


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
                failed.append((i, failure_reason(exc)))
        if not good:
            return np.zeros((0, 0), np.float32), [], failed
        net_input = hub.process(modality, [items[i] for i in good])
    vectors = _normalised(hub.extract_features(modality, **net_input))
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        failed += [(good[j], "non-finite embedding") for j in np.flatnonzero(~finite)]
        vectors, good = vectors[finite], [g for g, ok in zip(good, finite) if ok]
    return vectors, good, sorted(failed)


def embed_inputs(hub, modality: str, net_input) -> Tuple[np.ndarray, np.ndarray]:
    """Embed prepared ``net_input`` tensors (segments of a long file, a video's sound track): (vectors (N, D)
    float32 L2-normalised, a boolean (N,) of the finite ones)."""
    vectors = _normalised(hub.extract_features(modality, **net_input))
    return vectors, np.isfinite(vectors).all(axis=1)


def failure_reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500]
