"""Retrieval fine-tuning criteria: symmetric InfoNCE between one modality's and the captions' embeddings.

``RetrievalCriterion`` is the base (``QUERY_MODALITY`` names the non-text side);
``audio_text_retrieval_criterion`` is its audio instance.  The loss is
:func:`~one_peace.criterions.contrastive.cross_modal_contrast` with negatives from every
worker (``gather_with_offsets``: unequal per-worker batch sizes are fine).
``sample_size`` is 1: the loss is already a mean over the batch.
"""
from dataclasses import dataclass, field
from typing import Dict

import torch
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from ..models.modalities import get_modality
from .contrastive import cross_modal_contrast


@dataclass
class RetrievalCriterionConfig(FairseqDataclass):
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing of both InfoNCE directions"})


def embed_modality(model, net_input: Dict, modality: str) -> torch.Tensor:
    """Embeddings of one modality of a batch through the official flag-driven forward."""
    keys = get_modality(modality).input_keys
    return model(encoder_type=modality, **{k: net_input[k] for k in keys if k in net_input})


class RetrievalCriterion(FairseqCriterion):
    QUERY_MODALITY = "audio"
    SHORT = "a"  # log names: a2t_acc / t2a_acc

    def __init__(self, task, label_smoothing=0.0):
        super().__init__(task)
        self.label_smoothing = label_smoothing

    def forward(self, model, sample, reduce=True):
        net_input = sample["net_input"]
        if net_input.get("src_tokens") is None:
            raise ValueError(f"{type(self).__name__} needs captions (src_tokens) in every training batch")
        queries = embed_modality(model, net_input, self.QUERY_MODALITY)
        text = embed_modality(model, net_input, "text")
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
            f"{self.SHORT}2t_ncorrect": int(q2t),
            f"t2{self.SHORT}_ncorrect": int(t2q),
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
        short = cls.SHORT
        for key, name in ((f"{short}2t_ncorrect", f"{short}2t_acc"), (f"t2{short}_ncorrect", f"t2{short}_acc")):
            if any(key in log for log in logging_outputs):
                value = 100.0 * sum(log.get(key, 0) for log in logging_outputs) / max(nsentences, 1)
                metrics.log_scalar(name, value, nsentences, round=3)
        scales = [log["logit_scale_exp"] for log in logging_outputs if "logit_scale_exp" in log]
        if scales:
            metrics.log_scalar("logit_scale_exp", sum(scales) / len(scales), round=3)
        metrics.log_scalar_sum("skipped_samples", sum(log.get("num_skipped", 0) for log in logging_outputs))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


@register_criterion("audio_text_retrieval_criterion", dataclass=RetrievalCriterionConfig)
class AudioTextRetrievalCriterion(RetrievalCriterion):
    QUERY_MODALITY = "audio"
    SHORT = "a"


@register_criterion("image_text_retrieval_criterion", dataclass=RetrievalCriterionConfig)
class ImageTextRetrievalCriterion(RetrievalCriterion):
    QUERY_MODALITY = "image"
    SHORT = "i"
