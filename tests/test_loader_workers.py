"""DataLoader worker processes under fairseq's epoch iterators (``fairseq_glue/loader_workers.py``).

An epoch's loader stops its workers when the epoch's last batch is taken.  Before, fairseq's counting
iterators never asked a loader for the batch after its last, the workers were left to the garbage
collector, and stopping them then waited out torch's 5 s join timeout: 5 s per validation pass and per
epoch (the README's 20-update example spent 17 of its 26 s there)."""
import gc
import multiprocessing

import pytest
import torch
from fairseq.data import iterators


class EpochEcho(torch.utils.data.Dataset):
    """Items are (index, the epoch the reading process has): what a loader worker sees."""

    split = "valid"

    def __init__(self, size=6):
        self.size, self.epoch = size, 1

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return index, self.epoch

    def set_epoch(self, epoch):
        self.epoch = epoch

    def collater(self, samples):
        return samples


@pytest.fixture
def no_collector():
    """The garbage collector off: workers must stop without it."""
    gc.disable()
    yield
    gc.enable()


@pytest.mark.parametrize("grouped", [False, True], ids=["validation-loop", "training-loop"])
def test_an_epochs_workers_stop_with_its_last_batch(user_dir, fixture_bpe_dir, no_collector, grouped):
    from fairseq.tasks import TASK_DATACLASS_REGISTRY, TASK_REGISTRY
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(TASK_DATACLASS_REGISTRY["image_text_pretrain"](bpe_dir=fixture_bpe_dir))
    task = TASK_REGISTRY["image_text_pretrain"].setup_task(cfg)
    dataset = EpochEcho()
    epoch_itr = task.get_batch_iterator(dataset, max_sentences=2, num_workers=1, epoch=3)
    assert dataset.epoch == 3  # set before any worker forks, as fairseq's own get_batch_iterator does
    before = set(multiprocessing.active_children())
    itr = epoch_itr.next_epoch_itr(shuffle=False)
    if grouped:  # fairseq-train's loop takes batches through a GroupedIterator (--update-freq)
        itr = iterators.GroupedIterator(itr, 1)
    batches = [next(itr), next(itr)]
    workers = [w for w in multiprocessing.active_children() if w not in before]
    assert len(workers) == 1
    batches.append(next(itr))  # the epoch's last batch
    workers[0].join(timeout=10)
    assert not workers[0].is_alive(), "the worker outlived its epoch"
    flat = [sample for batch in batches for sample in (batch if not grouped else batch[0])]
    assert flat == [(i, 3) for i in range(6)]  # every item, read by a worker that had the epoch
    with pytest.raises(StopIteration):
        next(itr)


def test_a_shard_epochs_workers_stop_with_its_last_batch(tmp_path, no_collector):
    from test_shards import dataset, write_shards

    from one_peace.tasks.shard_iterator import ShardEpochBatchIterator

    epoch_itr = ShardEpochBatchIterator(dataset(write_shards(tmp_path, [3, 4])), 2, num_workers=2)
    before = set(multiprocessing.active_children())
    itr = epoch_itr.next_epoch_itr()
    keys = [next(itr)["keys"]]
    workers = [w for w in multiprocessing.active_children() if w not in before]
    assert len(workers) == 2
    keys += [b["keys"] for b in itr]
    for worker in workers:
        worker.join(timeout=10)
        assert not worker.is_alive(), "a worker outlived its epoch"
    assert sorted(k for batch in keys for k in batch) == sorted([f"s0_{i}" for i in range(3)] +
                                                              [f"s1_{i}" for i in range(4)])


FORKED_ITERATOR = r"""
import gc, os, sys
import torch
import one_peace.fairseq_glue.compat  # noqa: F401 - what the registry installs
from torch.utils.data import DataLoader

it = iter(DataLoader(list(range(8)), batch_size=2, num_workers=1))
next(it)
pid = os.fork()
if pid == 0:  # a forked process holding a copy of the iterator, as a new loader's worker does
    del it
    gc.collect()
    sys.stderr.flush()
    os._exit(0)
os.waitpid(pid, 0)
print(sum(len(b) for b in it))
"""


def test_forked_copies_of_loader_iterators_leave_the_workers_alone(tmp_path):
    """Two-process CPU training printed 'AssertionError: can only test a child process' tracebacks at
    every epoch end: a DataLoader iterator copied into a forked process tried to stop workers it does
    not own.  The copy is now left alone and the owner still stops its workers."""
    import subprocess
    import sys

    script = tmp_path / "forked.py"
    script.write_text(FORKED_ITERATOR)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "can only test a child process" not in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert run.stdout.split() == ["6"]
