"""Checks the search tools make when they start, before any file is hashed, read or created: a
mistake is one ValueError naming the option or path and the value (printed as ``TOOL: error: ...``)."""
import math
import os
from typing import Optional, Sequence

from ..models.checkpoint_io import is_checkpoint
from .scan import normalise_root
from .store import DB_NAME, IndexStore

INDEX_LEFTOVERS = {"lock"}  # what an earlier failed start may leave in a new index directory


def at_least(option: str, value, low: int = 1) -> None:
    if value is not None and value < low:
        raise ValueError(f"{option} must be at least {low}, got {value}")


def check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535, got {port}")


def check_upload_mb(mb: float) -> None:
    if not (math.isfinite(mb) and mb > 0):
        raise ValueError(f"--max-upload-mb must be a number of megabytes above 0, got {mb:g}")


def check_index_arguments(index: str, roots: Sequence[str], checkpoint: Optional[str]) -> None:
    """Before ``one-peace-index`` creates or changes anything.

    A new index (no ``index.sqlite`` yet) needs folders that exist, a checkpoint that exists and a
    directory that is absent or empty: a swapped ``FOLDER INDEX_DIR`` would otherwise write the index
    into the photo folder.  An existing index refuses added folders that do not exist (a recorded
    folder may be missing, e.g. unmounted: its files are kept)."""
    index = normalise_root(index)
    if os.path.exists(index) and not os.path.isdir(index):
        raise ValueError(f"index path {index} is a file, not an index directory")
    roots = [normalise_root(r) for r in roots]
    if os.path.isfile(os.path.join(index, DB_NAME)):
        store = IndexStore(index)
        try:
            recorded = set(store.roots())
        finally:
            store.close()
        _check_exist([r for r in roots if r not in recorded], "")
        return
    usage = "(usage: one-peace-index INDEX_DIR FOLDER [FOLDER ...] --checkpoint CHECKPOINT)"
    if os.path.isdir(index):
        extra = sorted(set(os.listdir(index)) - INDEX_LEFTOVERS)
        if extra:
            raise ValueError(f"{index} is not an index (no {DB_NAME}) and not empty (it holds {', '.join(extra[:3])}"
                             f"{', ...' if len(extra) > 3 else ''}): a new index needs an absent or empty directory; "
                             f"is the order of the arguments swapped? {usage}")
    if not roots:
        raise ValueError(f"{index} is a new index: name the folders to index {usage}")
    _check_exist(roots, " (nothing was created)")
    if checkpoint is None:
        raise ValueError(f"{index} is a new index: --checkpoint is required {usage}")
    if not is_checkpoint(checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {os.path.abspath(os.path.expanduser(checkpoint))}")


def _check_exist(roots: Sequence[str], note: str) -> None:
    missing = [r for r in roots if not os.path.exists(r)]
    if missing:
        raise FileNotFoundError(f"folder to index not found: {', '.join(missing)}{note}")
