"""Pretraining criteria: stage 1 (``image_text_pretrain_loss``), stage 2 (``audio_text_pretrain_loss``).

Stage 1: L = itc + 0.5 dcl_text + 1.0 dcl_image + 0.5 dcl_vl_text + 0.5 dcl_vl_image
Stage 2: L = atc + 1.0 dcl_audio + 0.5 dcl_al_text + 0.5 dcl_al_audio (text under no_grad)

Every loss is a mean over its rows, so ``sample_size`` is 1 per batch.
"""
from dataclasses import dataclass, field

import torch
from fairseq import metrics
from fairseq.criterions import register_criterion
from fairseq.dataclass import FairseqDataclass

from ..fairseq_glue.criterion_fit import TaskFittingCriterion
from .contrastive import cross_modal_contrast, denoising_contrast

TEXT_PAD = 1


@dataclass
class ImageTextPretrainLossConfig(FairseqDataclass):
    dcl_text_alpha: float = 0.5
    dcl_image_alpha: float = 1.0
    dcl_vl_text_alpha: float = 0.5
    dcl_vl_image_alpha: float = 0.5
    dcl_logit_scale: float = 2.5
    label_smoothing: float = field(default=0.1, metadata={"help": "label smoothing of the DCL terms"})


@dataclass
class AudioTextPretrainLossConfig(FairseqDataclass):
    dcl_audio_alpha: float = 1.0
    dcl_al_text_alpha: float = 0.5
    dcl_al_audio_alpha: float = 0.5
    dcl_logit_scale: float = 2.5
    label_smoothing: float = field(default=0.1, metadata={"help": "label smoothing of the DCL terms"})


class _PretrainCriterion(TaskFittingCriterion):
    LOSS_KEYS = ()
    NCORRECT_KEYS = ()
    MODALITY = ""  # its batches pair text with this modality: the task's PRETRAIN_MODALITY

    @classmethod
    def fits_task(cls, task) -> bool:
        return getattr(task, "PRETRAIN_MODALITY", None) == cls.MODALITY

    def dcl(self, student, teacher, mask_indices, padding_mask=None):
        return denoising_contrast(student, teacher, mask_indices, padding_mask,
                                  self.cfg.dcl_logit_scale, self.cfg.label_smoothing)

    def finish(self, losses: dict, ncorrect: dict, logit_scale, sample):
        loss = sum(weight * value for weight, value in losses.values())
        logging_output = {"loss": loss.item(), "nsentences": sample["nsentences"], "sample_size": 1,
                          "ntokens": sample["nsentences"], "logit_scale_exp": logit_scale.item(),
                          "num_skipped": sample.get("num_skipped", 0)}
        for name, (_, value) in losses.items():
            logging_output[name] = value.item()
        for name, value in ncorrect.items():
            logging_output[name] = value.item()
        return loss, 1, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        # Averages weighted by what they average over: logs of no batch (fairseq's ignored dummy batch,
        # zeroed) add nothing, and logs summed across workers (one log per step) average right.
        batches = sum(log.get("sample_size", 0) for log in logging_outputs)
        nsentences = sum(log.get("nsentences", 0) for log in logging_outputs)
        for key in ("loss",) + tuple(cls.LOSS_KEYS) + ("logit_scale_exp",):
            value = sum(log.get(key, 0) for log in logging_outputs) / max(batches, 1)
            metrics.log_scalar(key, value, batches, round=3)
        for key in cls.NCORRECT_KEYS:
            acc = 100.0 * sum(log.get(key, 0) for log in logging_outputs) / max(nsentences, 1)  # percent
            metrics.log_scalar(key.replace("_ncorrect", "_acc"), acc, nsentences, round=3)
        metrics.log_scalar_sum("nsentences", nsentences)
        # Bad rows skipped by the data loader, summed over workers and updates.
        metrics.log_scalar_sum("skipped_samples", sum(log.get("num_skipped", 0) for log in logging_outputs))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


@register_criterion("image_text_pretrain_loss", dataclass=ImageTextPretrainLossConfig)
class ImageTextPretrainLossCriterion(_PretrainCriterion):
    LOSS_KEYS = ("itc_loss", "dcl_text_loss", "dcl_image_loss", "dcl_vl_text_loss", "dcl_vl_image_loss")
    MODALITY = "image"
    TASK_NEEDED = "the image-text pretraining task (image_text_pretrain; task PRETRAIN_MODALITY image)"
    NCORRECT_KEYS = ("i2t_ncorrect", "t2i_ncorrect")

    def __init__(self, cfg: ImageTextPretrainLossConfig, task):
        super().__init__(task)
        self.cfg = cfg

    def forward(self, model, sample, reduce=True):
        net = sample["net_input"]
        tokens, images = net["src_tokens"], net["src_images"]
        text_pad = tokens.eq(TEXT_PAD)
        # One token lookup shared by the three text views and the teacher (same values): its backward
        # builds the vocabulary-sized gradient once instead of once per view and sums nothing.
        token_embeddings = model(src_tokens=tokens, return_token_embeddings=True)
        # Likewise one patch embedding for the four image views (the official code embeds them per view).
        patches = model(src_images=images, return_image_patches=True)
        with torch.no_grad():
            vl_text_teacher, vl_image_teacher = model(src_tokens=tokens, token_embeddings=token_embeddings,
                                                      src_images=images, image_patches=patches, encoder_type="vl")
        # The five views with gradients run as one packed pass through the shared layers (the official code
        # runs one pass per view): the same values, one matrix multiply per weight instead of five.
        text = dict(src_tokens=tokens, token_embeddings=token_embeddings)
        image = dict(src_images=images, image_patches=patches)
        (text_emb, text_feat), (image_emb, image_feat), text_student, image_student, \
            (vl_text_student, vl_image_student) = model(views=[
                dict(text, encoder_type="text"),
                dict(image, encoder_type="image"),
                dict(text, text_preserve_ids=net["text_preserve_ids"], encoder_type="text"),
                dict(image, image_preserve_ids=net["image_preserve_ids"], encoder_type="image"),
                dict(text, **image, text_preserve_ids=net["vl_text_preserve_ids"],
                     image_preserve_ids=net["vl_image_preserve_ids"], encoder_type="vl")])
        logit_scale = model(return_logit_scale=True)
        itc, i2t_correct, t2i_correct = cross_modal_contrast(image_emb, text_emb, logit_scale)
        cfg = self.cfg
        losses = {
            "itc_loss": (1.0, itc),
            "dcl_text_loss": (cfg.dcl_text_alpha, self.dcl(text_student, text_feat, net["text_mask_indices"],
                                                           text_pad)),
            "dcl_image_loss": (cfg.dcl_image_alpha, self.dcl(image_student, image_feat,
                                                             net["image_mask_indices"])),
            "dcl_vl_text_loss": (cfg.dcl_vl_text_alpha, self.dcl(vl_text_student, vl_text_teacher,
                                                                 net["vl_text_mask_indices"], text_pad)),
            "dcl_vl_image_loss": (cfg.dcl_vl_image_alpha, self.dcl(vl_image_student, vl_image_teacher,
                                                                   net["vl_image_mask_indices"])),
        }
        return self.finish(losses, {"i2t_ncorrect": i2t_correct, "t2i_ncorrect": t2i_correct}, logit_scale,
                           sample)


@register_criterion("audio_text_pretrain_loss", dataclass=AudioTextPretrainLossConfig)
class AudioTextPretrainLossCriterion(_PretrainCriterion):
    LOSS_KEYS = ("atc_loss", "dcl_audio_loss", "dcl_al_text_loss", "dcl_al_audio_loss")
    MODALITY = "audio"
    TASK_NEEDED = "the audio-text pretraining task (audio_text_pretrain; task PRETRAIN_MODALITY audio)"
    NCORRECT_KEYS = ("a2t_ncorrect", "t2a_ncorrect")

    def __init__(self, cfg: AudioTextPretrainLossConfig, task):
        super().__init__(task)
        self.cfg = cfg

    def forward(self, model, sample, reduce=True):
        net = sample["net_input"]
        tokens, audios, audio_pad = net["src_tokens"], net["src_audios"], net["audio_padding_masks"]
        text_pad = tokens.eq(TEXT_PAD)
        # The official code runs the conv front end once per view (4x); it is deterministic, so one
        # pass shared by all views gives the same losses and gradients at a fraction of the cost.
        frames = model(src_audios=audios, return_audio_frames=True)
        with torch.no_grad():  # the text branch is frozen in stage 2
            text_emb, _ = model(src_tokens=tokens, encoder_type="text")
        audio = dict(src_audios=audios, audio_padding_masks=audio_pad, audio_frames=frames)
        with torch.no_grad():
            al_text_teacher, al_audio_teacher = model(src_tokens=tokens, encoder_type="al", **audio)
        # The three views with gradients run as one packed pass (see the image-text criterion).
        (audio_emb, _), audio_student, (al_text_student, al_audio_student) = model(views=[
            dict(audio, encoder_type="audio"),
            dict(audio, audio_preserve_ids=net["audio_preserve_ids"], encoder_type="audio"),
            dict(audio, src_tokens=tokens, text_preserve_ids=net["al_text_preserve_ids"],
                 audio_preserve_ids=net["al_audio_preserve_ids"], encoder_type="al")])
        logit_scale = model(return_logit_scale=True)
        atc, a2t_correct, t2a_correct = cross_modal_contrast(audio_emb, text_emb, logit_scale)

        frame_pad = audio_pad[:, 1:]
        cfg = self.cfg
        # Both audio DCL terms use the fused al pass as teacher (official pairing).
        losses = {
            "atc_loss": (1.0, atc),
            "dcl_audio_loss": (cfg.dcl_audio_alpha, self.dcl(audio_student, al_audio_teacher,
                                                             net["audio_mask_indices"], frame_pad)),
            "dcl_al_text_loss": (cfg.dcl_al_text_alpha, self.dcl(al_text_student, al_text_teacher,
                                                                 net["al_text_mask_indices"], text_pad)),
            "dcl_al_audio_loss": (cfg.dcl_al_audio_alpha, self.dcl(al_audio_student, al_audio_teacher,
                                                                   net["al_audio_mask_indices"], frame_pad)),
        }
        return self.finish(losses, {"a2t_ncorrect": a2t_correct, "t2a_ncorrect": t2a_correct}, logit_scale,
                           sample)
