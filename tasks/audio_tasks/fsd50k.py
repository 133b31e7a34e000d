"""``fsd50k``: multi-label audio tagging over 200 classes, macro mAP (key ``map``).

TSV ``uniq_id, audio, text, duration``; ``text`` is a comma-separated list of class ids.
"""
from dataclasses import dataclass
from typing import Optional

import torch
from fairseq.tasks import register_task

from ...data_utils.audio_dataset import AudioRowDataset
from ...data_utils.dataset import parse_class_id
from ..classification import ClassificationConfig, ClassificationTask


@dataclass
class FSD50KConfig(ClassificationConfig):
    head_type: str = "audio"
    num_classes: Optional[int] = 200


class FSD50KDataset(AudioRowDataset):
    def __init__(self, split, reader, num_classes, feature_spec, max_duration=15, skip_bad_samples=True):
        super().__init__(split, reader, feature_spec, max_duration, skip_bad_samples)
        self.num_classes = num_classes

    def multi_hot(self, text: str) -> torch.Tensor:
        ids = [parse_class_id(v, self.num_classes) for v in text.split(",") if v.strip()]
        if not ids:
            raise ValueError("no class ids in the label column")
        target = torch.zeros(self.num_classes)
        target[ids] = 1.0
        return target

    def load_item(self, index, row):
        target = self.multi_hot(self.field(row, "text"))
        item = self.audio_item(row)
        item["target"] = target
        return item


@register_task("fsd50k", dataclass=FSD50KConfig)
class FSD50KTask(ClassificationTask):
    DEFAULT_COLS = "uniq_id,audio,text,duration"
    TARGET = "multi"

    def build_dataset(self, split, reader):
        return FSD50KDataset(split, reader, self.num_classes, self.feature_spec, self.cfg.max_duration,
                             skip_bad_samples=self.skip_bad(split))
