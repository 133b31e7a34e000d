"""``audio_text_retrieval_criterion``: symmetric InfoNCE between audio and caption embeddings.

Negatives come from every worker (``gather_with_offsets``: detached copies, each
worker's rows start at its own offset, so unequal per-worker batch sizes are fine).
Each direction back-propagates into its row modality (and ``logit_scale``) only.
``sample_size`` is 1: the loss is already a mean over the batch.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from .contrastive import label_smoothed_nll_loss
from .gather import gather_with_offsets


@dataclass
class AudioTextRetrievalCriterionConfig(FairseqDataclass):
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing of both InfoNCE directions"})


def symmetric_infonce(emb_a, emb_b, logit_scale, label_smoothing=0.0, gather=True):
    """(loss, a->b ncorrect, b->a ncorrect); ``gather=False`` uses the local batch only."""
    if gather:
        all_a, offset = gather_with_offsets(emb_a)
        all_b, _ = gather_with_offsets(emb_b)
    else:
        all_a, all_b, offset = emb_a.detach(), emb_b.detach(), 0
    target = torch.arange(emb_a.size(0), device=emb_a.device) + offset
    sim_a2b = logit_scale * emb_a @ all_b.t()
    sim_b2a = logit_scale * emb_b @ all_a.t()
    loss_a2b = label_smoothed_nll_loss(F.log_softmax(sim_a2b.float(), dim=-1), target, label_smoothing)
    loss_b2a = label_smoothed_nll_loss(F.log_softmax(sim_b2a.float(), dim=-1), target, label_smoothing)
    with torch.no_grad():
        a2b = (sim_a2b.argmax(dim=-1) == target).sum().item()
        b2a = (sim_b2a.argmax(dim=-1) == target).sum().item()
    return (loss_a2b + loss_b2a) / 2, a2b, b2a


@register_criterion("audio_text_retrieval_criterion", dataclass=AudioTextRetrievalCriterionConfig)
class AudioTextRetrievalCriterion(FairseqCriterion):
    def __init__(self, task, label_smoothing=0.0):
        super().__init__(task)
        self.label_smoothing = label_smoothing

    @staticmethod
    def embed(model, sample):
        """(audio embeddings, text embeddings or None, exp(logit_scale))."""
        net_input = sample["net_input"]
        audio = model(src_audios=net_input["src_audios"], audio_padding_masks=net_input["audio_padding_masks"],
                      encoder_type="audio")
        text = None
        if net_input.get("src_tokens") is not None:
            text = model(src_tokens=net_input["src_tokens"], encoder_type="text")
        return audio, text, model(return_logit_scale=True)

    def forward(self, model, sample, reduce=True):
        audio, text, logit_scale = self.embed(model, sample)
        if text is None:
            raise ValueError("audio_text_retrieval_criterion needs captions (src_tokens) in every training batch")
        return self.loss_from_embeddings(audio, text, logit_scale, sample)

    def loss_from_embeddings(self, audio, text, logit_scale, sample, gather=True):
        loss, a2t, t2a = symmetric_infonce(audio, text, logit_scale, self.label_smoothing, gather=gather)
        nsentences = audio.size(0)
        logging_output = {
            "loss": loss.item(),
            "nsentences": nsentences,
            "ntokens": nsentences,
            "sample_size": 1,
            "_a2t_ncorrect": a2t,
            "_t2a_ncorrect": t2a,
            "logit_scale_exp": float(logit_scale),
            "num_skipped": sample.get("num_skipped", 0),
        }
        return loss, 1, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        batches = sum(log.get("sample_size", 0) for log in logging_outputs)
        nsentences = sum(log.get("nsentences", 0) for log in logging_outputs)
        metrics.log_scalar("loss", sum(log.get("loss", 0) for log in logging_outputs) / max(batches, 1),
                           batches, round=4)
        for key, name in (("_a2t_ncorrect", "a2t_acc"), ("_t2a_ncorrect", "t2a_acc")):
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
