"""``fsd50k``: multi-label audio tagging over 200 classes, macro mAP (key ``map``).

TSV ``uniq_id, audio, text, duration``; ``text`` is a comma-separated list of class
ids.  mAP needs every clip's scores, so validation logs carry the sigmoid scores and
targets; fairseq gathers them from every worker before ``reduce_metrics``.
"""
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.tasks import register_task

from ...metrics.average_precision import mean_average_precision
from ...metrics.fairseq_logging import concatenated, log_arrays, log_split_metrics
from ..base_task import BaseTaskConfig
from .audio_dataset import AudioRowDataset, parse_class_id
from .classify_base import ClassifyTaskBase, sample_ids


@dataclass
class FSD50KConfig(BaseTaskConfig):
    head_type: str = "audio"
    num_classes: Optional[int] = 200
    label_file: Optional[str] = field(default=None, metadata={"help": "JSON {class id: name} (optional)"})


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


def _map_from_meters(meters):
    scores, targets = concatenated(meters, "map_scores"), concatenated(meters, "map_targets")
    value, num_classes = mean_average_precision(scores.numpy(), targets.numpy())
    return {"map": round(value, 4), "map_classes": num_classes, "map_cnt": int(scores.size(0))}


@register_task("fsd50k", dataclass=FSD50KConfig)
class FSD50KTask(ClassifyTaskBase):
    def build_dataset(self, split, reader):
        return FSD50KDataset(split, reader, self.num_classes, self.feature_spec, self.cfg.max_duration,
                             skip_bad_samples=self.skip_bad(split))

    def predicted(self, logits):
        return logits.sigmoid() > 0.5

    def metric_logs(self, logits, sample):
        return {"map_scores": logits.float().sigmoid().cpu(), "map_targets": sample["target"].to(torch.uint8).cpu()}

    def predictions(self, logits, sample):
        probs = logits.float().sigmoid().cpu()
        out = []
        for i, uid in enumerate(sample_ids(sample)):
            ranked = probs[i].argsort(descending=True)
            item = {"uniq_id": uid, "prediction": [int(c) for c in (probs[i] > 0.5).nonzero().flatten()],
                    "top5": ranked[:5].tolist(), "probabilities": probs[i].tolist()}
            if "target" in sample:
                item["target"] = [int(c) for c in sample["target"][i].nonzero().flatten()]
            if self.label_names is not None:
                item["prediction_names"] = [self.label_names.get(c) for c in item["prediction"]]
            out.append(item)
        return out

    def reduce_split_metrics(self, logging_outputs):
        if log_arrays(logging_outputs, ("map_scores", "map_targets")):
            log_split_metrics(("map", "map_classes", "map_cnt"), _map_from_meters, cache_key="map_scores")

    @staticmethod
    def logging_outputs_can_be_summed(criterion) -> bool:
        return False  # validation logs carry score arrays
