"""``vggsound_av``: VGGSound classified from the audio and video frames together.

A separate task (rather than a ``use_video_frames`` flag on ``vggsound``) because the
data, the model (``one_peace_classify_av``) and the checkpoints differ; checkpoints of
the audio-only task keep loading unchanged.  TSV ``uniq_id, audio, frames, text,
duration``: ``frames`` is a ``|``-separated list of image paths (frames extracted from
the video, in time order), ``text`` the class id.  Each clip uses ``num_frames`` frames,
evenly spaced over its list (cycled when it has fewer).  See docs/AUDIO_VISUAL.md.
"""
from dataclasses import dataclass, field
from typing import List

import torch
from fairseq.tasks import register_task

from ...data_utils.image import image_to_tensor, load_image
from .audio_classify import AudioLabelDataset
from .vggsound import VggsoundConfig, VggsoundTask

FRAME_SEPARATOR = "|"


@dataclass
class VggsoundAVConfig(VggsoundConfig):
    head_type: str = "av"
    num_frames: int = field(default=4, metadata={"help": "video frames per clip"})


def frame_indices(available: int, wanted: int) -> List[int]:
    """``wanted`` indices evenly spread over ``available`` frames (cycled if too few)."""
    if available >= wanted:
        if wanted == 1:
            return [available // 2]
        return [round(i * (available - 1) / (wanted - 1)) for i in range(wanted)]
    return [i % available for i in range(wanted)]


class VggsoundAVDataset(AudioLabelDataset):
    def __init__(self, split, reader, num_classes, feature_spec, max_duration=15, num_frames=4,
                 patch_image_size=256, skip_bad_samples=True):
        super().__init__(split, reader, num_classes, feature_spec, max_duration, skip_bad_samples)
        self.num_frames = num_frames
        self.patch_image_size = patch_image_size

    def load_frames(self, value: str) -> torch.Tensor:
        paths = [p.strip() for p in value.split(FRAME_SEPARATOR) if p.strip()]
        if not paths:
            raise ValueError("no frame paths in the frames column")
        chosen = [paths[i] for i in frame_indices(len(paths), self.num_frames)]
        return torch.stack([image_to_tensor(load_image(self.resolve(p), self.exif_transpose), self.patch_image_size)
                            for p in chosen])

    def load_item(self, index, row):
        item = super().load_item(index, row)
        item["frames"] = self.load_frames(self.field(row, "frames"))
        return item

    def collate(self, samples):
        batch = super().collate(samples)
        batch["net_input"]["src_images"] = torch.stack([s["frames"] for s in samples])  # B, F, 3, P, P
        return batch


@register_task("vggsound_av", dataclass=VggsoundAVConfig)
class VggsoundAVTask(VggsoundTask):
    DEFAULT_COLS = "uniq_id,audio,frames,text,duration"

    def build_dataset(self, split, reader):
        if self.cfg.num_frames < 1:
            raise ValueError(f"task.num_frames must be >= 1, got {self.cfg.num_frames}")
        return VggsoundAVDataset(split, reader, self.num_classes, self.feature_spec, self.cfg.max_duration,
                                 num_frames=self.cfg.num_frames, patch_image_size=self.cfg.patch_image_size,
                                 skip_bad_samples=self.skip_bad(split))
