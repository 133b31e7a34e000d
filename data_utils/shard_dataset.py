"""The samples of tar shards through a TSV dataset's own row processing (``load_item``, bad-sample rule,
collater): one code path for TSV rows and shard samples.

A shard sample becomes a row of the TSV layout: in the id column the id of its ``.json`` member (the
original row's, as ``tsv_to_shards`` writes it) or else its key, its ``.txt`` member in the text column and
its media member (the first of the modality's extensions it has) in the media column,
as a file in a RAM folder (``/dev/shm`` where there is one; ``member_files.py``), so the media decoders, their checks and
their errors are the TSV path's (errors name the member, ``shard.tar/key.jpg``, not the scratch file).

Per worker: the worker's shards (``shards.worker_shards``) -> raw samples with exact counts
(``shards.read_shard``) -> a shuffle buffer of raw samples (webdataset's ``shuffle``, seeded by seed,
epoch, rank and worker) -> the first ``skip`` samples dropped undecoded (a resumed epoch) -> decoding.
A bad sample or a missing one (truncated tar) is a ``None`` item: the collater drops and counts it
(``num_skipped``), as for TSV rows, so batches keep their places and the epoch its length.
"""
import contextlib
import itertools
import json
import random
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from webdataset.filters import shuffle

from .dataset import BadSampleError, has_rows
from .member_files import member_file
from .shards import MissingSample, ShardList, batch_counts, epoch_order, read_shard, split_epoch


@dataclass(frozen=True)
class SampleFields:
    """Which row columns a shard sample fills: the key's, the media member's and the ``.txt`` member's."""

    key: str
    media: str
    text: str
    extensions: Tuple[str, ...]  # member suffixes of the media, lower case without the dot; first found wins


class ShardRows:
    """Stands in for the ``TSVReader`` of a dataset built on shards: media cells are scratch files (absolute
    paths, resolved to themselves)."""

    def __init__(self, shards: ShardList, columns):
        self.path = shards.spec
        self.columns = list(columns)
        self._len = shards.total

    def __len__(self) -> int:
        return self._len

    def resolve(self, value: str) -> str:
        return value


@dataclass
class LoaderLayout:
    """How one rank's loader reads an epoch: the batch size, the ranks and the loader workers (W >= 1;
    no worker processes count as one)."""

    batch_size: int
    rank: int = 0
    world_size: int = 1
    num_workers: int = 1
    shuffle: bool = True
    skip: List[int] = field(default_factory=list)  # samples each worker drops undecoded (a resumed epoch)


class ShardDataset(torch.utils.data.IterableDataset):
    """An iterable dataset over tar shards whose items are ``processor``'s (a ``TSVDataset`` built on
    :class:`ShardRows`).  Set :attr:`layout` (``configure``) before iterating."""

    def __init__(self, processor, shards: ShardList, fields: SampleFields, seed: int = 1, shuffle_buffer: int = 1000):
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.processor = processor
        self.shards = shards
        self.fields = fields
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.split = processor.split
        self.epoch = 1
        self.layout: Optional[LoaderLayout] = None

    def __len__(self) -> int:
        return self.shards.total

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.processor.set_epoch(epoch)

    def configure(self, epoch: int, layout: LoaderLayout) -> None:
        """The epoch and the split the next iterator reads (worker processes copy them when they start)."""
        self.set_epoch(epoch)
        self.layout = layout

    def shards_of(self, epoch: int, layout: LoaderLayout) -> List[List[List[int]]]:
        """Shards of every (rank, worker) in ``epoch`` (``shards.split_epoch``)."""
        order = epoch_order(len(self.shards.urls), self.seed, epoch, layout.shuffle)
        return split_epoch(order, layout.world_size, layout.num_workers)

    def batch_counts(self, epoch: int, layout: LoaderLayout) -> List[List[int]]:
        """Batches of every (rank, worker) in ``epoch``."""
        return batch_counts(self.shards.sizes, self.shards_of(epoch, layout), layout.batch_size)

    # ---- one worker's stream ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Optional[Dict[str, Any]]]:
        if self.layout is None:
            raise RuntimeError("ShardDataset.configure(layout) must be called before iterating")
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        skip = self.layout.skip[worker] if self.layout.skip else 0
        chosen = self.shards_of(self.epoch, self.layout)[self.layout.rank][worker]
        if skip >= sum(self.shards.sizes[i] for i in chosen):
            return iter(())  # every sample of this worker was consumed before the restart
        return (self.decode(sample) for sample in itertools.islice(self.raw_samples(chosen, worker), skip, None))

    def raw_samples(self, chosen: List[int], worker: int) -> Iterator[object]:
        """The undecoded samples of the shards ``chosen`` for ``worker``, in this epoch's order (shuffled
        through the buffer in training)."""
        layout = self.layout
        offsets = self.shards.offsets
        raw = itertools.chain.from_iterable(
            read_shard(self.shards.urls[i], self.shards.sizes[i], int(offsets[i])) for i in chosen)
        if layout.shuffle and self.shuffle_buffer > 1:
            rng = random.Random(f"{self.seed}/{self.epoch}/{layout.rank}/{worker}")
            raw = shuffle(bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(raw)
        return raw

    def decode(self, sample) -> Optional[Dict[str, Any]]:
        """A raw sample -> the processor's item (``__key__`` added), or None where it is bad or missing."""
        processor = self.processor
        if isinstance(sample, MissingSample):  # logged once per shard by read_shard
            if not processor.skip_bad_samples:
                raise BadSampleError(sample.url, "a missing sample", sample.reason)
            processor.num_skipped += 1
            return None
        key, url, index = sample["__key__"], sample["__url__"], sample["__index__"]

        def load():
            with self.as_row(sample) as row:
                return processor.load_item(index, row)

        item = processor.guarded(index, load, url, f"sample {key!r}")
        if item is not None:
            item["__key__"] = key
        return item

    @contextlib.contextmanager
    def as_row(self, sample) -> Iterator[Dict[str, str]]:
        """The sample as a row of the TSV layout, its media member in a scratch file while the row is used."""
        fields = self.fields
        members = sorted(k for k in sample if not k.startswith("__"))
        ext = next((e for e in fields.extensions if e in sample), None)
        if ext is None:
            raise KeyError(f"no {fields.media} member (.{', .'.join(fields.extensions)}); members: "
                           f"{', '.join(members) or 'none'}")
        if "txt" not in sample:
            raise KeyError(f"no .txt member (the {fields.text}); members: {', '.join(members)}")
        try:
            text = sample["txt"].decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"member {sample['__key__']}.txt is not UTF-8 ({err})") from None
        ident = sample["__key__"]
        if "json" in sample:  # the original row's fields (tsv_to_shards): its own id
            try:
                meta = json.loads(sample["json"])
            except ValueError as err:
                raise ValueError(f"member {sample['__key__']}.json is not JSON ({err})") from None
            if isinstance(meta, dict) and meta.get(fields.key) not in (None, ""):
                ident = str(meta[fields.key])
        with member_file(sample[ext], f"{sample['__url__']}/{sample['__key__']}.{ext}") as path:
            yield {fields.key: ident, fields.text: text, fields.media: path}

    def collater(self, samples: List[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
        """The processor's batch, plus ``keys``: the sample keys of its rows, in order."""
        batch = self.processor.collater(samples)
        if has_rows(batch):
            batch["keys"] = [s["__key__"] for s in samples if s is not None]
        return batch
