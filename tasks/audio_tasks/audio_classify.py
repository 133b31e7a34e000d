"""``audio_classify``: generic single-label audio classification (ESC-50 fine-tuning, any clip->class set).

TSV ``uniq_id, audio, text, duration``; ``text`` is the class id.  Optional ``label_file``
(JSON {id: name}) adds class names to the predictions.  ``vggsound`` is this task with
VGGSound's 309 classes.
"""
from dataclasses import dataclass

import torch
from fairseq.tasks import register_task

from ...data_utils.audio_dataset import AudioRowDataset
from ...data_utils.dataset import parse_class_id
from ..classification import ClassificationConfig, ClassificationTask


@dataclass
class AudioClassifyConfig(ClassificationConfig):
    head_type: str = "audio"


class AudioLabelDataset(AudioRowDataset):
    def __init__(self, split, reader, num_classes, feature_spec, max_duration=15, skip_bad_samples=True):
        super().__init__(split, reader, feature_spec, max_duration, skip_bad_samples)
        self.num_classes = num_classes

    def load_item(self, index, row):
        # Parse the label first: a bad label is reported before any audio is read.
        label = parse_class_id(self.field(row, "text"), self.num_classes)
        item = self.audio_item(row)
        item["target"] = torch.tensor(label)
        return item


@register_task("audio_classify", dataclass=AudioClassifyConfig)
class AudioClassifyTask(ClassificationTask):
    DEFAULT_COLS = "uniq_id,audio,text,duration"
    TARGET = "single"

    def build_dataset(self, split, reader):
        return AudioLabelDataset(split, reader, self.num_classes, self.feature_spec, self.cfg.max_duration,
                                 skip_bad_samples=self.skip_bad(split))
