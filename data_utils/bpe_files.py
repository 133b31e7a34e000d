"""Locating and fetching the GPT-2 BPE files (encoder.json, vocab.bpe, dict.txt).

The files are not shipped with the package: they are fairseq's published gpt2 BPE files,
verified by sha256 so a truncated or tampered download is never used.
"""
import hashlib
import logging
import os
import tempfile
import urllib.request
from typing import Dict, Iterable, Optional, Sequence, Union

BPE_FILES = ("encoder.json", "vocab.bpe", "dict.txt")
DEFAULT_BASE_URL = "https://dl.fbaipublicfiles.com/fairseq/gpt2_bpe/"
# sha256 of the files fairseq publishes at DEFAULT_BASE_URL.
BPE_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "dict.txt": "2c31c5b236661067fe8626775eb995ef5fe808ac87d2ad4a6ddbef68550f5cc6",
}
logger = logging.getLogger(__name__)
ENV_BPE_DIR = "ONE_PEACE_BPE_DIR"
ENV_CACHE = "ONE_PEACE_CACHE"
FETCH_HINT = "python -m one_peace.data_utils.bpe fetch [--dest DIR]"


class ChecksumError(ValueError):
    """A downloaded BPE file does not have the published sha256."""


def default_cache_dir() -> str:
    root = os.environ.get(ENV_CACHE) or os.path.join("~", ".cache", "one_peace")
    return os.path.join(os.path.expanduser(root), "bpe")


def missing_bpe_files(directory: str):
    return [f for f in BPE_FILES if not os.path.isfile(os.path.join(directory, f))]


def saved_bpe_dir_or_none(saved: Optional[str], source: str = "checkpoint") -> Optional[str]:
    """A BPE directory recorded in a checkpoint's config, or None when it lacks the files.

    Saved paths are often relative to the trainer's machine (official configs say
    ``../../utils/BPE``); unlike a directory the user gives, a missing one falls back to
    ``$ONE_PEACE_BPE_DIR`` / the cache, and the fallback is logged.
    """
    if saved and missing_bpe_files(os.path.expanduser(saved)):
        logger.info("the %s's bpe_dir %s lacks the BPE files; using $%s or the cache", source, saved, ENV_BPE_DIR)
        return None
    return saved


def resolve_bpe_dir(bpe_dir: Optional[str] = None) -> str:
    """The directory holding the BPE files: ``bpe_dir``, else ``$ONE_PEACE_BPE_DIR``, else the cache.

    The first candidate that is given is the one used; if it lacks files a FileNotFoundError
    names the directory, the missing files and how to fetch them.
    """
    if bpe_dir:
        directory, origin = bpe_dir, "bpe_dir argument"
    elif os.environ.get(ENV_BPE_DIR):
        directory, origin = os.environ[ENV_BPE_DIR], f"${ENV_BPE_DIR}"
    else:
        directory, origin = default_cache_dir(), f"default cache (root ${ENV_CACHE} or ~/.cache/one_peace)"
    directory = os.path.expanduser(directory)
    missing = missing_bpe_files(directory)
    if missing:
        raise FileNotFoundError(
            f"BPE directory {directory} (from {origin}) is missing {', '.join(missing)}. "
            f"Fetch the files with `{FETCH_HINT}` (fills the cache, or DIR), or point "
            f"${ENV_BPE_DIR} / --bpe-dir at a directory holding {', '.join(BPE_FILES)}.")
    return directory


def sha256_of(path: str, limit: Optional[int] = None) -> str:
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


def _candidate_urls(name: str, base_urls) -> Sequence[str]:
    if base_urls is None:
        base_urls = [DEFAULT_BASE_URL]
    elif isinstance(base_urls, str):
        base_urls = [base_urls]
    if isinstance(base_urls, dict):
        return [base_urls[name]]
    # A base ending in the file name is taken as the file's own URL.
    return [b if b.endswith("/" + name) else b.rstrip("/") + "/" + name for b in base_urls]


def _download_verified(name: str, urls: Iterable[str], dest_dir: str, timeout: float) -> str:
    """Download ``name`` from the first working url into dest_dir (atomic rename after sha256 check)."""
    errors = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest_dir)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
            got = sha256_of(tmp)
            if got != BPE_SHA256[name]:
                raise ChecksumError(f"{name} from {url} has sha256 {got}, expected {BPE_SHA256[name]}; "
                                    "refusing to use it (corrupt download or not fairseq's gpt2 BPE file)")
            final = os.path.join(dest_dir, name)
            os.replace(tmp, final)
            return final
        except ChecksumError:
            raise
        except OSError as exc:  # URLError is an OSError: try the next mirror
            errors.append(f"{url}: {exc}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise OSError(f"could not download {name}: " + "; ".join(errors))


def fetch_bpe_files(dest_dir: Optional[str] = None,
                    base_urls: Union[None, str, Sequence[str], Dict[str, str]] = None,
                    timeout: float = 60.0) -> str:
    """Download encoder.json, vocab.bpe and dict.txt into ``dest_dir`` (default: the cache).

    ``base_urls``: a base URL, a list of mirrors tried in order, or {file name: url}.
    Files already present with the right sha256 are kept; returns the directory.
    """
    dest_dir = os.path.expanduser(dest_dir or default_cache_dir())
    os.makedirs(dest_dir, exist_ok=True)
    for name in BPE_FILES:
        path = os.path.join(dest_dir, name)
        if os.path.isfile(path) and sha256_of(path) == BPE_SHA256[name]:
            continue
        _download_verified(name, _candidate_urls(name, base_urls), dest_dir, timeout)
    return dest_dir


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m one_peace.data_utils.bpe",
                                     description="Manage the GPT-2 BPE files ONE-PEACE needs.")
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download and verify encoder.json, vocab.bpe, dict.txt")
    fetch.add_argument("--dest", default=None, help=f"target directory (default: {default_cache_dir()})")
    fetch.add_argument("--base-url", action="append", default=None,
                       help=f"base URL to download from (repeatable; default {DEFAULT_BASE_URL})")
    sub.add_parser("where", help="print the directory the BPE files are read from")
    args = parser.parse_args(argv)
    try:
        print(fetch_bpe_files(args.dest, args.base_url) if args.command == "fetch" else resolve_bpe_dir())
    except (OSError, ValueError) as exc:  # missing files, network failure, checksum mismatch
        parser.exit(1, f"error: {exc}\n")
    return 0
