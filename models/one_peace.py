"""The three ONE-PEACE models in plain PyTorch (fairseq registration lives elsewhere).

* ``OnePeaceRetrievalModel``: unimodal CLS embeddings for cross-modal retrieval.
* ``OnePeaceClassifyModel``: a (fused) encoder pass + classification head.
* ``OnePeacePretrainModel``: retrieval outputs plus the masked student path
  (encoder on kept tokens -> small decoder -> mask heads) used by the denoising loss.

State-dict keys and the flag-driven ``forward`` follow the official models (``forward`` is
the compatibility dispatcher fairseq and the criteria call).  Beside it, named methods:
``encode(modality, **net_input)`` / ``encode_text`` / ``encode_image`` / ``encode_audio``
(L2-normalised embeddings), ``logit_scale_exp()`` and ``forward_intermediates`` (token
features of chosen layers, as timm's method of that name).  Every per-modality part is
built for the modalities of the registry (``one_peace.models.modalities``).
"""
import math
from typing import Dict, List

import torch
import torch.nn as nn

from .components import init_one_peace_params, trunc_normal_
from .heads import ClassifyHead, retrieval_embedding
from .modalities import all_modalities, encoder_type_modalities, modalities_of, modality_names, split_net_input
from .wrapper import ModelWrapper

MAX_LOGIT_SCALE = math.log(100)


def patch_grid(tokens: torch.Tensor) -> torch.Tensor:
    """(B, 1 + g*g, D) image tokens (CLS first) -> (B, D, g, g) feature map."""
    bsz, length, dim = tokens.shape
    side = math.isqrt(length - 1)
    if side * side != length - 1:
        raise ValueError(f"{length - 1} patch tokens do not form a square grid")
    return tokens[:, 1:].transpose(1, 2).reshape(bsz, dim, side, side)


class _EncoderModel(nn.Module):
    """What every model offers on top of its ``encoder_wrapper``."""

    def forward_intermediates(self, encoder_type: str, indices=None, norm: bool = False,
                              output_fmt: str = "NLC", **net_input) -> Dict[str, List[torch.Tensor]]:
        """``{modality: [features after each chosen layer]}`` of one (fused) pass.

        ``indices``: layer indices (negative from the end), an int n (the last n layers) or None
        (all); ``norm``: through the modality's final LayerNorm; ``output_fmt="NCHW"`` turns the
        image tokens into (B, D, H/16, W/16) maps without CLS (dense prediction heads).
        """
        if output_fmt not in ("NLC", "NCHW"):
            raise ValueError(f"output_fmt must be NLC or NCHW, got {output_fmt!r}")
        out = self.encoder_wrapper.forward_intermediates(encoder_type, indices, norm, **net_input)
        if output_fmt == "NCHW":
            if "image" not in out:
                raise ValueError(f"output_fmt='NCHW' needs image tokens; encoder_type={encoder_type!r} has none")
            out["image"] = [patch_grid(t) for t in out["image"]]
        return out

    def no_weight_decay(self):
        """Adapter parameters excluded from weight decay (each adapter's ``NO_WEIGHT_DECAY``)."""
        names = set()
        for wrapper in ("encoder_wrapper", "decoder_wrapper"):
            if getattr(self, wrapper, None) is None:
                continue
            for modality in all_modalities():
                names |= {f"{wrapper}.{modality.name}_adapter.{n}" for n in modality.adapter_cls.NO_WEIGHT_DECAY}
        return names


class _ContrastiveMixin:
    """``logit_scale`` and the embedding methods shared by the retrieval and pretraining models."""

    def logit_scale_exp(self) -> torch.Tensor:
        # Clamped in place each time it is read, as the official model does.
        with torch.no_grad():
            self.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        return self.logit_scale.exp()

    def embed(self, modality: str, features: torch.Tensor) -> torch.Tensor:
        return retrieval_embedding(getattr(self, f"{modality}_proj"), features)

    def encode(self, modality: str, **net_input) -> torch.Tensor:
        """L2-normalised (B, D) embedding of one modality (``net_input`` keys as in training)."""
        if modality not in modality_names():
            raise ValueError(f"encode takes one modality ({', '.join(modality_names())}), got {modality!r}")
        out = self.encoder_wrapper(encoder_type=modality, **net_input)
        return self.embed(modality, out[modality].features)

    def encode_text(self, src_tokens: torch.Tensor) -> torch.Tensor:
        return self.encode("text", src_tokens=src_tokens)

    def encode_image(self, src_images: torch.Tensor) -> torch.Tensor:
        return self.encode("image", src_images=src_images)

    def encode_audio(self, src_audios: torch.Tensor, audio_padding_masks=None) -> torch.Tensor:
        return self.encode("audio", src_audios=src_audios, audio_padding_masks=audio_padding_masks)


def _projections(model: nn.Module, modalities, embed_dim: int):
    for name in modality_names():
        setattr(model, f"{name}_proj", nn.Linear(embed_dim, embed_dim) if name in modalities else None)


class OnePeaceRetrievalModel(_EncoderModel, _ContrastiveMixin):
    def __init__(self, cfg, head_type="val", vocab_size=None, pad_idx=1, copy_rel_pos_table=False,
                 logit_scale_init=1 / 0.07):
        super().__init__()
        enc = cfg.encoder
        self.head_type = head_type
        self.modalities = modalities_of(head_type)
        num_tables = enc.layers if copy_rel_pos_table else 1
        self.encoder_wrapper = ModelWrapper(enc, self.modalities, vocab_size, pad_idx, num_tables)
        _projections(self, self.modalities, enc.embed_dim)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(logit_scale_init))
        self.apply(init_one_peace_params)

    def forward(self, encoder_type=None, return_logit_scale=False, **net_input):
        if return_logit_scale:
            return self.logit_scale_exp()
        if encoder_type not in modality_names():
            raise ValueError(f"retrieval encodes one modality at a time ({', '.join(modality_names())}), "
                             f"got {encoder_type!r}")
        return self.encode(encoder_type, **net_input)


class OnePeaceClassifyModel(_EncoderModel):
    def __init__(self, cfg, head_type, num_classes, vocab_size=None, pad_idx=1, use_two_images=False):
        super().__init__()
        enc = cfg.encoder
        if head_type == "val":
            raise ValueError("classification needs one encoder type (text, image, audio, vl, al, ...), not val")
        self.head_type = head_type
        self.modalities = encoder_type_modalities(head_type)
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
        """The segment the head pools: text for fused inputs unless ``use_image_features``."""
        if len(self.modalities) == 2:
            return self.modalities[1] if self.use_image_features else "text"
        return self.modalities[0]

    def encode_features(self, **net_input):
        """(features, padding_mask) of the pooled segment of one encoder pass."""
        out = self.encoder_wrapper(encoder_type=self.head_type, **net_input)
        return out[self.pooled_modality()][:2]

    def forward(self, src_images_2=None, **net_input):
        features, padding_mask = self.encode_features(**net_input)
        features_2 = padding_mask_2 = None
        if self.use_two_images:
            if src_images_2 is None:
                raise ValueError("this model classifies image pairs (use_two_images) and needs src_images_2")
            features_2, _ = self.encode_features(**dict(net_input, src_images=src_images_2, is_second_image=True))
            padding_mask_2 = padding_mask  # the text padding mask serves both passes
        return self.classify_head(features, padding_mask, features_2, padding_mask_2)


class OnePeacePretrainModel(_EncoderModel, _ContrastiveMixin):
    def __init__(self, cfg, vocab_size=None, pad_idx=1, logit_scale_init=None):
        super().__init__()
        enc, dec = cfg.encoder, cfg.decoder
        modalities = tuple(m.name for m in all_modalities() if m.enabled(enc))
        dec_modalities = tuple(m.name for m in all_modalities() if m.enabled(dec))
        self.modalities = modalities
        self.encoder_wrapper = ModelWrapper(enc, modalities, vocab_size, pad_idx, 1)
        self.decoder_wrapper = ModelWrapper(dec, dec_modalities, None, pad_idx, 1)
        scale_init = cfg.logit_scale_init if logit_scale_init is None else logit_scale_init
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(scale_init))
        _projections(self, modalities, enc.embed_dim)
        for modality in modality_names():
            mask_token = embed = head = None
            if modality in modalities and modality in dec_modalities:
                mask_token = nn.Parameter(torch.zeros(1, dec.embed_dim))
                embed = nn.Linear(enc.embed_dim, dec.embed_dim)
                head = nn.Linear(dec.embed_dim, enc.embed_dim)
            setattr(self, f"{modality}_mask_token", mask_token)
            setattr(self, f"decoder_{modality}_embed", embed)
            setattr(self, f"{modality}_mask_head", head)
        self.apply(init_one_peace_params)
        for modality in modality_names():
            token = getattr(self, f"{modality}_mask_token")
            if token is not None:
                trunc_normal_(token)

    def forward(self, encoder_type=None, return_logit_scale=False, return_audio_frames=False,
                return_token_embeddings=False, return_image_patches=False, views=None, **net_input):
        """Unmasked: one modality -> (embedding, features); fused (vl/al) -> (text_features, other).

        With ``<modality>_preserve_ids`` (masked student view): the mask-head outputs, one tensor
        for a single modality, a (text, other) pair for a fused pass.

        ``return_audio_frames=True`` returns the conv features of ``src_audios``; passing them back
        as ``audio_frames`` lets several views of one batch share a single conv front-end pass
        (same values and gradients: the extractor has no dropout and its gradients add up).
        ``return_token_embeddings=True`` / ``token_embeddings`` do the same for the text token lookup of
        ``src_tokens``: its backward then builds one vocabulary-sized gradient per batch, not one per view.
        ``return_image_patches=True`` / ``image_patches`` do the same for the patch embedding of ``src_images``
        (no dropout there either: same values, the gradients added up before its backward instead of after).

        ``views``: a list of keyword dicts (``encoder_type`` + net_input), returning the list of what each
        call would return, with the views' encoder passes and decoder passes each run packed
        (:meth:`forward_views`).
        """
        if views is not None:
            return self.forward_views(views)
        if return_logit_scale:
            return self.logit_scale_exp()
        if return_audio_frames:
            return self.encoder_wrapper.adapter("audio").extract_frames(net_input.get("src_audios"))
        if return_token_embeddings:
            return self.encoder_wrapper.adapter("text").lookup_tokens(net_input.get("src_tokens"))
        if return_image_patches:
            return self.encoder_wrapper.adapter("image").embed_patches(net_input.get("src_images"))
        modalities = encoder_type_modalities(encoder_type)
        _, masked = split_net_input(net_input, modalities)
        if masked:
            outputs = self.forward_student(encoder_type, **net_input)
            heads = tuple(outputs[m]["mask_head_output"] for m in modalities)
            return heads[0] if len(heads) == 1 else heads
        out = self.encoder_wrapper(encoder_type=encoder_type, **net_input)
        if len(modalities) == 1:
            features = out[encoder_type].features
            return self.embed(encoder_type, features), features
        return tuple(out[m].features for m in modalities)

    def forward_student(self, encoder_type, **net_input) -> Dict[str, Dict[str, torch.Tensor]]:
        """Masked forward: encoder on the kept tokens, then decoder + mask head at full length.

        Returns ``{modality: {"encoder_features": (B, P, D_enc), "mask_head_output": (B, L, D_enc)}}``.
        """
        enc_out = self.encoder_wrapper(encoder_type=encoder_type, **self._checked_preserve(encoder_type, net_input))
        return self._decode_students([(encoder_type, net_input, enc_out)])[0]

    @staticmethod
    def _checked_preserve(encoder_type, net_input):
        preserve, _ = split_net_input(net_input, encoder_type_modalities(encoder_type))
        for m, ids in preserve.items():
            if ids is None:
                raise ValueError(f"masked {encoder_type!r} forward needs {m}_preserve_ids")
        return net_input

    def _decode_students(self, students) -> List[Dict[str, Dict[str, torch.Tensor]]]:
        """Decoder + mask heads of ``(encoder_type, net_input, encoder outputs)`` student views, their
        decoder passes run packed."""
        passes = []
        for encoder_type, net_input, enc_out in students:
            modalities = encoder_type_modalities(encoder_type)
            preserve, _ = split_net_input(net_input, modalities)
            inputs = [self.decoder_wrapper.adapter(m).forward_decoder(
                getattr(self, f"decoder_{m}_embed")(enc_out[m].features), preserve[m],
                getattr(self, f"{m}_mask_token"), enc_out[m].full_padding_mask) for m in modalities]
            passes.append((inputs, modalities))
        return [{m: {"encoder_features": enc_out[m].features,
                     "mask_head_output": getattr(self, f"{m}_mask_head")(dec_out[m].features)}
                 for m in modalities}
                for (_, _, enc_out), (_, modalities), dec_out
                in zip(students, passes, self.decoder_wrapper.run_fusion_passes(passes))]

    def forward_views(self, views: List[Dict]) -> list:
        """What ``forward(**view)`` returns for each unmasked or masked view, with the views' encoder passes
        run as one packed pass and the student views' decoder passes as another (``FusionEncoder.forward_passes``:
        the same values up to float summation order, one matrix multiply per weight where there were one per
        view)."""
        requests = []
        for view in views:
            view = dict(view)
            flags = sorted(key for key in view if key.startswith("return_") or key == "views")
            if flags:
                raise ValueError(f"a view is an encoder pass; {', '.join(flags)} cannot be part of one")
            encoder_type = view.pop("encoder_type", None)
            modalities = encoder_type_modalities(encoder_type)
            masked = split_net_input(view, modalities)[1]
            requests.append((encoder_type, self._checked_preserve(encoder_type, view) if masked else view,
                             modalities, masked))
        outs = self.encoder_wrapper.forward_passes([(t, view) for t, view, _, _ in requests])
        students = iter(self._decode_students([(t, view, out) for (t, view, _, masked), out in zip(requests, outs)
                                               if masked]))
        results = []
        for (encoder_type, _, modalities, masked), out in zip(requests, outs):
            if masked:
                decoded = next(students)
                heads = tuple(decoded[m]["mask_head_output"] for m in modalities)
                results.append(heads[0] if len(heads) == 1 else heads)
            elif len(modalities) == 1:
                results.append((self.embed(encoder_type, out[encoder_type].features), out[encoder_type].features))
            else:
                results.append(tuple(out[m].features for m in modalities))
        return results
