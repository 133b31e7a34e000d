"""``video_text_pretrain``: video-text pretraining of the video branch (``docs/VIDEO.md``).

Starts from a stage-2 (or stage-1, or the official) checkpoint with ``model.stage2_pretrain: true``
and ``model.encoder.use_video_moe: true``: the shared attention and the text tower stay frozen, the
video adapter, FFNs and final LayerNorm train (``registration.freeze_all_but``).  Criterion:
``video_text_pretrain_loss``.
"""
from dataclasses import dataclass, field
from typing import Optional

from fairseq.tasks import register_task

from ...data_utils.video_datasets import VideoTextPretrainDataset
from ..shard_data import ShardDataConfig
from .pretrain_task import _PretrainTask


@dataclass
class VideoTextPretrainConfig(ShardDataConfig):
    valid_data: Optional[str] = None
    num_frames: int = field(default=8, metadata={"help": "frames sampled uniformly from every clip"})
    video_mask_ratio: float = field(default=0.75, metadata={"help": "tube mask ratio of the video-only view"})
    vt_text_mask_ratio: float = 0.4
    vt_video_mask_ratio: float = 0.6875


@register_task("video_text_pretrain", dataclass=VideoTextPretrainConfig)
class VideoTextPretrainTask(_PretrainTask):
    DEFAULT_COLS = "uniq_id,video,text"
    SHARD_COLUMNS = ("uniq_id", "video", "text")  # key.mp4/.webm/..., key.txt
    PRETRAIN_MODALITY = "video"

    def build_dataset(self, split, reader):
        cfg = self.cfg
        return VideoTextPretrainDataset(
            split, reader, self.tokenizer, patch_image_size=cfg.patch_image_size, num_frames=cfg.num_frames,
            video_mask_ratio=cfg.video_mask_ratio, vt_text_mask_ratio=cfg.vt_text_mask_ratio,
            vt_video_mask_ratio=cfg.vt_video_mask_ratio, **self.common_kwargs())
