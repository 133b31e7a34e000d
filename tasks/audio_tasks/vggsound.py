"""``vggsound``: single-label audio classification over 309 classes (accuracy).

TSV ``uniq_id, audio, text, duration``; ``text`` is the class id.  Optional
``label_file`` (JSON {id: name}) adds class names to the predictions.
"""
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.tasks import register_task

from ..base_task import BaseTaskConfig
from .audio_dataset import AudioRowDataset, parse_class_id
from .classify_base import ClassifyTaskBase


@dataclass
class VggsoundConfig(BaseTaskConfig):
    head_type: str = "audio"
    num_classes: Optional[int] = 309
    label_file: Optional[str] = field(default=None, metadata={"help": "JSON {class id: name} (optional)"})


class VggsoundDataset(AudioRowDataset):
    def __init__(self, split, reader, num_classes, feature_spec, max_duration=15, skip_bad_samples=True):
        super().__init__(split, reader, feature_spec, max_duration, skip_bad_samples)
        self.num_classes = num_classes

    def load_item(self, index, row):
        # Parse the label first: a bad label is reported before any audio is read.
        label = parse_class_id(self.field(row, "text"), self.num_classes)
        item = self.audio_item(row)
        item["target"] = torch.tensor(label)
        return item


@register_task("vggsound", dataclass=VggsoundConfig)
class VggsoundTask(ClassifyTaskBase):
    def build_dataset(self, split, reader):
        return VggsoundDataset(split, reader, self.num_classes, self.feature_spec, self.cfg.max_duration,
                               skip_bad_samples=self.skip_bad(split))
