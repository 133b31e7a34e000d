"""``base_task``: what every ONE-PEACE task shares (config fields, dictionary, BPE, data files).

Official checkpoints store their task config; every field here keeps its official name
and default so such configs merge unchanged.
"""
import argparse
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.data import Dictionary, iterators
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task

from ..data_utils.bpe_files import resolve_bpe_dir
from ..data_utils.feature_spec import parse_feature_encoder_spec
from ..data_utils.tsv import TSVReader, expand_data_paths, select_epoch_file
from ..fairseq_glue.criterion_fit import TaskFittingCriterion, require_fit
from ..models.host_memory import keep_freed_host_memory
from ..optim.layer_decay import tag_parameters

logger = logging.getLogger(__name__)


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
    feature_encoder_spec: Optional[str] = field(default=None, metadata={
        "help": "audio conv stack used to count frames; default: the model's "
                "(model.encoder.audio_adapter.feature_encoder_spec)"})
    head_type: str = field(default="vl", metadata={"help": "text, image, audio, vl, al or val"})
    num_classes: Optional[int] = None
    use_two_images: bool = False
    zero_shot: bool = False
    data_root: Optional[str] = field(default=None, metadata={
        "help": "directory media paths in the TSVs are relative to (default: each TSV's own directory)"})
    skip_bad_samples: bool = field(default=True, metadata={
        "help": "skip (log and count) rows with missing/corrupt media or fields instead of failing"})
    exif_transpose: bool = field(default=True, metadata={
        "help": "turn image files upright by their EXIF/XMP orientation (boxes and label maps with them); "
                "false keeps the stored pixel frame, as the official code"})




def parse_bool(value: str) -> bool:
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _boolean_options_take_values(parser, names) -> None:
    for action in list(parser._actions):
        if action.dest not in names or not isinstance(action, (argparse._StoreTrueAction,
                                                               argparse._StoreFalseAction)):
            continue
        parser._remove_action(action)
        for option in action.option_strings:
            parser._option_string_actions.pop(option, None)
        for group in getattr(parser, "_action_groups", []):
            if action in group._group_actions:
                group._group_actions.remove(action)
        parser.add_argument(*action.option_strings, dest=action.dest, nargs="?", const=True, type=parse_bool,
                            default=action.default, metavar="true|false", help=action.help)


@register_task("base_task", dataclass=BaseTaskConfig)
class BaseTask(FairseqTask):
    """Dictionary/BPE set-up, data files, readers, sample-count batching and datasets.

    A subclass names its TSV columns (``DEFAULT_COLS``) and builds its dataset from a reader
    (``build_dataset``); media paths in every dataset resolve through ``TSVReader.resolve``.
    """

    DEFAULT_COLS = ""
    TARGET = None  # what a batch's targets are (classification, box, pixels); read by the criteria

    def __init__(self, cfg, dictionary=None, tokenizer=None):
        super().__init__(cfg)
        keep_freed_host_memory()  # a job starts: freed host memory reused, not faulted in again (host_memory.py)
        self.dictionary = dictionary
        self.tokenizer = tokenizer
        self.model_feature_spec = None  # the audio conv stack of the model built by this task

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
            return select_epoch_file(expand_data_paths(self.cfg.data), epoch)
        return self.cfg.valid_data

    def has_sharded_data(self, split):
        return bool(self.cfg.data) and len(expand_data_paths(self.cfg.data)) > 1 and split == "train"

    @classmethod
    def add_args(cls, parser):
        """fairseq's flags, except that boolean options take a value as documented (``--skip-bad-samples
        false``; a bare flag means true) instead of fairseq's store_true/store_false, where a bare
        ``--skip-bad-samples`` (default true) would turn skipping *off*."""
        super().add_args(parser)
        dc = getattr(cls, "__dataclass", None)
        if dc is not None:
            booleans = {f.name for f in dataclasses.fields(dc) if f.type is bool or f.type == "bool"}
            _boolean_options_take_values(parser, booleans)

    def reader(self, split: str, epoch: int = 1) -> TSVReader:
        cols = self.cfg.selected_cols or self.DEFAULT_COLS
        return TSVReader(self.data_file(split, epoch), selected_cols=cols, separator=self.cfg.reader_separator,
                         data_root=self.cfg.data_root)

    def skip_bad(self, split: str) -> bool:
        """Bad rows are skipped (logged, counted) in training only: metrics cover whole splits."""
        return bool(self.cfg.skip_bad_samples) and split == "train"

    def build_dataset(self, split: str, reader: TSVReader):
        raise NotImplementedError(f"task {self.cfg._name} builds no dataset")

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        self.datasets[split] = self.build_dataset(split, self.reader(split, epoch))
        self.datasets[split].exif_transpose = bool(getattr(self.cfg, "exif_transpose", True))
        logger.info("%s %s: %d rows from %s", self.cfg._name, split, len(self.datasets[split]),
                    self.datasets[split].reader.path)

    def dataset(self, split):
        """The loaded dataset of ``split``.  Ours are plain ``torch.utils.data.Dataset``s (the data layer
        imports no fairseq) with the parts of fairseq's dataset protocol this task's batching uses
        (``collater``, ``set_epoch``, ...); fairseq's own method would refuse them as not being a
        ``FairseqDataset``."""
        if split not in self.datasets:
            raise KeyError("Dataset not loaded: " + split)
        return self.datasets[split]

    def submission(self, predictions):
        """``(file name suffix, JSON content)`` of a benchmark server's submission, or None."""
        return None

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
        loss, sample_size, logging_output = super().train_step(sample, model, criterion, optimizer, update_num,
                                                               ignore_grad=ignore_grad, **kwargs)
        if ignore_grad:
            # fairseq's dummy batch, run in place of an empty one to keep the workers in step: it adds no
            # rows even among real passes of one update (fairseq zeroes a dummy only when it comes last).
            sample_size = 0
            logging_output = {k: _zero_like(v) for k, v in logging_output.items()}
        return loss, sample_size, logging_output

    def build_criterion(self, cfg, from_checkpoint=False):
        criterion = super().build_criterion(cfg, from_checkpoint)
        if not isinstance(criterion, TaskFittingCriterion):  # ours check the task themselves when built
            require_fit(type(criterion), self, name=getattr(cfg, "_name", None))
        return criterion

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        audio = getattr(getattr(model, "encoder_wrapper", None), "audio_adapter", None)
        if audio is not None and audio.spec:
            self.model_feature_spec = audio.spec
        tag_parameters(model)  # names and layer ids for adjust_adam's layer-wise lr decay
        return model

    @property
    def feature_spec(self):
        """The audio conv stack that counts frames: ``task.feature_encoder_spec`` if set, else the model's."""
        if self.cfg.feature_encoder_spec:
            return parse_feature_encoder_spec(self.cfg.feature_encoder_spec)
        if self.model_feature_spec is None:
            raise ValueError(f"task {self.cfg._name}: set task.feature_encoder_spec, or build the model first "
                             "(its audio adapter's spec is used by default)")
        return self.model_feature_spec

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
        # The dataset's epoch set before any loader exists, as fairseq's own get_batch_iterator does (masks and
        # augmentations are drawn per (seed, epoch, index)).
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        # A new loader per epoch, its workers forked after set_epoch and stopped at the epoch's end
        # (fairseq_glue/loader_workers.py): workers kept across epochs would keep their first epoch.
        return iterators.EpochBatchIterator(
            dataset=dataset, collate_fn=dataset.collater, batch_sampler=batches, seed=seed,
            num_shards=num_shards, shard_id=shard_id, num_workers=num_workers, epoch=epoch,
            buffer_size=data_buffer_size, skip_remainder_batch=skip_remainder_batch, persistent_workers=False,
        )

    def is_training(self, dataset) -> bool:
        return getattr(dataset, "split", "train") == "train"

    def encode_text(self, text: str, clean: bool = True) -> torch.Tensor:
        return self.tokenizer.encode(text, clean=clean)


def _zero_like(value):
    """A logging value that adds nothing when summed (keys stay, so workers' summed stats line up)."""
    if torch.is_tensor(value):
        return torch.zeros_like(value)
    return type(value)(0) if isinstance(value, (int, float)) else value
