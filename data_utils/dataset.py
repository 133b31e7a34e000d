"""TSV-backed dataset base: row loading with bad-sample handling, and batch collation.

A row whose media is missing/corrupt or whose fields are missing is reported with the
file, row number and reason.  In training it is skipped (``skip_bad_samples``): the
batch carries the count as ``num_skipped`` so criteria can log it even when the data
loader runs in worker processes.  With skipping off it raises ``BadSampleError``.

A batch in which *every* sample is bad collates to an *empty batch*, ``{"num_skipped": n}``
(no ``net_input``; :func:`has_rows` tells them apart).  In training and validation it never
reaches a model or a metric: a single process skips it, several run fairseq's dummy batch
in its place (their collectives stay in step) and leave its outputs out; its ``n`` rows
are added to the ``skipped_samples`` meter either way (``fairseq_glue/compat.py``,
``install_empty_batch_handling``).

``TSVDataset`` is a plain ``torch.utils.data.Dataset`` (the data layer imports no fairseq).  It
provides what the tasks' batching (``tasks/base_task.py``) and fairseq's ``EpochBatchIterator`` use:
``collater``, ``set_epoch``, ``supports_prefetch`` and the size methods of fairseq's dataset protocol.
"""
import logging
from typing import Any, Dict, List, Optional

import torch

from .tsv import TSVReader, TSVRowError

logger = logging.getLogger(__name__)


class BadSampleError(ValueError):
    """``row``: a TSV line number, or where else in ``path`` the sample is (a shard's ``"sample 'key'"``)."""

    def __init__(self, path, row, reason):
        self.path, self.row, self.reason = path, row, reason
        where = row if isinstance(row, str) else f"row {row}"
        super().__init__(f"{path}, {where}: {reason}")


class TSVDataset(torch.utils.data.Dataset):
    """Subclasses implement ``load_item(index, row) -> dict`` and ``collate(samples) -> dict``."""

    exif_transpose = True  # image files turned upright by their EXIF orientation (task.exif_transpose)

    def __init__(self, split: str, reader: TSVReader, skip_bad_samples: bool = True):
        self.split = split
        self.reader = reader
        self.skip_bad_samples = skip_bad_samples
        self.num_skipped = 0  # per process (workers keep their own count)

    def __len__(self):
        return len(self.reader)

    def row_number(self, index: int) -> int:
        """1-based line number of a data row in the file (the header is line 1)."""
        row_of = getattr(self.reader, "line_number", None)
        return row_of(index) if callable(row_of) else index + 2

    def load_item(self, index: int, row: Dict[str, str]) -> Dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def field(row: Dict[str, str], name: str) -> str:
        """A column of the row, or a KeyError naming it and the columns there are."""
        if name not in row:
            raise KeyError(f"column {name!r} missing (selected columns: {', '.join(row)})")
        return row[name]

    def resolve(self, value: str) -> str:
        """Path of a media cell: relative to ``data_root``, else to the TSV's folder (one resolver)."""
        return self.reader.resolve(value)

    def collate(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        try:
            row = self.reader[index]
        except TSVRowError as err:
            return self._bad(BadSampleError(err.path, err.row, err.reason), err)
        return self.guarded(index, lambda: self.load_item(index, row), self.reader.path, self.row_number(index))

    def guarded(self, index: int, load, path: str, row) -> Optional[Dict[str, Any]]:
        """``load()``'s item, or None (logged, counted) when the sample is bad: the one rule for TSV rows and
        the samples of tar shards (``data_utils/shard_dataset.py``)."""
        try:
            item = load()
        except (FileNotFoundError, ValueError, OSError, KeyError) as err:
            return self._bad(BadSampleError(path, row, str(err)), err)
        item.setdefault("id", index)
        return item

    def _bad(self, bad: BadSampleError, cause: Exception):
        if not self.skip_bad_samples:
            raise bad from cause
        self.num_skipped += 1
        logger.warning("skipping bad sample (%s); %d skipped so far in this process", bad, self.num_skipped)
        return None

    def collater(self, samples: List[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
        kept = [s for s in samples if s is not None]
        skipped = len(samples) - len(kept)
        if not kept:  # every row bad (or fairseq's padding batch of a worker out of data, [])
            return empty_batch(skipped)
        batch = self.collate(kept)
        batch["num_skipped"] = skipped
        batch.setdefault("nsentences", len(kept))
        batch.setdefault("id", torch.tensor([s["id"] for s in kept]))
        return batch

    # fairseq dataset protocol (batching is by sample count only)
    def num_tokens(self, index):
        return 1

    def size(self, index):
        return 1

    def ordered_indices(self):
        import numpy as np
        return np.arange(len(self), dtype=np.int64)

    @property
    def supports_prefetch(self):
        return False

    def set_epoch(self, epoch):
        self.epoch = epoch


def empty_batch(skipped: int) -> Dict[str, int]:
    """The batch of ``skipped`` rows none of which could be read: a count, nothing to run."""
    return {"num_skipped": skipped}


def has_rows(batch) -> bool:
    """A batch with rows to run (``net_input``), not an empty batch, ``{}``, None or fairseq's "DUMMY"."""
    return isinstance(batch, dict) and "net_input" in batch


def skipped_rows(batch) -> int:
    """Bad rows of an empty batch (0 for anything else: they are counted from its logging output)."""
    return 0 if has_rows(batch) or not isinstance(batch, dict) else int(batch.get("num_skipped", 0))


def parse_class_id(value: str, num_classes: int, what: str = "label") -> int:
    """An integer class id in [0, num_classes), or a ValueError naming the bad value."""
    try:
        label = int(value.strip())
    except (ValueError, AttributeError):
        raise ValueError(f"{what} {value!r} is not an integer class id") from None
    if not 0 <= label < num_classes:
        raise ValueError(f"unknown {what} {label}: class ids must lie in [0, {num_classes})")
    return label
