"""Retrieval fine-tuning criteria: symmetric InfoNCE between one modality's and the captions' embeddings.

``RetrievalCriterion`` is the base; ``audio_text_retrieval_criterion``, ``image_text_retrieval_criterion``
(and ``video_text_retrieval_criterion``, ``video_pretrain_loss.py``) are its registered names.  The
modality of the rows is not declared here: it is the task's ``QUERY_MODALITY`` (fairseq builds a
criterion with its task), and the task embeds a batch (``embed_queries`` / ``embed_captions``).
The logged counts keep the official names, ``<m>2t_ncorrect`` / ``t2<m>_ncorrect`` with ``<m>`` the
modality's initial (``i2t`` for images, ``a2t`` for audio, ``v2t`` for video).  The loss is
:func:`~one_peace.criterions.contrastive.cross_modal_contrast` with negatives from every
worker (``gather_with_offsets``: unequal per-worker batch sizes are fine).
``sample_size`` is 1: the loss is already a mean over the batch.
"""
import re
from dataclasses import dataclass, field

from fairseq import metrics
from fairseq.criterions import register_criterion
from fairseq.dataclass import FairseqDataclass

from ..fairseq_glue.criterion_fit import TaskFittingCriterion
from .contrastive import cross_modal_contrast

_Q2T_NCORRECT = re.compile(r"^([a-z]+)2t_ncorrect$")


@dataclass
class RetrievalCriterionConfig(FairseqDataclass):
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing of both InfoNCE directions"})


class RetrievalCriterion(TaskFittingCriterion):
    TASK_NEEDED = ("a retrieval task (one that declares QUERY_MODALITY and embeds batches: "
                   "audio_text_retrieval, image_text_retrieval, video_text_retrieval)")

    @classmethod
    def fits_task(cls, task) -> bool:
        return bool(getattr(task, "QUERY_MODALITY", None)) and hasattr(task, "embed_queries")

    def __init__(self, task, label_smoothing=0.0):
        super().__init__(task)
        self.label_smoothing = label_smoothing

    def retrieval_task(self):
        """The task, which must declare ``QUERY_MODALITY`` and embed batches (the retrieval tasks)."""
        task = self.task
        if not self.fits_task(task):  # checked when built with its task; here for one built without
            raise ValueError(f"{type(self).__name__} needs {self.TASK_NEEDED}, got {type(task).__name__}")
        return task

    @property
    def query_modality(self) -> str:
        """The modality of the task's rows (``task.QUERY_MODALITY``)."""
        return self.retrieval_task().QUERY_MODALITY

    @property
    def short(self) -> str:
        """The modality's initial in the official log names (``i2t_ncorrect``, ``t2a_ncorrect``)."""
        return self.query_modality[0]

    def forward(self, model, sample, reduce=True):
        net_input = sample["net_input"]
        if net_input.get("src_tokens") is None:
            raise ValueError(f"{type(self).__name__} needs captions (src_tokens) in every training batch")
        task = self.retrieval_task()
        queries = task.embed_queries(model, sample)
        text = task.embed_captions(model, sample)
        return self.loss_from_embeddings(queries, text, model(return_logit_scale=True), sample)

    def loss_from_embeddings(self, queries, text, logit_scale, sample, gather=True):
        loss, q2t, t2q = cross_modal_contrast(queries, text, logit_scale, self.label_smoothing, gather=gather)
        nsentences = queries.size(0)
        logging_output = {
            "loss": loss.item(),
            "nsentences": nsentences,
            "ntokens": nsentences,
            "sample_size": 1,
            # official names: i2t_ncorrect / t2i_ncorrect (a2t / t2a for audio)
            f"{self.short}2t_ncorrect": int(q2t),
            f"t2{self.short}_ncorrect": int(t2q),
            "logit_scale_exp": float(logit_scale.detach()),
            "num_skipped": sample.get("num_skipped", 0),
        }
        return loss, 1, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        batches = sum(log.get("sample_size", 0) for log in logging_outputs)
        nsentences = sum(log.get("nsentences", 0) for log in logging_outputs)
        metrics.log_scalar("loss", sum(log.get("loss", 0) for log in logging_outputs) / max(batches, 1),
                           batches, round=4)
        shorts = sorted({m.group(1) for log in logging_outputs for m in map(_Q2T_NCORRECT.match, log) if m})
        for short in shorts:  # the task's modality (one per run)
            for key, name in ((f"{short}2t_ncorrect", f"{short}2t_acc"), (f"t2{short}_ncorrect", f"t2{short}_acc")):
                if any(key in log for log in logging_outputs):
                    value = 100.0 * sum(log.get(key, 0) for log in logging_outputs) / max(nsentences, 1)
                    metrics.log_scalar(name, value, nsentences, round=3)
        # per batch (sample_size 1 each): zeroed logs of an ignored dummy batch add nothing
        scaled = [log for log in logging_outputs if "logit_scale_exp" in log]
        scaled_batches = sum(log.get("sample_size", 0) for log in scaled)
        if scaled_batches:
            metrics.log_scalar("logit_scale_exp", sum(log["logit_scale_exp"] for log in scaled) / scaled_batches,
                               scaled_batches, round=3)
        metrics.log_scalar_sum("skipped_samples", sum(log.get("num_skipped", 0) for log in logging_outputs))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


@register_criterion("audio_text_retrieval_criterion", dataclass=RetrievalCriterionConfig)
class AudioTextRetrievalCriterion(RetrievalCriterion):
    """AudioCaps / Clotho retrieval fine-tuning (``audio_text_retrieval``)."""


@register_criterion("image_text_retrieval_criterion", dataclass=RetrievalCriterionConfig)
class ImageTextRetrievalCriterion(RetrievalCriterion):
    """COCO / Flickr30K retrieval fine-tuning (``image_text_retrieval``)."""
