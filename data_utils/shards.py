"""WebDataset tar shards as training data: shard lists, their sizes, the split over ranks and loader
workers, and reading one shard's samples with an exact count (``docs/DATA.md``, "WebDataset shards").

A sample is the members of a tar that share a key (img2dataset's layout: ``000000012.jpg``,
``000000012.txt``, ``000000012.json``); keys and grouping are webdataset's (``tar_file_expander``,
``group_by_keys``).  Shard lists are brace patterns (``shards/{00000..00099}.tar``; several joined by
``::``, webdataset's separator).

**Split** (one epoch): the shards are put in the epoch's order (a permutation drawn from (seed, epoch)
in training, the listed order otherwise).  Rank r of R takes the shards at positions p = r (mod R) of
that order; its loader worker w of W takes the rank's shards at positions q = w (mod W).  Every sample
is read once per epoch and none is dropped.  The remainder: each worker's last batch holds what is left
of its samples (fewer than the batch size), and a rank whose shards give fewer batches than another's
ends the epoch with empty batches (fairseq runs its dummy batch in their place, outside the metrics),
so every rank takes the same number of steps.

**Sizes.** Those counts need every shard's sample count before the epoch starts: from ``sizes.json``
beside the shards (``{"00000.tar": 1000, ...}``, open_clip's file, written by ``tsv_to_shards``), from
img2dataset's ``<shard>_stats.json`` (``successes``), else by reading the tar headers.  A shard that
ends early (truncated) gives placeholders for its missing samples, which are skipped and counted like
bad rows, so the counts, and the ranks' steps, hold whatever the files contain.
"""
import json
import logging
import math
import os
import re
import tarfile
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

logger = logging.getLogger(__name__)

SIZES_FILE = "sizes.json"
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skipped metadata members


def is_shard_spec(spec: Optional[str]) -> bool:
    """Does ``task.data`` name tar shards (every ``::`` part ends in ``.tar``, braces allowed)?"""
    if not spec:
        return False
    parts = [p.strip() for p in str(spec).split("::") if p.strip()]
    return bool(parts) and all(p.endswith(".tar") for p in parts)


def expand_shards(spec: str) -> List[str]:
    """``"a/{00000..00002}.tar::b/x.tar"`` -> the shard URLs, in order (webdataset's brace expansion)."""
    urls = [u for u in expand_urls(spec.strip()) if u]
    if not urls:
        raise ValueError(f"no shards in {spec!r}")
    bad = [u for u in urls if not u.endswith(".tar")]
    if bad:
        raise ValueError(f"{spec!r}: {bad[0]!r} is not a .tar shard (a shard list names .tar files only)")
    dup = sorted({u for u in urls if urls.count(u) > 1})
    if dup:
        raise ValueError(f"{spec!r} names the shard {dup[0]} more than once")
    return urls


def is_local(url: str) -> bool:
    return url.startswith("file:") or ("://" not in url and not url.startswith("pipe:"))


def local_path(url: str) -> str:
    return re.sub(r"^file:(//)?", "", url)


@dataclass(frozen=True)
class ShardList:
    """The shards of one split, their sample counts and where the counts come from."""

    spec: str
    urls: Tuple[str, ...]
    sizes: Tuple[int, ...]
    sizes_from: str  # for the logs: which files gave the counts

    @classmethod
    def from_spec(cls, spec: str, sizes_file: Optional[str] = None) -> "ShardList":
        urls = expand_shards(spec)
        for url in urls:
            if is_local(url) and not os.path.isfile(local_path(url)):
                raise FileNotFoundError(f"shard not found: {local_path(url)} (from {spec!r})")
        sizes, sources = shard_sizes(urls, sizes_file)
        return cls(spec, tuple(urls), tuple(sizes), ", ".join(sorted(set(sources))))

    @property
    def total(self) -> int:
        return int(sum(self.sizes))

    @property
    def offsets(self) -> np.ndarray:
        """Global index of each shard's first sample (the listed order), so a sample's index never
        depends on the split; the masks are seeded by it."""
        return np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)


def shard_sizes(urls: Sequence[str], sizes_file: Optional[str] = None) -> Tuple[List[int], List[str]]:
    """Sample count of each shard and the source of each count (``sizes_file``, a ``sizes.json`` beside
    the shard, img2dataset's ``<shard>_stats.json``, else the tar headers of a local shard)."""
    explicit = _read_sizes(sizes_file) if sizes_file else {}
    beside: Dict[str, Dict[str, int]] = {}
    sizes, sources = [], []
    for url in urls:
        name = os.path.basename(url)
        if url in explicit or name in explicit:
            sizes.append(explicit.get(url, explicit.get(name)))
            sources.append(sizes_file)
            continue
        if not is_local(url):
            raise ValueError(f"shard {url}: its sample count is unknown; name a JSON file of counts "
                             f"{{shard name: samples}} with task.shard_sizes")
        path = local_path(url)
        folder = os.path.dirname(os.path.abspath(path))
        if folder not in beside:
            candidate = os.path.join(folder, SIZES_FILE)
            beside[folder] = _read_sizes(candidate) if os.path.isfile(candidate) else {}
        if name in beside[folder]:
            sizes.append(beside[folder][name])
            sources.append(os.path.join(folder, SIZES_FILE))
            continue
        stats = os.path.splitext(path)[0] + "_stats.json"
        if os.path.isfile(stats):
            sizes.append(_img2dataset_count(stats))
            sources.append("img2dataset's _stats.json")
            continue
        sizes.append(count_samples(path))
        sources.append("tar headers")
    return sizes, sources


def _read_sizes(path: str) -> Dict[str, int]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"shard sizes file not found: {path}") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a JSON file of shard sizes ({err})") from None
    if not isinstance(data, dict) or not all(isinstance(v, int) and v >= 0 for v in data.values()):
        raise ValueError(f"{path}: expected {{shard name: sample count >= 0}}")
    return data


def _img2dataset_count(path: str) -> int:
    try:
        with open(path, encoding="utf-8") as fh:
            count = json.load(fh)["successes"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not img2dataset's shard stats (no 'successes' count: {err})") from None
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"{path}: 'successes' must be a count, got {count!r}")
    return count


def count_samples(path: str) -> int:
    """Samples in a local tar, from its headers alone (data is seeked over), grouped as webdataset groups
    them.  A tar unreadable from some point on counts the samples before it (logged)."""
    count, last = 0, None
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.isreg() or _META.match(info.name):
                    continue
                prefix, _ = base_plus_ext(info.name)
                if prefix is not None and prefix != last:
                    count, last = count + 1, prefix
    except (tarfile.TarError, OSError, EOFError) as err:
        logger.warning("shard %s: unreadable after %d samples (%s); counted as %d samples", path, count, err, count)
    return count


# ---- the split ------------------------------------------------------------------------------------------
def epoch_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> List[int]:
    """Shard positions in this epoch's order: the same on every rank (drawn from seed and epoch alone)."""
    if not shuffle:
        return list(range(num_shards))
    return [int(i) for i in np.random.default_rng([seed, epoch]).permutation(num_shards)]


def worker_shards(order: Sequence[int], rank: int, world_size: int, worker: int, num_workers: int) -> List[int]:
    """The shards of loader worker ``worker`` of rank ``rank``: positions = rank (mod world), then = worker
    (mod workers) among the rank's."""
    return list(order[rank::world_size][worker::num_workers])


def split_epoch(order: Sequence[int], world_size: int, num_workers: int) -> List[List[List[int]]]:
    """The shards of every (rank, worker) in an epoch of this order."""
    return [[worker_shards(order, r, world_size, w, num_workers) for w in range(num_workers)]
            for r in range(world_size)]


def batch_counts(sizes: Sequence[int], split: Sequence[Sequence[Sequence[int]]], batch_size: int) -> List[List[int]]:
    """Batches of every (rank, worker) of a split: each worker batches its own samples, its last batch
    holding the remainder."""
    return [[math.ceil(sum(sizes[i] for i in shards) / batch_size) for shards in rank] for rank in split]


def round_robin(counts: Sequence[int]) -> List[int]:
    """The worker of each batch, in the order a ``torch.utils.data.DataLoader`` over an iterable dataset
    hands them out: worker 0, 1, ..., W-1, 0, ...; a worker out of batches drops out of the cycle."""
    return [w for k in range(max(counts, default=0)) for w, n in enumerate(counts) if k < n]


def consumed_batches(counts: Sequence[int], iterations: int) -> List[int]:
    """Batches each worker had delivered once ``iterations`` batches were taken from the loader."""
    done = [0] * len(counts)
    for w in round_robin(counts)[:iterations]:
        done[w] += 1
    return done


# ---- reading ------------------------------------------------------------------------------------------
class ShardSizeError(ValueError):
    """A shard holds more samples than its recorded size: the epoch's counts would be wrong on every rank."""


class MissingSample:
    """The place of a sample a shard should hold but does not (truncated or unreadable tar)."""

    __slots__ = ("url", "reason")

    def __init__(self, url: str, reason: str):
        self.url, self.reason = url, reason


def read_shard(url: str, expected: int, first_index: int = 0) -> Iterator[object]:
    """The samples of one shard as webdataset's dicts (``__key__``, ``__url__``, one entry per member
    suffix) plus ``__index__`` (``first_index`` + position), then one :class:`MissingSample` per sample
    short of ``expected`` (the shard is logged once).  More samples than ``expected``: ShardSizeError."""
    errors: List[BaseException] = []

    def stop(exn):  # a tar stream cannot be resynchronised after an error: end the shard there
        errors.append(exn)
        return False

    count = 0
    try:
        stream = gopen(local_path(url) if is_local(url) else url, "rb")
        try:
            files = tar_file_expander([{"url": url, "stream": stream}], handler=stop)
            for sample in group_by_keys(files, handler=stop):
                if count == expected:
                    raise ShardSizeError(f"shard {url} holds more than the {expected} samples its size says; "
                                         "rewrite the sizes file (or remove it to count the tar)")
                sample["__index__"] = first_index + count
                count += 1
                yield sample
        finally:
            stream.close()
    except ShardSizeError:
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError) as err:
        errors.append(err)
    if count < expected:
        cause = f": {_message(errors[0])}" if errors else ""
        reason = f"shard ends after {count} of its {expected} samples{cause}"
        logger.warning("shard %s: %s; the %d missing samples are skipped", url, reason, expected - count)
        for _ in range(expected - count):
            yield MissingSample(url, reason)
    elif errors:  # e.g. a truncated last member of the last sample: that sample fails to decode
        logger.warning("shard %s: read error after its %d samples (%s)", url, count, _message(errors[0]))


def _message(err: BaseException) -> str:
    """An error's first argument without the `` @ <stream>`` webdataset appends."""
    text = str(err.args[0]) if err.args else type(err).__name__
    return text.split(" @ ")[0] or type(err).__name__
