"""``classify_criterion``: cross-entropy (single label) or BCE-with-logits (multi-label).

``n_correct`` (the official logging key, summed into the logged ``acc``) is the arg-max hit count for
single labels; with 2-D targets and ``use_multi_label`` (multi-hot, VQA soft scores) it is the target
score at the arg-max (the VQA accuracy); with 2-D targets and softmax CE (soft targets, Mixup/CutMix)
it is ``sum(softmax * target)``, as the official criterion logs it.

Losses are summed over the batch and ``sample_size`` is the number of samples, so the
reported (and optimised) loss is a per-sample mean, as in the official criterion.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import register_criterion
from fairseq.dataclass import FairseqDataclass

from ..fairseq_glue.criterion_fit import TaskFittingCriterion, task_target_is


@dataclass
class ClassifyCriterionConfig(FairseqDataclass):
    use_multi_label: bool = field(default=False, metadata={
        "help": "multi-hot / soft targets with binary cross-entropy (FSD50K, VQA) instead of softmax CE"})
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing of the single-label CE"})


@register_criterion("classify_criterion", dataclass=ClassifyCriterionConfig)
class ClassifyCriterion(TaskFittingCriterion):
    TASK_NEEDED = "a classification task whose targets are classes (task TARGET single, soft or multi)"
    fits_task = task_target_is("single", "soft", "multi")

    def __init__(self, task, use_multi_label=False, label_smoothing=0.0):
        super().__init__(task)
        self.use_multi_label = use_multi_label
        self.label_smoothing = label_smoothing

    def forward(self, model, sample, reduce=True):
        logits = model(**sample["net_input"])
        return self.loss_from_logits(logits, sample)

    def loss_from_logits(self, logits, sample):
        """(loss, sample_size, logging_output) for logits already computed (valid steps reuse them)."""
        target = sample["target"]
        logits = logits.float()
        ncorrect = None
        if target.dim() == 2 and target.shape != logits.shape:
            raise ValueError(f"2-D targets {tuple(target.shape)} must match logits {tuple(logits.shape)}")
        if self.use_multi_label:
            loss = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="sum")
        elif target.dim() == 2:
            # Soft targets (e.g. mixed labels): CE against a distribution.
            loss = -(target.to(logits.dtype) * F.log_softmax(logits, dim=-1)).sum()
        else:
            loss = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing, reduction="sum")
            ncorrect = (logits.argmax(dim=-1) == target).sum().item()
        sample_size = logits.size(0)
        logging_output = {
            "loss": loss.item(),
            "nsentences": sample_size,
            "ntokens": sample_size,
            "sample_size": sample_size,
            "num_skipped": sample.get("num_skipped", 0),
        }
        if target.dim() == 2:
            with torch.no_grad():
                if self.use_multi_label:
                    # Multi-hot or soft scores (VQA): the target score at the arg-max (the VQA accuracy).
                    ncorrect = target.float().gather(1, logits.argmax(dim=-1, keepdim=True)).sum().item()
                else:
                    # Softmax CE on a target distribution: the official expected score.
                    ncorrect = (F.softmax(logits, dim=-1) * target.float()).sum().item()
        if ncorrect is not None:
            logging_output["n_correct"] = ncorrect
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        reduce_classification_logs(logging_outputs)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


def reduce_classification_logs(logging_outputs) -> None:
    """Loss per sample, batch accuracy (``acc``, when known) and skipped bad rows."""
    sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
    loss = sum(log.get("loss", 0) for log in logging_outputs)
    metrics.log_scalar("loss", loss / max(sample_size, 1), sample_size, round=4)
    with_correct = [log for log in logging_outputs if "n_correct" in log]
    if with_correct:
        # float(): logs summed across workers arrive as tensors
        metrics.log_scalar_sum("_ncorrect", sum(float(log["n_correct"]) for log in with_correct))
        metrics.log_scalar_sum("_ncounted", sum(float(log.get("nsentences", 0)) for log in with_correct))
        metrics.log_derived("acc", lambda meters: round(
            100.0 * meters["_ncorrect"].sum / max(meters["_ncounted"].sum, 1), 3))
    metrics.log_scalar_sum("skipped_samples", sum(log.get("num_skipped", 0) for log in logging_outputs))
