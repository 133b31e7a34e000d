"""``base_task``: what every ONE-PEACE task shares (config fields, dictionary, BPE, data files).

Official checkpoints store their task config; every field here keeps its official name
and default so such configs merge unchanged.
"""
import logging
import os

from dataclasses import dataclass, field
from typing import List, Optional

import torch
from fairseq.data import Dictionary, iterators
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task

from ..models.config import DEFAULT_FEATURE_ENCODER_SPEC

logger = logging.getLogger(__name__)

BPE_FILES = ("encoder.json", "vocab.bpe", "dict.txt")


@dataclass
class BaseTaskConfig(FairseqDataclass):
    data: Optional[str] = field(default=None, metadata={"help": "comma separated TSV files; [a-b] ranges expand; "
                                                                 "epoch e reads file (e-1) % n"})
    valid_data: Optional[str] = field(default=None, metadata={"help": "TSV file of the valid split"})
    selected_cols: Optional[str] = field(default=None, metadata={"help": "comma separated header names"})
    bpe_dir: Optional[str] = field(default=None, metadata={"help": "dir with encoder.json, vocab.bpe, dict.txt "
                                                                    "(else $ONE_PEACE_BPE_DIR, else the cache)"})
    max_positions: int = 1024
    max_src_length: int = field(default=70, metadata={"help": "max BPE tokens before EOS"})
    patch_image_size: int = 256
    max_duration: int = field(default=15, metadata={"help": "audio seconds kept"})
    reader_separator: str = "\t"
    feature_encoder_spec: Optional[str] = DEFAULT_FEATURE_ENCODER_SPEC
    head_type: str = field(default="vl", metadata={"help": "text, image, audio, vl, al or val"})
    num_classes: Optional[int] = None
    use_two_images: bool = False
    zero_shot: bool = False
    data_root: Optional[str] = field(default=None, metadata={
        "help": "directory media paths in the TSVs are relative to (default: each TSV's own directory)"})
    skip_bad_samples: bool = field(default=True, metadata={
        "help": "skip (log and count) rows with missing/corrupt media or fields instead of failing"})


def resolve_bpe_dir(configured: Optional[str]) -> str:
    """First directory holding all BPE files: configured, $ONE_PEACE_BPE_DIR, then the cache."""
    from ..data_utils.bpe import resolve_bpe_dir as resolve

    if configured and all(os.path.isfile(os.path.join(configured, f)) for f in BPE_FILES):
        return configured
    if configured:
        logger.info("bpe_dir %s lacks the BPE files; trying $ONE_PEACE_BPE_DIR and the cache", configured)
    return resolve(None)


def expand_data_paths(spec: str) -> List[str]:
    from ..data_utils.tsv import expand_data_paths as expand

    return expand(spec)


@register_task("base_task", dataclass=BaseTaskConfig)
class BaseTask(FairseqTask):
    def __init__(self, cfg, dictionary=None, tokenizer=None):
        super().__init__(cfg)
        self.dictionary = dictionary
        self.tokenizer = tokenizer

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        from ..data_utils.bpe import TextTokenizer

        bpe_dir = resolve_bpe_dir(cfg.bpe_dir)
        tokenizer = TextTokenizer(bpe_dir, max_src_length=cfg.max_src_length)
        dictionary = Dictionary.load(os.path.join(bpe_dir, "dict.txt"))
        logger.info("dictionary: %d types (from %s)", len(dictionary), bpe_dir)
        return cls(cfg, dictionary, tokenizer)

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary

    def max_positions(self):
        return None  # batching is by sample count only

    def data_file(self, split: str, epoch: int = 1) -> str:
        if split == "train" or self.cfg.valid_data is None:
            if not self.cfg.data:
                raise ValueError(f"task {self.cfg._name}: no data file configured for split {split!r}")
            paths = expand_data_paths(self.cfg.data)
            return paths[(epoch - 1) % len(paths)]
        return self.cfg.valid_data

    def has_sharded_data(self, split):
        return bool(self.cfg.data) and len(expand_data_paths(self.cfg.data)) > 1 and split == "train"

    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None, max_positions=None,
                           ignore_invalid_inputs=False, required_batch_size_multiple=1, seed=1,
                           num_shards=1, shard_id=0, num_workers=0, epoch=1, data_buffer_size=0,
                           disable_iterator_cache=False, skip_remainder_batch=False, grouped_shuffling=False,
                           update_epoch_batch_itr=False):
        if max_sentences is None:
            raise ValueError("ONE-PEACE tasks batch by sample count: set --batch-size")
        with torch.random.fork_rng():
            torch.manual_seed(seed + epoch)
            order = torch.randperm(len(dataset)).tolist() if self.is_training(dataset) else list(range(len(dataset)))
        batches = [order[i:i + max_sentences] for i in range(0, len(order), max_sentences)]
        if skip_remainder_batch and batches and len(batches[-1]) < max_sentences and len(batches) > 1:
            batches = batches[:-1]
        return iterators.EpochBatchIterator(
            dataset=dataset, collate_fn=dataset.collater, batch_sampler=batches, seed=seed,
            num_shards=num_shards, shard_id=shard_id, num_workers=num_workers, epoch=epoch,
            buffer_size=data_buffer_size, skip_remainder_batch=skip_remainder_batch,
        )

    def is_training(self, dataset) -> bool:
        return getattr(dataset, "split", "train") == "train"

    def encode_text(self, text: str, clean: bool = True) -> torch.Tensor:
        return self.tokenizer.encode(text, clean=clean)


