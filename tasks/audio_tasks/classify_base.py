"""Shared machinery of the classification-style tasks (VGGSound, FSD50K, AVQA, VQA).

One forward per validation batch feeds both the criterion (``loss_from_logits``) and
the split metrics.  ``eval_step``/``reduce_split_metrics`` are the criterion-free
entry points used by ``one_peace.evaluate``; ``valid_step``/``reduce_metrics`` are what
fairseq's trainer calls.  Media errors in training rows are skipped (and counted);
in evaluation splits they raise, so reported metrics always cover the whole split.
"""
import json
import logging
import os
from typing import Dict, List, Optional, Tuple

import torch

from ...data_utils.audio import parse_feature_encoder_spec
from ...data_utils.tsv import TSVReader
from ...metrics.accuracy import accuracy_sum
from ...metrics.fairseq_logging import log_accuracy
from ..base_task import BaseTask

logger = logging.getLogger(__name__)


def load_label_names(path: str, option: str = "label_file") -> Dict[int, str]:
    """{class id: name} from a JSON file: {"id": "name"}, {"id": ["name", ...]} or ["name", ...]."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label map file not found: {path} (set by task.{option})")
    with open(path, "r", encoding="utf-8") as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as err:
            raise ValueError(f"label map file {path} is not valid JSON: {err}") from None
    items = enumerate(data) if isinstance(data, list) else data.items()
    names = {}
    for key, value in items:
        try:
            idx = int(key)
        except ValueError:
            raise ValueError(f"label map file {path}: key {key!r} is not an integer class id") from None
        names[idx] = value[0] if isinstance(value, list) and value else str(value)
    return names


def move_like(value, ref: torch.Tensor):
    return value.to(ref.device) if torch.is_tensor(value) else value


class ClassifyTaskBase(BaseTask):
    DEFAULT_COLS = "uniq_id,audio,text,duration"

    def __init__(self, cfg, dictionary=None, tokenizer=None):
        super().__init__(cfg, dictionary, tokenizer)
        self.label_names: Optional[Dict[int, str]] = None
        label_file = getattr(cfg, "label_file", None)
        if label_file:
            self.label_names = load_label_names(label_file)
            unknown = [i for i in self.label_names if not 0 <= i < (cfg.num_classes or 0)]
            if unknown:
                raise ValueError(f"label map {label_file} names class ids outside [0, {cfg.num_classes}): "
                                 f"{unknown[:10]}")

    # ---- data ------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        if not self.cfg.num_classes:
            raise ValueError(f"task {self.cfg._name}: set task.num_classes")
        return int(self.cfg.num_classes)

    @property
    def feature_spec(self):
        return parse_feature_encoder_spec(self.cfg.feature_encoder_spec)

    def reader(self, split: str, epoch: int = 1) -> TSVReader:
        cols = self.cfg.selected_cols or self.DEFAULT_COLS
        return TSVReader(self.data_file(split, epoch), selected_cols=cols, separator=self.cfg.reader_separator,
                         data_root=self.cfg.data_root)

    def skip_bad(self, split: str) -> bool:
        return bool(self.cfg.skip_bad_samples) and split == "train"

    def build_dataset(self, split: str, reader: TSVReader):
        raise NotImplementedError

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        self.datasets[split] = self.build_dataset(split, self.reader(split, epoch))
        logger.info("%s %s: %d rows from %s", self.cfg._name, split, len(self.datasets[split]),
                    self.datasets[split].reader.path)

    # ---- steps -----------------------------------------------------------------------------
    def forward_logits(self, model, sample) -> torch.Tensor:
        return model(**sample["net_input"])

    def metric_logs(self, logits, sample) -> Dict:
        score, count = accuracy_sum(logits.float(), move_like(sample["target"], logits))
        return {"_acc_score": score, "_acc_cnt": count}

    def predicted(self, logits) -> torch.Tensor:
        return logits.argmax(dim=-1)

    def predictions(self, logits, sample) -> List[Dict]:
        logits = logits.float().cpu()
        pred = self.predicted(logits)
        out = []
        for i, uid in enumerate(sample_ids(sample)):
            item = {"uniq_id": uid, "prediction": int(pred[i]), "logits": logits[i].tolist()}
            if "target" in sample:
                target = sample["target"][i]
                item["target"] = target.tolist() if target.dim() else int(target)
            if self.label_names is not None:
                item["prediction_name"] = self.label_names.get(int(pred[i]))
            out.append(item)
        return out

    def valid_step(self, sample, model, criterion):
        if "net_input" not in sample:  # every row of the batch was bad
            return torch.zeros(()), 0, {"num_skipped": sample.get("num_skipped", 0)}
        model.eval()
        with torch.no_grad():
            logits = self.forward_logits(model, sample)
            if hasattr(criterion, "loss_from_logits"):
                loss, sample_size, logging_output = criterion.loss_from_logits(logits, sample)
            else:
                loss, sample_size, logging_output = criterion(model, sample)
            logging_output.update(self.metric_logs(logits, sample))
        return loss, sample_size, logging_output

    @torch.no_grad()
    def eval_step(self, model, sample) -> Tuple[Dict, List[Dict]]:
        """(metric logging output, per-sample predictions) without a criterion."""
        if "net_input" not in sample:
            return {}, []
        logits = self.forward_logits(model, sample)
        return self.metric_logs(logits, sample), self.predictions(logits, sample)

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        self.reduce_split_metrics(logging_outputs)

    def reduce_split_metrics(self, logging_outputs) -> None:
        log_accuracy(logging_outputs)


def sample_ids(sample) -> List[str]:
    """The rows' ``uniq_id`` values (row indices where the TSV has none)."""
    ids = sample.get("uniq_ids")
    indices = sample["id"].tolist() if torch.is_tensor(sample.get("id")) else []
    if ids is None:
        return [str(i) for i in indices]
    return [uid if uid != "" else str(idx) for uid, idx in zip(ids, indices or [""] * len(ids))]
