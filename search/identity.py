"""Which checkpoint built an index: its size and the SHA-256 of the whole file.

Hashing a 4B checkpoint (8 GB) takes seconds to minutes, so digests are cached in
``$ONE_PEACE_CACHE/checkpoint_sha256.json`` (default ``~/.cache/one_peace``) by (real path, size,
mtime_ns, inode): a file that was rewritten, replaced or touched is hashed again.

Indexes built before the whole-file hash recorded the hash of the first 16 MiB only
(``hashed_bytes`` < ``size``).  They are still accepted when that prefix and the size match, with a
warning that the record is partial (only a new index records the whole file).
"""
import hashlib
import json
import logging
import os
import tempfile
from typing import Dict, Optional

from ..data_utils.bpe_files import ENV_CACHE
from ..hub.onnx_runtime import checkpoint_identity as directory_identity
from ..models.checkpoint_io import is_checkpoint

logger = logging.getLogger("one_peace.search")

LEGACY_HASH_BYTES = 16 << 20  # what indexes of earlier versions hashed
IDENTITY_KEYS = ("size", "hashed_bytes", "sha256")
CACHE_NAME = "checkpoint_sha256.json"
CACHE_ENTRIES = 64  # most recently hashed files kept
_warned_partial = set()


class CheckpointMismatch(ValueError):
    """An index used with another checkpoint than the one that built it."""


def cache_path() -> str:
    root = os.environ.get(ENV_CACHE) or os.path.join("~", ".cache", "one_peace")
    return os.path.join(os.path.expanduser(root), CACHE_NAME)


def file_sha256(path: str, limit: Optional[int] = None) -> str:
    """SHA-256 of the file, or of its first ``limit`` bytes."""
    digest, left = hashlib.sha256(), limit
    with open(path, "rb") as fh:
        while left is None or left > 0:
            chunk = fh.read(8 << 20 if left is None else min(left, 8 << 20))
            if not chunk:
                break
            digest.update(chunk)
            if left is not None:
                left -= len(chunk)
    return digest.hexdigest()


def _stamp(st: os.stat_result) -> list:
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _read_cache() -> Dict:
    try:
        with open(cache_path()) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # absent, unreadable or corrupt: only a cache


def _write_cache(cache: Dict) -> None:
    path = cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".checkpoint_sha256.", dir=os.path.dirname(path))
        with os.fdopen(fd, "w") as fh:
            json.dump(cache, fh, indent=0)
        os.replace(tmp, path)  # readers never see half a file; concurrent writers: the last one wins
    except OSError as exc:
        logger.debug("cannot write the checkpoint hash cache %s: %s", path, exc)


def whole_file_sha256(path: str) -> str:
    """SHA-256 of the whole file, from the cache when its real path, size, mtime and inode match."""
    real = os.path.realpath(path)
    stamp = _stamp(os.stat(real))
    cache = _read_cache()
    entry = cache.get(real)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = file_sha256(real)
    if _stamp(os.stat(real)) == stamp:  # not cached when the file changed while being read
        cache.pop(real, None)
        cache[real] = {"stamp": stamp, "sha256": digest}
        _write_cache(dict(list(cache.items())[-CACHE_ENTRIES:]))
    return digest


def _checkpoint_path(path: str) -> str:
    path = os.path.abspath(os.path.expanduser(path))
    if not is_checkpoint(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def _size_and_digest(path: str):
    """(bytes, SHA-256) of a file (cached), or of a model directory by the rule the ONNX export records
    (``hub/onnx_runtime.py:checkpoint_identity``: its files' sizes summed, the digest of their digests)."""
    if os.path.isdir(path):
        identity = directory_identity(path)
        return identity["size"], identity["sha256"]
    return os.path.getsize(path), whole_file_sha256(path)


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
                 "sha256": file_sha256(path, recorded["hashed_bytes"]) if size == recorded["size"] else "-"}
    else:
        given = {"checkpoint": path, "size": size, "hashed_bytes": size,
                 "sha256": whole_file_sha256(path) if size == recorded["size"] else "-"}
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
