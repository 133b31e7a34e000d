"""fairseq's epoch iterator for tar shards (``data_utils/shard_dataset.py:ShardDataset``), resumable mid-epoch.

fairseq's ``StreamingEpochBatchIterator`` saves only the epoch: a restarted run would read the epoch again
from its start.  This one knows every epoch's batches before it starts (the shards' sizes, the split, the
batch size), so:

* every rank takes the same number of steps: a rank out of batches yields empty ones (fairseq's dummy
  batch runs in their place, outside the metrics; ``fairseq_glue/compat.py``);
* ``len()`` is the epoch's length (the progress bar, the lr schedulers' run length);
* ``state_dict()`` saves the batches taken in the epoch (``iterations_in_epoch``, as fairseq's own
  iterator); on resume each loader worker works out how many of its samples were in them (the
  ``DataLoader`` hands batches out round-robin over its workers: ``shards.consumed_batches``) and drops
  them undecoded; the new loader's round-robin starts again at worker 0, so its batches are put back in
  the uninterrupted order.  The resumed run sees the batches an uninterrupted one would, in the same
  order.  The checkpoint saves the split it assumed; resuming with other ranks, workers, batch size or
  shards starts the epoch over (logged).
"""
import collections
import itertools
import logging
from typing import Dict, Optional

import torch
from fairseq.data import iterators

from ..data_utils.shard_dataset import LoaderLayout, ShardDataset
from ..data_utils.shards import consumed_batches, round_robin
from ..fairseq_glue.loader_workers import stop_workers

logger = logging.getLogger(__name__)


class _Sized:
    """An iterable with a known length (fairseq's ``BufferedIterator`` asks for one)."""

    def __init__(self, iterable, length: int):
        self.iterable, self.length = iterable, length

    def __iter__(self):
        return iter(self.iterable)

    def __len__(self) -> int:
        return self.length


class ShardEpochBatchIterator(iterators.EpochBatchIterating):
    def __init__(self, dataset: ShardDataset, batch_size: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, epoch: int = 1, buffer_size: int = 0, keys_file: Optional[str] = None):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.num_workers = num_workers
        self.buffer_size = min(buffer_size, 20)  # fairseq's cap
        self.keys_file = keys_file
        self.epoch = max(epoch, 1)
        self.shuffle = True
        self._cur_epoch_itr = None
        self._next_epoch_itr = None  # a resumed epoch, made by load_state_dict
        if len(dataset.shards.urls) < world_size:
            raise ValueError(f"{dataset.shards.spec}: {len(dataset.shards.urls)} shards for {world_size} ranks; "
                             "every rank needs a shard of its own (write smaller shards)")
        if len(dataset.shards.urls) < world_size * max(num_workers, 1):
            logger.warning("%d shards for %d ranks x %d loader workers: some workers read nothing (more shards "
                           "keep them all busy)", len(dataset.shards.urls), world_size, max(num_workers, 1))

    # ---- the split of an epoch ------------------------------------------------------------------------
    def layout(self, shuffle: bool) -> LoaderLayout:
        return LoaderLayout(self.batch_size, self.rank, self.world_size, max(self.num_workers, 1), shuffle)

    def signature(self) -> Dict[str, object]:
        """What the saved position assumes: the same split and batches."""
        shards = self.dataset.shards
        return {"world_size": self.world_size, "num_workers": max(self.num_workers, 1),
                "batch_size": self.batch_size, "shards": len(shards.urls), "samples": shards.total,
                "seed": self.dataset.seed, "shuffle_buffer": self.dataset.shuffle_buffer}

    def __len__(self) -> int:
        """Batches in the epoch (the same on every rank)."""
        return max(sum(c) for c in self.dataset.batch_counts(self.epoch, self.layout(self.shuffle)))

    @property
    def first_batch(self):
        return "DUMMY"  # reading a batch here would decode samples twice; fairseq takes the next real one

    # ---- fairseq's epoch iterator protocol ------------------------------------------------------------
    @property
    def n(self):
        return self.iterations_in_epoch

    @property
    def next_epoch_idx(self):
        if self._next_epoch_itr is not None:
            return self.epoch
        if self._cur_epoch_itr is not None and self.end_of_epoch():
            return self.epoch + 1
        return self.epoch

    def next_epoch_itr(self, shuffle=True, fix_batches_to_gpus=False, set_dataset_epoch=True):
        self.epoch = self.next_epoch_idx
        if self._next_epoch_itr is not None:
            self._cur_epoch_itr, self._next_epoch_itr = self._next_epoch_itr, None
        else:
            self.shuffle = shuffle
            self._cur_epoch_itr = self._iterator(self.epoch, shuffle, offset=0)
        return self._cur_epoch_itr

    def end_of_epoch(self) -> bool:
        return not self._cur_epoch_itr.has_next()

    @property
    def iterations_in_epoch(self) -> int:
        if self._cur_epoch_itr is not None:
            return self._cur_epoch_itr.n
        if self._next_epoch_itr is not None:
            return self._next_epoch_itr.n
        return 0

    def state_dict(self):
        if self._cur_epoch_itr is not None and self.end_of_epoch():
            epoch, position = self.epoch + 1, 0
        else:
            epoch, position = self.epoch, self.iterations_in_epoch
        return {"version": 2, "epoch": epoch, "iterations_in_epoch": position, "shuffle": self.shuffle,
                "shards": self.signature()}

    def load_state_dict(self, state_dict):
        self.epoch = state_dict["epoch"]
        position = state_dict.get("iterations_in_epoch", 0)
        self.shuffle = state_dict.get("shuffle", True)
        saved = state_dict.get("shards")
        if position > 0 and saved != self.signature():
            logger.warning("resuming epoch %d from its start, not after its %d batches already taken: the "
                           "checkpoint's split %s differs from this run's %s (those batches' samples are seen "
                           "again)", self.epoch, position, saved, self.signature())
            position = 0
        self._next_epoch_itr = self._iterator(self.epoch, self.shuffle, offset=position) if position > 0 else None

    # ---- one epoch ----------------------------------------------------------------------------------------
    def _iterator(self, epoch: int, shuffle: bool, offset: int):
        layout = self.layout(shuffle)
        counts = self.dataset.batch_counts(epoch, layout)
        length, mine = max(sum(c) for c in counts), counts[self.rank]
        if offset > length:
            raise ValueError(f"the checkpoint took {offset} batches of epoch {epoch}, which has {length}")
        done = consumed_batches(mine, offset)
        sizes = self.dataset.shards.sizes
        samples = [sum(sizes[i] for i in shards) for shards in self.dataset.shards_of(epoch, layout)[self.rank]]
        layout.skip = [min(d * self.batch_size, n) for d, n in zip(done, samples)]
        self.dataset.configure(epoch, layout)
        left = [c - d for c, d in zip(mine, done)]
        batches = iter(())
        if sum(left) > 0:  # workers are started only when there is something left to read
            loader = torch.utils.data.DataLoader(
                self.dataset, batch_size=self.batch_size, collate_fn=self.dataset.collater,
                num_workers=self.num_workers, pin_memory=torch.cuda.is_available(), persistent_workers=False)
            # A new loader starts its round-robin at worker 0: put its batches back in the uninterrupted order.
            loader_itr = iter(loader)
            batches = _reordered(loader_itr, round_robin(left), round_robin(mine)[offset:],
                                 last=lambda: stop_workers(loader_itr))
        empty = self.dataset.collater([])  # a rank out of batches: fairseq runs its dummy batch
        padding = length - max(sum(mine), offset)
        itr = _Sized(itertools.chain(batches, itertools.repeat(empty, padding)), length - offset)
        if self.buffer_size > 0:
            itr = iterators.BufferedIterator(self.buffer_size, itr)
        if self.keys_file:
            itr = _Sized(_recorded(itr, self.keys_file, self.rank, epoch, offset), length - offset)
        if offset:
            logger.info("resuming epoch %d after %d of its %d batches: workers skip %s samples", epoch, offset,
                        length, self.dataset.layout.skip)
        return iterators.CountingIterator(itr, start=offset, total=length)


def _reordered(batches, given, wanted, last=None):
    """``batches`` come from the workers in the order ``given``; yield them in the order ``wanted``.  ``last()``
    runs once the last one is in hand (the loader then stops its workers, before the batch is used)."""
    waiting = collections.defaultdict(collections.deque)
    given, wanted = iter(given), list(wanted)
    for number, worker in enumerate(wanted, start=1):
        while not waiting[worker]:
            waiting[next(given)].append(next(batches))
        batch = waiting[worker].popleft()
        if number == len(wanted) and last is not None:
            last()
        yield batch


def _recorded(batches, path: str, rank: int, epoch: int, offset: int):
    """Append ``rank R epoch E batch N keys: ...`` to ``path`` as the trainer takes each batch (every rank
    writes: fairseq silences the logs of all but rank 0)."""
    with open(path, "a", encoding="utf-8") as fh:
        for number, batch in enumerate(batches, start=offset + 1):
            keys = " ".join(batch.get("keys", [])) if isinstance(batch, dict) else ""
            fh.write(f"rank {rank} epoch {epoch} batch {number} keys: {keys}\n")
            fh.flush()
            yield batch
