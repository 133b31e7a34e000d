"""``hinge_loss``: multiple-choice ranking loss (AVQA: 4 answer candidates per question).

The model scores every (question, candidate) pair with one logit; rows come grouped by
question, ``num_choices`` at a time.  Loss per question:
``sum_k max(0, margin + s_k - s_correct)``.  The sum includes k = correct (a constant
``margin`` per question), as in the official loss, so loss values stay comparable;
unlike the official loss the configured ``margin`` is honoured (it hard-codes 1).
"""
from dataclasses import dataclass, field

import torch
from fairseq.criterions import register_criterion
from fairseq.dataclass import FairseqDataclass

from ..fairseq_glue.criterion_fit import TaskFittingCriterion, task_target_is
from ..metrics.multiple_choice import choice_scores
from .classify_loss import reduce_classification_logs


@dataclass
class HingeLossConfig(FairseqDataclass):
    margin: float = field(default=1.0, metadata={"help": "required gap between the correct and other scores"})
    num_choices: int = field(default=4, metadata={"help": "candidates per question"})


@register_criterion("hinge_loss", dataclass=HingeLossConfig)
class HingeLossCriterion(TaskFittingCriterion):
    TASK_NEEDED = "a multiple-choice task (task TARGET choice, e.g. aqa)"
    fits_task = task_target_is("choice")

    def __init__(self, task, margin=1.0, num_choices=4):
        super().__init__(task)
        self.margin = margin
        self.num_choices = num_choices

    def forward(self, model, sample, reduce=True):
        logits = model(**sample["net_input"])
        return self.loss_from_logits(logits, sample)

    def loss_from_logits(self, logits, sample):
        scores = choice_scores(logits.float(), self.num_choices)
        target = sample["target"]
        if target.shape != (scores.size(0),):
            raise ValueError(f"hinge loss: {scores.size(0)} questions but targets of shape {tuple(target.shape)}")
        correct = scores.gather(1, target.unsqueeze(1))
        loss = torch.clamp(self.margin + scores - correct, min=0).sum()
        sample_size = scores.size(0)
        logging_output = {
            "loss": loss.item(),
            "nsentences": sample_size,
            "ntokens": sample_size,
            "sample_size": sample_size,
            "num_skipped": sample.get("num_skipped", 0),
            "n_correct": (scores.argmax(dim=1) == target).sum().item(),
        }
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        reduce_classification_logs(logging_outputs)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
