"""Which checkpoint built an index: its size and the SHA-256 of the whole file, or of a model directory's
files, by the rule and through the cache of ``hub/file_identity.py`` (which ONNX exports record too).

Indexes built before the whole-file hash recorded the hash of the first 16 MiB only
(``hashed_bytes`` < ``size``).  They are still accepted when that prefix and the size match, with a
warning that the record is partial (only a new index records the whole file).
"""
import logging
import os
from typing import Dict

from ..hub import file_identity
from ..models.checkpoint_io import is_checkpoint

logger = logging.getLogger("one_peace.search")

LEGACY_HASH_BYTES = 16 << 20  # what indexes of earlier versions hashed
IDENTITY_KEYS = ("size", "hashed_bytes", "sha256")
_warned_partial = set()


class CheckpointMismatch(ValueError):
    """An index used with another checkpoint than the one that built it."""


def _checkpoint_path(path: str) -> str:
    path = os.path.abspath(os.path.expanduser(path))
    if not is_checkpoint(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def _size_and_digest(path: str):
    """(bytes, SHA-256) of a file or a model directory (``hub/file_identity.py``)."""
    identity = file_identity.checkpoint_identity(path)
    return identity["size"], identity["sha256"]


def checkpoint_identity(path: str) -> Dict:
    """{checkpoint, size, hashed_bytes (= size), sha256} of the whole file (or model directory)."""
    path = _checkpoint_path(path)
    size, digest = _size_and_digest(path)
    return {"checkpoint": path, "size": size, "hashed_bytes": size, "sha256": digest}


def is_partial(recorded: Dict) -> bool:
    return int(recorded.get("hashed_bytes", 0)) < int(recorded.get("size", 0))


def describe(identity: Dict) -> str:
    what = "of the whole file" if not is_partial(identity) else f"of the first {identity['hashed_bytes']} bytes"
    return f"{identity['checkpoint']} ({identity['size']} bytes, sha256 {identity['sha256'][:16]} {what})"


def verify_checkpoint(recorded: Dict, path: str, index_dir: str) -> Dict:
    """The identity of ``path`` if it is the file (same size and hash; it may have moved) that built
    the index, else :class:`CheckpointMismatch`.  An index with a partial (16 MiB) record is checked on
    that prefix, with a warning; the identity returned keeps the index's record (never upgraded: a
    prefix match does not prove the rest of the file is the same)."""
    path = _checkpoint_path(path)
    if os.path.isdir(path):  # a model directory: no partial records exist for these
        size, digest = _size_and_digest(path)
        given = {"checkpoint": path, "size": size, "hashed_bytes": size, "sha256": digest}
        if any(recorded.get(k) != given.get(k) for k in IDENTITY_KEYS):
            raise CheckpointMismatch(
                f"index {index_dir} was built with checkpoint {describe(recorded)}; refusing checkpoint "
                f"{describe(given)}: its embeddings live in another space. Use the original checkpoint or build "
                "a new index directory.")
        return given
    size = os.path.getsize(path)
    if is_partial(recorded):
        given = {"checkpoint": path, "size": size, "hashed_bytes": min(size, recorded["hashed_bytes"]),
                 "sha256": file_identity.file_sha256(path, recorded["hashed_bytes"]) if size == recorded["size"] else "-"}
    else:
        given = {"checkpoint": path, "size": size, "hashed_bytes": size,
                 "sha256": file_identity.whole_file_sha256(path) if size == recorded["size"] else "-"}
    if any(recorded.get(k) != given.get(k) for k in IDENTITY_KEYS):
        raise CheckpointMismatch(
            f"index {index_dir} was built with checkpoint {describe(recorded)}; refusing checkpoint "
            f"{describe(given) if given['sha256'] != '-' else path + f' ({size} bytes)'}: its embeddings live "
            "in another space. Use the original checkpoint or build a new index directory.")
    if is_partial(recorded) and index_dir not in _warned_partial:
        _warned_partial.add(index_dir)
        logger.warning("index %s records the hash of only the first %d bytes of its checkpoint (built by an "
                       "earlier version): %s matches them, the rest of the file is not verified. Rebuild the "
                       "index in a new directory to record the whole file's hash.",
                       index_dir, recorded["hashed_bytes"], path)
    return given
