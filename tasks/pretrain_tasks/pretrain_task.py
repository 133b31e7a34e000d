"""Pretraining tasks: ``image_text_pretrain`` (stage 1) and ``audio_text_pretrain`` (stage 2).

``task.data`` is TSV files or tar shards (``shards/{00000..00099}.tar``: ``tasks/shard_data.py``)."""
import logging
from dataclasses import dataclass
from typing import Optional

import torch
from fairseq.tasks import register_task

from ...data_utils.pretrain_datasets import AudioTextPretrainDataset, ImageTextPretrainDataset
from ..base_task import BaseTask
from ..shard_data import ShardDataConfig, ShardTaskMixin

logger = logging.getLogger(__name__)


@dataclass
class ImageTextPretrainConfig(ShardDataConfig):
    valid_file: Optional[str] = None
    text_mask_ratio: float = 0.15
    image_mask_ratio: float = 0.75
    vl_text_mask_ratio: float = 0.4
    vl_image_mask_ratio: float = 0.6875
    min_scale: float = 0.9


@dataclass
class AudioTextPretrainConfig(ShardDataConfig):
    valid_file: Optional[str] = None
    audio_mask_ratio: float = 0.55
    al_text_mask_ratio: float = 0.4
    al_audio_mask_ratio: float = 0.45
    audio_mask_prob_adjust: float = 0.1
    audio_mask_length: int = 5


class _PretrainTask(ShardTaskMixin, BaseTask):
    PRETRAIN_MODALITY = ""  # the modality paired with text: picks the criterion (<modality>_text_pretrain_loss)

    def common_kwargs(self):
        # fairseq seeds torch with --seed before datasets are built.
        return dict(seed=torch.initial_seed() % (2 ** 31), skip_bad_samples=self.cfg.skip_bad_samples)


@register_task("image_text_pretrain", dataclass=ImageTextPretrainConfig)
class ImageTextPretrainTask(_PretrainTask):
    DEFAULT_COLS = "image_id,image,caption"
    SHARD_COLUMNS = ("image_id", "image", "caption")  # key.jpg/.png/..., key.txt
    PRETRAIN_MODALITY = "image"

    def build_dataset(self, split, reader):
        cfg = self.cfg
        return ImageTextPretrainDataset(
            split, reader, self.tokenizer, patch_image_size=cfg.patch_image_size,
            min_scale=cfg.min_scale, text_mask_ratio=cfg.text_mask_ratio, image_mask_ratio=cfg.image_mask_ratio,
            vl_text_mask_ratio=cfg.vl_text_mask_ratio, vl_image_mask_ratio=cfg.vl_image_mask_ratio,
            **self.common_kwargs())


@register_task("audio_text_pretrain", dataclass=AudioTextPretrainConfig)
class AudioTextPretrainTask(_PretrainTask):
    DEFAULT_COLS = "uniq_id,audio,text,duration"
    SHARD_COLUMNS = ("uniq_id", "audio", "text")  # key.flac/.wav/.ogg/..., key.txt
    PRETRAIN_MODALITY = "audio"

    def build_dataset(self, split, reader):
        cfg = self.cfg
        return AudioTextPretrainDataset(
            split, reader, self.tokenizer,
            feature_spec=self.feature_spec, max_duration=cfg.max_duration,
            audio_mask_ratio=cfg.audio_mask_ratio, al_text_mask_ratio=cfg.al_text_mask_ratio,
            al_audio_mask_ratio=cfg.al_audio_mask_ratio, audio_mask_prob_adjust=cfg.audio_mask_prob_adjust,
            audio_mask_length=cfg.audio_mask_length, **self.common_kwargs())
