"""Tar shards in place of TSVs: ``task.data`` / ``task.valid_data`` naming ``.tar`` files (brace patterns,
``shards/{00000..00099}.tar``) are read as WebDataset shards (``docs/DATA.md``, "WebDataset shards").

A task mixes in :class:`ShardTaskMixin` and names the row its shard samples become (``SHARD_COLUMNS``:
the key's, the media's and the text's column of its TSV layout); its ``build_dataset`` is used as is, on
a :class:`~one_peace.data_utils.shard_dataset.ShardRows` instead of a TSV reader.
"""
import logging
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch

from ..data_utils.shard_dataset import SampleFields, ShardDataset, ShardRows
from ..data_utils.shards import ShardList, is_shard_spec
from ..models.modalities import get_modality
from .base_task import BaseTaskConfig
from .shard_iterator import ShardEpochBatchIterator

logger = logging.getLogger(__name__)


@dataclass
class ShardDataConfig(BaseTaskConfig):
    shuffle_buffer: int = field(default=1000, metadata={
        "help": "tar shards: samples in each loader worker's shuffle buffer (0: shards shuffled, samples not)"})
    shard_sizes: Optional[str] = field(default=None, metadata={
        "help": "tar shards: JSON file {shard name: samples} (default: sizes.json beside the shards, else "
                "img2dataset's <shard>_stats.json, else the tar headers)"})
    sample_keys_file: Optional[str] = field(default=None, metadata={
        "help": "tar shards: append the sample keys of every training batch to this file, one line per batch "
                "and rank (audits; the resume test)"})


class ShardTaskMixin:
    """Datasets and batch iterators of a task whose data may be tar shards (before ``BaseTask`` in the MRO)."""

    SHARD_COLUMNS: Tuple[str, str, str] = ()  # (key column, media column, text column) of the TSV layout
    SHARD_MODALITY = ""  # the media's modality (default: PRETRAIN_MODALITY); its registry extensions are the
    # member suffixes looked for, in order
    SHARD_VALIDATION = True  # False: only the training split may be shards (evaluation reads its TSV's rows)

    def data_spec(self, split: str) -> Optional[str]:
        """What ``split`` reads: ``task.data`` for training (and for validation without ``valid_data``)."""
        if split == "train" or self.cfg.valid_data is None:
            return self.cfg.data
        return self.cfg.valid_data

    def reads_shards(self, split: str) -> bool:
        return is_shard_spec(self.data_spec(split))

    def has_sharded_data(self, split):
        # fairseq reloads "sharded" data every epoch; shards are split by the iterator instead
        return False if self.reads_shards(split) else super().has_sharded_data(split)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        if not self.reads_shards(split):
            return super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        if not self.SHARD_COLUMNS or (split != "train" and not self.SHARD_VALIDATION):
            what = "TSV files only" if not self.SHARD_COLUMNS else f"its {split} split from a TSV (task.valid_data)"
            raise ValueError(f"task {self.cfg._name} reads {what}, not tar shards ({self.data_spec(split)})")
        shards = ShardList.from_spec(self.data_spec(split), sizes_file=self.cfg.shard_sizes)
        key, media, text = self.SHARD_COLUMNS
        modality = self.SHARD_MODALITY or getattr(self, "PRETRAIN_MODALITY", "")
        extensions = tuple(e.lstrip(".") for e in get_modality(modality).extensions)
        processor = self.build_dataset(split, ShardRows(shards, self.SHARD_COLUMNS))
        processor.exif_transpose = bool(getattr(self.cfg, "exif_transpose", True))
        seed = getattr(processor, "seed", None)  # the pretraining datasets' (masks); else fairseq's --seed
        seed = torch.initial_seed() % (2 ** 31) if seed is None else seed
        self.datasets[split] = ShardDataset(processor, shards, SampleFields(key, media, text, extensions),
                                            seed=seed, shuffle_buffer=self.cfg.shuffle_buffer)
        logger.info("%s %s: %d samples in %d tar shards from %s (sizes from %s)", self.cfg._name, split,
                    shards.total, len(shards.urls), shards.spec, shards.sizes_from)

    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None, max_positions=None,
                           ignore_invalid_inputs=False, required_batch_size_multiple=1, seed=1,
                           num_shards=1, shard_id=0, num_workers=0, epoch=1, data_buffer_size=0,
                           disable_iterator_cache=False, skip_remainder_batch=False, grouped_shuffling=False,
                           update_epoch_batch_itr=False):
        if not isinstance(dataset, ShardDataset):
            return super().get_batch_iterator(
                dataset, max_tokens, max_sentences, max_positions, ignore_invalid_inputs,
                required_batch_size_multiple, seed, num_shards, shard_id, num_workers, epoch, data_buffer_size,
                disable_iterator_cache, skip_remainder_batch, grouped_shuffling, update_epoch_batch_itr)
        if max_sentences is None:
            raise ValueError("ONE-PEACE tasks batch by sample count: set --batch-size")
        if skip_remainder_batch:
            logger.warning("--skip-remainder-batch does not apply to tar shards: every worker's last batch is kept")
        return ShardEpochBatchIterator(
            dataset, max_sentences, rank=shard_id, world_size=num_shards, num_workers=num_workers, epoch=epoch,
            buffer_size=data_buffer_size, keys_file=self.cfg.sample_keys_file if dataset.split == "train" else None)
