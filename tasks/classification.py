"""The classification task family: one base for every benchmark that maps an input to class scores.

``TARGET`` (a class attribute of the benchmark's task) says what the targets are and so how
the split is scored:

* ``single`` -- one class id per row (VGGSound, ESC-50 fine-tuning): accuracy of the arg-max.
* ``soft``   -- a score per class (VQA soft scores): the target score at the arg-max, averaged.
* ``multi``  -- multi-hot (FSD50K): macro mAP over the whole split (``map``).
* ``choice`` -- one logit per (row, candidate) pair, ``num_choices`` candidates per row (AVQA):
  accuracy of the arg-max candidate.
* ``box``    -- one box per row (RefCOCO, which overrides the scoring): IoU hits (``iou_acc``).

The criteria read ``TARGET`` to say whether they can train the task (``fairseq_glue/criterion_fit.py``).

One forward per validation batch feeds both the criterion (``loss_from_logits``) and the
split metrics.  The evaluation protocol (``tasks/evaluation.py``) is ``eval_step`` +
``reduce_split_metrics``; ``valid_step``/``reduce_metrics`` are what fairseq's trainer calls.
Every metric is in percent.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from ..data_utils.labels import load_label_names
from ..fairseq_glue.metric_logging import concatenated, log_accuracy, log_arrays, log_split_metrics
from ..metrics.accuracy import accuracy_sum
from ..metrics.average_precision import mean_average_precision
from ..metrics.multiple_choice import choice_scores
from .base_task import BaseTask, BaseTaskConfig

logger = logging.getLogger(__name__)

TARGET_KINDS = ("single", "soft", "multi", "choice", "box")


@dataclass
class ClassificationConfig(BaseTaskConfig):
    label_file: Optional[str] = field(default=None, metadata={"help": "JSON {class id: name} (optional)"})


def move_like(value, ref: torch.Tensor):
    return value.to(ref.device) if torch.is_tensor(value) else value


def sample_ids(sample) -> List[str]:
    """The rows' ``uniq_id`` values (row indices where the TSV has none)."""
    ids = sample.get("uniq_ids")
    indices = sample["id"].tolist() if torch.is_tensor(sample.get("id")) else []
    if ids is None:
        return [str(i) for i in indices]
    return [uid if uid != "" else str(idx) for uid, idx in zip(ids, indices or [""] * len(ids))]


def _map_from_meters(meters):
    scores, targets = concatenated(meters, "map_scores"), concatenated(meters, "map_targets")
    value, num_classes = mean_average_precision(scores.numpy(), targets.numpy())
    return {"map": round(value, 4), "map_classes": num_classes, "map_cnt": int(scores.size(0))}


class ClassificationTask(BaseTask):
    TARGET = "single"

    def __init__(self, cfg, dictionary=None, tokenizer=None):
        super().__init__(cfg, dictionary, tokenizer)
        if self.TARGET not in TARGET_KINDS:
            raise ValueError(f"{type(self).__name__}.TARGET must be one of {TARGET_KINDS}, got {self.TARGET!r}")
        self.label_names: Optional[Dict[int, str]] = None
        label_file = getattr(cfg, "label_file", None)
        if label_file:
            self.label_names = load_label_names(label_file)
            unknown = [i for i in self.label_names if not 0 <= i < (cfg.num_classes or 0)]
            if unknown:
                raise ValueError(f"label map {label_file} names class ids outside [0, {cfg.num_classes}): "
                                 f"{unknown[:10]}")

    @property
    def num_classes(self) -> int:
        if not self.cfg.num_classes:
            raise ValueError(f"task {self.cfg._name}: set task.num_classes")
        return int(self.cfg.num_classes)

    # ---- scores, metrics, predictions ----------------------------------------------------------
    def forward_logits(self, model, sample) -> torch.Tensor:
        return model(**sample["net_input"])

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """(rows, classes) scores the arg-max is taken over (candidates for ``choice``)."""
        logits = logits.float()
        return choice_scores(logits, self.cfg.num_choices) if self.TARGET == "choice" else logits

    def metric_logs(self, logits, sample) -> Dict:
        if self.TARGET == "multi":
            return {"map_scores": logits.float().sigmoid().cpu(),
                    "map_targets": sample["target"].to(torch.uint8).cpu()}
        score, count = accuracy_sum(self.scores(logits), move_like(sample["target"], logits))
        return {"_acc_score": score, "_acc_cnt": count}

    def predictions(self, logits, sample) -> List[Dict]:
        if self.TARGET == "multi":
            return self._multi_label_predictions(logits, sample)
        scores = self.scores(logits).cpu()
        pred = scores.argmax(dim=-1)
        key = "scores" if self.TARGET == "choice" else "logits"
        out = []
        for i, uid in enumerate(sample_ids(sample)):
            item = {"uniq_id": uid, "prediction": int(pred[i]), key: scores[i].tolist()}
            if "target" in sample:
                target = sample["target"][i]
                item["target"] = target.tolist() if target.dim() else int(target)
            if self.label_names is not None:
                item["prediction_name"] = self.label_names.get(int(pred[i]))
            out.append(item)
        return out

    def _multi_label_predictions(self, logits, sample) -> List[Dict]:
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

    # ---- steps -----------------------------------------------------------------------------------
    def valid_step(self, sample, model, criterion):
        if "net_input" not in sample:  # every row of the batch was bad
            return torch.zeros(()), 0, {"num_skipped": sample.get("num_skipped", 0)}
        model.eval()
        with torch.no_grad():
            logits = self.forward_logits(model, sample)
            loss, sample_size, logging_output = criterion.loss_from_logits(logits, sample)
            logging_output.update(self.metric_logs(logits, sample))
        return loss, sample_size, logging_output

    @torch.no_grad()
    def eval_step(self, model, sample) -> Tuple[Dict, List[Dict]]:
        if "net_input" not in sample:
            return {}, []
        logits = self.forward_logits(model, sample)
        return self.metric_logs(logits, sample), self.predictions(logits, sample)

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        self.reduce_split_metrics(logging_outputs)

    def reduce_split_metrics(self, logging_outputs) -> None:
        if self.TARGET != "multi":
            log_accuracy(logging_outputs)
        elif log_arrays(logging_outputs, ("map_scores", "map_targets")):
            log_split_metrics(("map", "map_classes", "map_cnt"), _map_from_meters, cache_key="map_scores")

    @classmethod
    def logging_outputs_can_be_summed(cls, criterion) -> bool:
        # fairseq calls this on the class; mAP logs carry score arrays.
        return cls.TARGET != "multi" and criterion.logging_outputs_can_be_summed()
