"""``refcoco_criterion``: box regression for visual grounding, L1 + generalised IoU.

The model predicts ``sigmoid(logits)`` = normalised ``(x0, y0, x1, y1)``;
``loss = L1(pred, target, sum) / batch + mean over valid predictions of (1 - GIoU(pred, target))``,
where a prediction is valid when ``x0 < x1`` and ``y0 < y1``.  The official loss takes the mean
over an empty set (NaN) when no prediction in the batch is valid; here the GIoU term is then 0,
so training continues on the L1 term (tested).  ``sample_size`` is 1.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import register_criterion
from fairseq.dataclass import FairseqDataclass

from ..fairseq_glue.criterion_fit import TaskFittingCriterion, task_target_is
from ..metrics.grounding import generalized_box_iou


@dataclass
class RefCOCOCriterionConfig(FairseqDataclass):
    pass


def grounding_loss(logits: torch.Tensor, target: torch.Tensor):
    """(loss, number of valid predictions) for normalised xyxy targets."""
    boxes = torch.sigmoid(logits.float())
    target = target.float()
    loss = F.l1_loss(boxes, target, reduction="sum") / boxes.size(0)
    valid = (boxes[:, :2] < boxes[:, 2:]).all(dim=1)
    if valid.any():
        loss = loss + (1 - generalized_box_iou(boxes[valid], target[valid])).mean()
    return loss, int(valid.sum())


@register_criterion("refcoco_criterion", dataclass=RefCOCOCriterionConfig)
class RefCOCOCriterion(TaskFittingCriterion):
    TASK_NEEDED = "a grounding task with one box per row (task TARGET box: refcoco)"
    fits_task = task_target_is("box")

    def forward(self, model, sample, reduce=True):
        return self.loss_from_logits(model(**sample["net_input"]), sample)

    def loss_from_logits(self, logits, sample):
        loss, valid = grounding_loss(logits, sample["target"])
        n = logits.size(0)
        logging_output = {"loss": loss.item(), "nsentences": n, "ntokens": n, "sample_size": 1,
                          "valid_boxes": valid, "num_skipped": sample.get("num_skipped", 0)}
        return loss, 1, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        batches = sum(log.get("sample_size", 0) for log in logging_outputs)
        metrics.log_scalar("loss", sum(log.get("loss", 0) for log in logging_outputs) / max(batches, 1),
                           batches, round=4)
        n = sum(log.get("nsentences", 0) for log in logging_outputs)
        valid = sum(log.get("valid_boxes", 0) for log in logging_outputs)
        metrics.log_scalar("valid_box_pct", 100.0 * valid / max(n, 1), n, round=2)
        metrics.log_scalar_sum("skipped_samples", sum(log.get("num_skipped", 0) for log in logging_outputs))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
