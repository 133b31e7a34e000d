"""DataLoader worker processes under fairseq's epoch iterators: stopped when their epoch ends, never by
the garbage collector, and never stopped from a forked copy.

* fairseq's ``CountingIterator`` (and the ``GroupedIterator`` over it) stop after their ``total``
  batches without asking the DataLoader for one more, so a loader never saw its own end and never
  stopped its workers.  The garbage collector stopped them, when it found the epoch's iterators in a
  reference cycle, at whatever call was running: by then it had closed the index queues' feeder threads,
  the "stop" message never reached the workers, and ``_shutdown_workers`` waited out its 5 s join
  timeout before killing them.  That was 5 s per validation pass and per epoch, inside a checkpoint's
  ``state_dict`` as often as not ("writing took 5.6 seconds" for a 59 MB tiny checkpoint).  An epoch's
  last batch now stops its loader's workers at once (:func:`_workers_stopped_at_epoch_end`; tar shards:
  ``tasks/shard_iterator.py``).
* A DataLoader iterator copied into a forked process (the next loader's worker forks while the last
  epoch's iterator is still referenced) ran its ``__del__`` there and printed "AssertionError: can only
  test a child process" tracebacks at epoch ends of multi-process CPU runs.  A forked copy now leaves
  the workers, which are not its own, alone (:func:`_owner_only_iterator_cleanup`).
"""
import functools
import os

from fairseq.data import iterators
from torch.utils.data import dataloader


def _owner_only_iterator_cleanup(iterator_class):
    original_init, original_del = iterator_class.__init__, iterator_class.__del__
    getpid = os.getpid  # held here: at interpreter exit this module's globals may already be None

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        self._one_peace_owner_pid = getpid()
        original_init(self, *args, **kwargs)

    @functools.wraps(original_del)
    def __del__(self):
        if getattr(self, "_one_peace_owner_pid", getpid()) == getpid():
            original_del(self)

    __del__.one_peace_patched = True
    iterator_class.__init__, iterator_class.__del__ = __init__, __del__


def stop_workers(itr) -> None:
    """Stop the worker processes behind a DataLoader iterator (nothing for other iterators)."""
    if isinstance(itr, dataloader._MultiProcessingDataLoaderIter) \
            and getattr(itr, "_one_peace_owner_pid", os.getpid()) == os.getpid():
        itr._shutdown_workers()


def _workers_stopped_at_epoch_end(original_next):
    @functools.wraps(original_next)
    def __next__(self):
        try:
            batch = original_next(self)
        except StopIteration:
            stop_workers(self._itr)
            raise
        if not self.has_next():  # the epoch's last batch: nothing is left for the workers to make
            stop_workers(self._itr)
        return batch

    __next__.one_peace_patched = True
    return __next__


def install() -> None:
    if not getattr(dataloader._MultiProcessingDataLoaderIter.__del__, "one_peace_patched", False):
        _owner_only_iterator_cleanup(dataloader._MultiProcessingDataLoaderIter)
    if not getattr(iterators.CountingIterator.__next__, "one_peace_patched", False):
        iterators.CountingIterator.__next__ = _workers_stopped_at_epoch_end(iterators.CountingIterator.__next__)
