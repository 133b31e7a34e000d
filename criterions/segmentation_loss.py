"""``segmentation_criterion``: per-pixel cross-entropy with an ignore index, plus the auxiliary head's.

``loss = CE(logits) + aux_loss_weight * CE(aux_logits)`` (mmseg's UperNet + FCN recipe: weight 0.4),
each the mean over the batch's labelled pixels (label != 255).  A batch without a labelled pixel
has loss 0 (mmseg's mean over nothing is NaN).  ``sample_size`` is 1: the loss is already a mean.
Logged: ``loss``, ``seg_loss``, ``aux_loss`` and the batch pixel accuracy ``pixel_acc`` (percent).
"""
from dataclasses import dataclass, field

import torch
from fairseq import metrics
from fairseq.criterions import register_criterion
from fairseq.dataclass import FairseqDataclass

from ..data_utils.segmentation import IGNORE_INDEX
from ..fairseq_glue.criterion_fit import TaskFittingCriterion, task_target_is
from ..metrics.pixels import pixel_cross_entropy, pixel_hits


@dataclass
class SegmentationCriterionConfig(FairseqDataclass):
    aux_loss_weight: float = field(default=0.4, metadata={"help": "weight of the auxiliary FCN head's loss"})


@register_criterion("segmentation_criterion", dataclass=SegmentationCriterionConfig)
class SegmentationCriterion(TaskFittingCriterion):
    TASK_NEEDED = "a dense-prediction task with a class per pixel (task TARGET pixels: semantic_segmentation)"
    fits_task = task_target_is("pixels")

    def __init__(self, task, aux_loss_weight=0.4):
        super().__init__(task)
        self.aux_loss_weight = aux_loss_weight

    def forward(self, model, sample, reduce=True):
        out = model(**sample["net_input"])
        logits, aux = out if isinstance(out, tuple) else (out, None)
        target = sample["target"]
        seg_loss = pixel_cross_entropy(logits, target, IGNORE_INDEX)
        loss = seg_loss
        n = logits.size(0)
        log = {"seg_loss": seg_loss.item(), "nsentences": n, "ntokens": n, "sample_size": 1,
               "num_skipped": sample.get("num_skipped", 0)}
        if aux is not None and self.aux_loss_weight > 0:
            aux_loss = pixel_cross_entropy(aux, target, IGNORE_INDEX)
            loss = loss + self.aux_loss_weight * aux_loss
            log["aux_loss"] = aux_loss.item()
        with torch.no_grad():
            log["_pixels_correct"], log["_pixels"] = pixel_hits(logits, target, IGNORE_INDEX)
        log["loss"] = loss.item()
        return loss, 1, log

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        reduce_segmentation_logs(logging_outputs)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


def reduce_segmentation_logs(logging_outputs) -> None:
    """Losses per batch (``sample_size`` 1 each), batch pixel accuracy in percent, skipped rows."""
    batches = sum(log.get("sample_size", 0) for log in logging_outputs)
    for key in ("loss", "seg_loss", "aux_loss"):
        logs = [log for log in logging_outputs if key in log]
        if logs:
            metrics.log_scalar(key, sum(log[key] for log in logs) / max(batches, 1), batches, round=4)
    # float(): logs summed across workers arrive as tensors
    pixels = sum(float(log.get("_pixels", 0)) for log in logging_outputs)
    if pixels:
        metrics.log_scalar_sum("_pixels_correct",
                               sum(float(log.get("_pixels_correct", 0)) for log in logging_outputs))
        metrics.log_scalar_sum("_pixels", pixels)
        metrics.log_derived("pixel_acc", lambda meters: round(
            100.0 * meters["_pixels_correct"].sum / max(meters["_pixels"].sum, 1), 3))
    metrics.log_scalar_sum("skipped_samples", sum(log.get("num_skipped", 0) for log in logging_outputs))
