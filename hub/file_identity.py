"""Which checkpoint a derived artefact (a search index, an exported ONNX graph) came from: its size and
SHA-256.  One rule for both:

* a checkpoint file: the SHA-256 of the whole file;
* a model directory (``one-peace-convert``): its files' sizes summed, and the SHA-256 of the sorted
  ``relative-name sha256`` lines of its files (hidden files left out).

Hashing a 4B checkpoint (8 GB) takes seconds to minutes, so each file's digest is cached in
``$ONE_PEACE_CACHE/checkpoint_sha256.json`` (default ``~/.cache/one_peace``) by (real path, size, mtime_ns,
inode): a file that was rewritten, replaced or touched is hashed again.
"""
import hashlib
import json
import logging
import os
import tempfile
from typing import Dict

from ..data_utils.bpe_files import ENV_CACHE
from ..data_utils.bpe_files import sha256_of as file_sha256  # whole file, or its first ``limit`` bytes

logger = logging.getLogger(__name__)

CACHE_NAME = "checkpoint_sha256.json"
CACHE_ENTRIES = 64  # most recently hashed files kept


def cache_path() -> str:
    root = os.environ.get(ENV_CACHE) or os.path.join("~", ".cache", "one_peace")
    return os.path.join(os.path.expanduser(root), CACHE_NAME)


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


def checkpoint_identity(path: str) -> Dict:
    """``{path, size, sha256}`` of a checkpoint file or a model directory (the module's rule)."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if os.path.isfile(path):
        return {"path": path, "size": os.path.getsize(path), "sha256": whole_file_sha256(path)}
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    lines, size = [], 0
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            full = os.path.join(root, name)
            size += os.path.getsize(full)
            lines.append(f"{os.path.relpath(full, path)} {whole_file_sha256(full)}\n")
    if not lines:
        raise FileNotFoundError(f"model directory {path} holds no file")
    return {"path": path, "size": size, "sha256": hashlib.sha256("".join(lines).encode()).hexdigest()}


def describe_identity(identity: Dict) -> str:
    return f"{identity.get('path', '?')} ({identity.get('size')} bytes, sha256 {str(identity.get('sha256'))[:16]})"
