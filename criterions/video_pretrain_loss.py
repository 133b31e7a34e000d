"""Video criteria: ``video_text_pretrain_loss`` (the stage-2 objective with video in the place of audio)
and ``video_text_retrieval_criterion``.

L = vtc + 1.0 dcl_video + 0.5 dcl_vt_text + 0.5 dcl_vt_video (text under no_grad: frozen).
Both video DCL terms use the fused vt pass as teacher, as the audio stage-2 criterion pairs them.
"""
from dataclasses import dataclass, field

import torch
from fairseq.criterions import register_criterion
from fairseq.dataclass import FairseqDataclass

from .contrastive import cross_modal_contrast
from .pretrain_loss import TEXT_PAD, _PretrainCriterion
from .retrieval_loss import RetrievalCriterion, RetrievalCriterionConfig


@dataclass
class VideoTextPretrainLossConfig(FairseqDataclass):
    dcl_video_alpha: float = 1.0
    dcl_vt_text_alpha: float = 0.5
    dcl_vt_video_alpha: float = 0.5
    dcl_logit_scale: float = 2.5
    label_smoothing: float = field(default=0.1, metadata={"help": "label smoothing of the DCL terms"})


@register_criterion("video_text_pretrain_loss", dataclass=VideoTextPretrainLossConfig)
class VideoTextPretrainLossCriterion(_PretrainCriterion):
    LOSS_KEYS = ("vtc_loss", "dcl_video_loss", "dcl_vt_text_loss", "dcl_vt_video_loss")
    MODALITY = "video"
    TASK_NEEDED = "the video-text pretraining task (video_text_pretrain; task PRETRAIN_MODALITY video)"
    NCORRECT_KEYS = ("v2t_ncorrect", "t2v_ncorrect")

    def __init__(self, cfg: VideoTextPretrainLossConfig, task):
        super().__init__(task)
        self.cfg = cfg

    def forward(self, model, sample, reduce=True):
        net = sample["net_input"]
        tokens, videos = net["src_tokens"], net["src_videos"]
        text_pad = tokens.eq(TEXT_PAD)
        with torch.no_grad():  # the text tower is frozen, as in stage 2
            text_emb, _ = model(src_tokens=tokens, encoder_type="text")
            vt_text_teacher, vt_video_teacher = model(src_tokens=tokens, src_videos=videos, encoder_type="vt")
        # The three views with gradients run as one packed pass (criterions/pretrain_loss.py).
        (video_emb, _), video_student, (vt_text_student, vt_video_student) = model(views=[
            dict(src_videos=videos, encoder_type="video"),
            dict(src_videos=videos, video_preserve_ids=net["video_preserve_ids"], encoder_type="video"),
            dict(src_tokens=tokens, src_videos=videos, text_preserve_ids=net["vt_text_preserve_ids"],
                 video_preserve_ids=net["vt_video_preserve_ids"], encoder_type="vt")])
        logit_scale = model(return_logit_scale=True)
        vtc, v2t_correct, t2v_correct = cross_modal_contrast(video_emb, text_emb, logit_scale)
        cfg = self.cfg
        losses = {
            "vtc_loss": (1.0, vtc),
            "dcl_video_loss": (cfg.dcl_video_alpha, self.dcl(video_student, vt_video_teacher,
                                                             net["video_mask_indices"])),
            "dcl_vt_text_loss": (cfg.dcl_vt_text_alpha, self.dcl(vt_text_student, vt_text_teacher,
                                                                 net["vt_text_mask_indices"], text_pad)),
            "dcl_vt_video_loss": (cfg.dcl_vt_video_alpha, self.dcl(vt_video_student, vt_video_teacher,
                                                                   net["vt_video_mask_indices"])),
        }
        return self.finish(losses, {"v2t_ncorrect": v2t_correct, "t2v_ncorrect": t2v_correct}, logit_scale,
                           sample)


@register_criterion("video_text_retrieval_criterion", dataclass=RetrievalCriterionConfig)
class VideoTextRetrievalCriterion(RetrievalCriterion):
    """Video-text retrieval fine-tuning (``video_text_retrieval``): the retrieval InfoNCE, video rows."""
