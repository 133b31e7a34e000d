"""Audio-visual classification (VGGSound audio + video frames), built from the ONE-PEACE parts.

The official code classifies VGGSound from audio only; the paper's audio-visual number
needs a joint pass.  Following how ONE-PEACE fuses two modalities (vl/al), the audio
tokens and the tokens of every frame are concatenated into one sequence:

* every frame goes through the image adapter on its own (its own CLS, absolute and
  relative positions) and forms its own block;
* attention is joint over the whole sequence, with a block-diagonal relative-position
  bias (each block uses its adapter's tables; cross-block entries are 0);
* each token goes through the FFN of its modality (audio_ffn / image_ffn) and, after
  the last layer, through its modality's final LayerNorm;
* the classification head is the one of the audio-only model: attention pooling over
  every token except the CLS tokens (the audio CLS leads the sequence and is dropped by
  the head; the frame CLS tokens are dropped here), then the same classifier.

Frames carry no temporal position: they are an unordered set of views of the clip.
Without ``src_images`` the model is exactly the audio-only classify model.
"""
from typing import List

import torch
import torch.nn as nn

from .adapters.base import AdapterOutput
from .components import init_one_peace_params
from .heads import ClassifyHead
from .wrapper import ModelWrapper

AV_MODALITIES = ("image", "audio")


class OnePeaceAudioVisualClassifyModel(nn.Module):
    def __init__(self, cfg, num_classes: int):
        super().__init__()
        enc = cfg.encoder
        self.head_type = "av"
        self.modalities = AV_MODALITIES
        # One rel-pos table per layer, as every classify model.
        self.encoder_wrapper = ModelWrapper(enc, AV_MODALITIES, None, 1, enc.layers)
        self.classify_head = ClassifyHead(
            enc.embed_dim, enc.attention_heads, num_classes, attn_pooling=cfg.attn_pooling,
            use_pooler=cfg.use_pooler, pooler_dropout=cfg.pooler_dropout, head_scale_ratio=cfg.head_scale_ratio,
        )
        self.apply(init_one_peace_params)

    def frame_inputs(self, src_images: torch.Tensor) -> List[AdapterOutput]:
        """(B, F, 3, P, P) frames -> F adapter outputs of (B, S, D) each."""
        if src_images.dim() == 4:
            src_images = src_images.unsqueeze(1)
        if src_images.dim() != 5:
            raise ValueError(f"src_images must be (B, F, 3, P, P) frames, got {tuple(src_images.shape)}")
        bsz, num_frames = src_images.shape[:2]
        out = self.encoder_wrapper.adapter("image")({"src_images": src_images.flatten(0, 1)})
        x = out.x.view(bsz, num_frames, *out.x.shape[1:])
        mask = out.padding_mask.view(bsz, num_frames, -1)
        return [AdapterOutput(x[:, f], mask[:, f], out.bucket, out.adapter) for f in range(num_frames)]

    def forward(self, src_audios=None, audio_padding_masks=None, src_images=None, **unused):
        if src_audios is None:
            raise ValueError("the audio-visual model needs src_audios (frames are optional)")
        inputs = [self.encoder_wrapper.adapter("audio")({"src_audios": src_audios,
                                                          "audio_padding_masks": audio_padding_masks})]
        if src_images is not None:
            inputs += self.frame_inputs(src_images)
        modalities = ["audio"] + ["image"] * (len(inputs) - 1)
        features = self.encoder_wrapper.fusion_model(inputs, modalities)
        # Audio block first (its CLS at 0 is skipped by the head), then frame tokens minus their CLS.
        pooled = torch.cat([features[0]] + [f[:, 1:] for f in features[1:]], dim=1)
        mask = torch.cat([inputs[0].padding_mask] + [inp.padding_mask[:, 1:] for inp in inputs[1:]], dim=1)
        return self.classify_head(pooled, mask)
