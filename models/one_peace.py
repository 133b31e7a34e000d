"""The three ONE-PEACE models in plain PyTorch (fairseq registration lives elsewhere).

* ``OnePeaceRetrievalModel``: unimodal CLS embeddings for cross-modal retrieval.
* ``OnePeaceClassifyModel``: a (fused) encoder pass + classification head.
* ``OnePeacePretrainModel``: retrieval outputs plus the masked student path
  (encoder on kept tokens -> small decoder -> mask heads) used by the denoising loss.

State-dict keys and forward signatures follow the official models.
"""
import math
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .components import init_one_peace_params, trunc_normal_
from .config import modalities_of
from .heads import ClassifyHead, retrieval_embedding
from .wrapper import ModelWrapper, encoder_type_modalities

MAX_LOGIT_SCALE = math.log(100)


class _ContrastiveMixin:
    """``logit_scale`` handling shared by the retrieval and pretraining models."""

    def get_logit_scale(self) -> torch.Tensor:
        # Clamped in place each time it is read, as the official model does.
        with torch.no_grad():
            self.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        return self.logit_scale.exp()

    def embed(self, modality: str, features: torch.Tensor) -> torch.Tensor:
        return retrieval_embedding(getattr(self, f"{modality}_proj"), features)


class OnePeaceRetrievalModel(nn.Module, _ContrastiveMixin):
    def __init__(self, cfg, head_type="val", vocab_size=None, pad_idx=1, copy_rel_pos_table=False,
                 logit_scale_init=1 / 0.07):
        super().__init__()
        enc = cfg.encoder
        self.head_type = head_type
        self.modalities = modalities_of(head_type)
        num_tables = enc.layers if copy_rel_pos_table else 1
        self.encoder_wrapper = ModelWrapper(enc, self.modalities, vocab_size, pad_idx, num_tables)
        for modality in ("text", "image", "audio"):
            proj = nn.Linear(enc.embed_dim, enc.embed_dim) if modality in self.modalities else None
            setattr(self, f"{modality}_proj", proj)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(logit_scale_init))
        self.apply(init_one_peace_params)

    def forward(self, src_tokens=None, src_images=None, src_audios=None, audio_padding_masks=None,
                encoder_type=None, return_logit_scale=False):
        if return_logit_scale:
            return self.get_logit_scale()
        if encoder_type not in ("text", "image", "audio"):
            raise ValueError(f"retrieval encodes one modality at a time (text/image/audio), got {encoder_type!r}")
        out = self.encoder_wrapper(src_tokens=src_tokens, src_images=src_images, src_audios=src_audios,
                                   audio_padding_masks=audio_padding_masks, encoder_type=encoder_type)
        return self.embed(encoder_type, out[encoder_type][0])


class OnePeaceClassifyModel(nn.Module):
    def __init__(self, cfg, head_type, num_classes, vocab_size=None, pad_idx=1, use_two_images=False):
        super().__init__()
        enc = cfg.encoder
        if head_type == "val":
            raise ValueError("classification needs head_type text, image, audio, vl or al (not val)")
        self.head_type = head_type
        self.modalities = modalities_of(head_type)
        self.use_image_features = bool(cfg.use_image_features)
        self.use_two_images = use_two_images
        # Classification always keeps one rel-pos table per layer.
        self.encoder_wrapper = ModelWrapper(enc, self.modalities, vocab_size, pad_idx, enc.layers)
        self.classify_head = ClassifyHead(
            enc.embed_dim, enc.attention_heads, num_classes, attn_pooling=cfg.attn_pooling,
            use_pooler=cfg.use_pooler, pooler_dropout=cfg.pooler_dropout,
            head_scale_ratio=cfg.head_scale_ratio, use_two_images=use_two_images,
        )
        self.apply(init_one_peace_params)

    def pooled_modality(self) -> str:
        if self.head_type in ("vl", "al"):
            if self.use_image_features:
                return "image" if self.head_type == "vl" else "audio"
            return "text"
        return self.head_type

    def encode(self, src_tokens=None, src_images=None, src_audios=None, audio_padding_masks=None,
               is_second_image=False):
        out = self.encoder_wrapper(src_tokens=src_tokens, src_images=src_images, src_audios=src_audios,
                                   audio_padding_masks=audio_padding_masks, encoder_type=self.head_type,
                                   is_second_image=is_second_image)
        return out[self.pooled_modality()]

    def forward(self, src_tokens=None, src_images=None, src_audios=None, audio_padding_masks=None,
                src_images_2=None, **unused):
        features, padding_mask = self.encode(src_tokens, src_images, src_audios, audio_padding_masks)
        features_2 = padding_mask_2 = None
        if self.use_two_images:
            if src_images_2 is None:
                raise ValueError("this model classifies image pairs (use_two_images) and needs src_images_2")
            features_2, _ = self.encode(src_tokens, src_images_2, is_second_image=True)
            padding_mask_2 = padding_mask  # the text padding mask serves both passes
        return self.classify_head(features, padding_mask, features_2, padding_mask_2)


class OnePeacePretrainModel(nn.Module, _ContrastiveMixin):
    def __init__(self, cfg, vocab_size=None, pad_idx=1, logit_scale_init=None):
        super().__init__()
        enc, dec = cfg.encoder, cfg.decoder
        modalities = tuple(m for m in ("text", "image", "audio") if getattr(enc, f"use_{m}_moe"))
        dec_modalities = tuple(m for m in ("text", "image", "audio") if getattr(dec, f"use_{m}_moe"))
        self.modalities = modalities
        self.encoder_wrapper = ModelWrapper(enc, modalities, vocab_size, pad_idx, 1)
        self.decoder_wrapper = ModelWrapper(dec, dec_modalities, None, pad_idx, 1)
        scale_init = cfg.logit_scale_init if logit_scale_init is None else logit_scale_init
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(scale_init))
        for modality in ("text", "image", "audio"):
            has_enc, has_dec = modality in modalities, modality in dec_modalities
            setattr(self, f"{modality}_proj", nn.Linear(enc.embed_dim, enc.embed_dim) if has_enc else None)
            mask_token = embed = head = None
            if has_enc and has_dec:
                mask_token = nn.Parameter(torch.zeros(1, dec.embed_dim))
                embed = nn.Linear(enc.embed_dim, dec.embed_dim)
                head = nn.Linear(dec.embed_dim, enc.embed_dim)
            setattr(self, f"{modality}_mask_token", mask_token)
            setattr(self, f"decoder_{modality}_embed", embed)
            setattr(self, f"{modality}_mask_head", head)
        self.apply(init_one_peace_params)
        for modality in ("text", "image", "audio"):
            token = getattr(self, f"{modality}_mask_token")
            if token is not None:
                trunc_normal_(token)

    def forward(self, src_tokens=None, text_preserve_ids=None, src_images=None, image_preserve_ids=None,
                src_audios=None, audio_padding_masks=None, audio_preserve_ids=None, encoder_type=None,
                return_logit_scale=False, audio_frames=None, return_audio_frames=False):
        """Unmasked: text/image/audio -> (embedding, features); vl/al -> (text_features, other).

        With ``*_preserve_ids`` (masked student view): the mask-head outputs, one tensor for
        a single modality, a (text, image|audio) pair for vl/al.

        ``return_audio_frames=True`` returns the conv features of ``src_audios``; passing them back
        as ``audio_frames`` lets several views of one batch share a single conv front-end pass
        (same values and gradients: the extractor has no dropout and its gradients add up).
        """
        if return_logit_scale:
            return self.get_logit_scale()
        if return_audio_frames:
            return self.encoder_wrapper.adapter("audio").extract_frames(src_audios)
        inputs = dict(src_tokens=src_tokens, text_preserve_ids=text_preserve_ids, src_images=src_images,
                      image_preserve_ids=image_preserve_ids, src_audios=src_audios,
                      audio_padding_masks=audio_padding_masks, audio_preserve_ids=audio_preserve_ids,
                      audio_frames=audio_frames)
        modalities = encoder_type_modalities(encoder_type)
        masked = any(inputs[f"{m}_preserve_ids"] is not None for m in modalities)
        if masked:
            outputs = self.forward_student(encoder_type=encoder_type, **inputs)
            heads = tuple(outputs[m]["mask_head_output"] for m in modalities)
            return heads[0] if len(heads) == 1 else heads
        out = self.encoder_wrapper(encoder_type=encoder_type, **inputs)
        if len(modalities) == 1:
            features = out[encoder_type][0]
            return self.embed(encoder_type, features), features
        return tuple(out[m][0] for m in modalities)

    def forward_student(self, encoder_type, src_tokens=None, text_preserve_ids=None, src_images=None,
                        image_preserve_ids=None, src_audios=None, audio_padding_masks=None,
                        audio_preserve_ids=None, audio_frames=None) -> Dict[str, Dict[str, torch.Tensor]]:
        """Masked forward: encoder on the kept tokens, then decoder + mask head at full length.

        Returns ``{modality: {"encoder_features": (B, P, D_enc), "mask_head_output": (B, L, D_enc)}}``.
        """
        modalities = encoder_type_modalities(encoder_type)
        preserve = {"text": text_preserve_ids, "image": image_preserve_ids, "audio": audio_preserve_ids}
        for m in modalities:
            if preserve[m] is None:
                raise ValueError(f"masked {encoder_type!r} forward needs {m}_preserve_ids")
        enc_out = self.encoder_wrapper(
            src_tokens=src_tokens, text_preserve_ids=text_preserve_ids, src_images=src_images,
            image_preserve_ids=image_preserve_ids, src_audios=src_audios,
            audio_padding_masks=audio_padding_masks, audio_preserve_ids=audio_preserve_ids,
            encoder_type=encoder_type, audio_frames=audio_frames,
        )
        dec_inputs = []
        for m in modalities:
            embeds = getattr(self, f"decoder_{m}_embed")(enc_out[m][0])
            adapter = self.decoder_wrapper.adapter(m)
            token = getattr(self, f"{m}_mask_token")
            if m == "text":
                dec_inputs.append(adapter.forward_decoder(embeds, preserve[m], token, src_tokens))
            elif m == "image":
                num_patches = (src_images.size(-1) // 16) ** 2
                dec_inputs.append(adapter.forward_decoder(embeds, preserve[m], token, num_patches))
            else:
                if audio_padding_masks is None:
                    frames = self.encoder_wrapper.audio_adapter.num_frames(src_audios.size(1))
                    audio_padding_masks = torch.zeros(src_audios.size(0), frames + 1, dtype=torch.bool,
                                                      device=src_audios.device)
                dec_inputs.append(adapter.forward_decoder(embeds, preserve[m], token, audio_padding_masks))
        dec_out = self.decoder_wrapper.run_fusion(dec_inputs, modalities)
        return {
            m: {"encoder_features": enc_out[m][0],
                "mask_head_output": getattr(self, f"{m}_mask_head")(dec_out[m][0])}
            for m in modalities
        }

    def no_weight_decay(self):
        names = set()
        for wrapper in ("encoder_wrapper", "decoder_wrapper"):
            names |= {f"{wrapper}.text_adapter.embed_positions.weight", f"{wrapper}.text_adapter.cls_embedding",
                      f"{wrapper}.image_adapter.pos_embed", f"{wrapper}.image_adapter.cls_embedding",
                      f"{wrapper}.audio_adapter.cls_embedding"}
        return names
