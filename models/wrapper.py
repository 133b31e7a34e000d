"""``ModelWrapper``: the adapters of the enabled modalities plus the fusion encoder.

Used twice by the pretraining model: as ``encoder_wrapper`` (the ONE-PEACE encoder)
and as ``decoder_wrapper`` (the small decoder of the masked student path, which has
no token table, no patch/conv extractor and no relative-position bias).
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from .adapters.audio import AudioAdapter
from .adapters.base import AdapterOutput
from .adapters.image import ImageAdapter
from .adapters.text import TextAdapter
from .fusion_encoder import FusionEncoder

ENCODER_TYPES = {
    "text": ("text",),
    "image": ("image",),
    "audio": ("audio",),
    "vl": ("text", "image"),
    "al": ("text", "audio"),
}


def encoder_type_modalities(encoder_type: str):
    if encoder_type not in ENCODER_TYPES:
        raise ValueError(
            f"encoder_type must be one of {sorted(ENCODER_TYPES)}, got {encoder_type!r}"
            + (" (no tri-modal fusion exists in ONE-PEACE)" if encoder_type == "val" else "")
        )
    return ENCODER_TYPES[encoder_type]


class ModelWrapper(nn.Module):
    def __init__(self, cfg, modalities: Sequence[str], vocab_size: Optional[int] = None,
                 pad_idx: int = 1, num_tables: int = 1):
        super().__init__()
        self.modalities = tuple(modalities)
        heads, dim = cfg.attention_heads, cfg.embed_dim
        self.text_adapter = self.image_adapter = self.audio_adapter = None
        if "text" in modalities:
            self.text_adapter = TextAdapter(cfg.text_adapter, dim, heads, vocab_size, pad_idx, num_tables,
                                            cfg.max_positions)
        if "image" in modalities:
            self.image_adapter = ImageAdapter(cfg.image_adapter, dim, heads, num_tables)
        if "audio" in modalities:
            self.audio_adapter = AudioAdapter(cfg.audio_adapter, dim, heads, num_tables, cfg.max_positions)
        self.fusion_model = FusionEncoder(cfg, modalities)

    def adapter(self, modality: str):
        module = getattr(self, f"{modality}_adapter")
        if module is None:
            raise ValueError(f"this model has no {modality} branch (built for {', '.join(self.modalities)})")
        return module

    def forward(self, src_tokens=None, text_preserve_ids=None, src_images=None, image_preserve_ids=None,
                src_audios=None, audio_padding_masks=None, audio_preserve_ids=None, encoder_type="text",
                is_second_image=False, audio_frames=None) -> Dict[str, tuple]:
        """Returns ``{modality: (features (B, S, D), padding_mask (B, S))}``.

        ``audio_frames``: conv features already extracted from ``src_audios`` (optional)."""
        modalities = encoder_type_modalities(encoder_type)
        inputs: List[AdapterOutput] = []
        for modality in modalities:
            if modality == "text":
                _require(src_tokens, "src_tokens", encoder_type)
                inputs.append(self.adapter("text")(src_tokens, text_preserve_ids))
            elif modality == "image":
                _require(src_images, "src_images", encoder_type)
                inputs.append(self.adapter("image")(src_images, image_preserve_ids, is_second_image))
            else:
                _require(src_audios, "src_audios", encoder_type)
                inputs.append(self.adapter("audio")(src_audios, audio_padding_masks, audio_preserve_ids,
                                                    frames=audio_frames))
        return self.run_fusion(inputs, modalities)

    def run_fusion(self, inputs: List[AdapterOutput], modalities) -> Dict[str, tuple]:
        features = self.fusion_model(inputs, list(modalities))
        return {m: (f, inp.padding_mask) for m, f, inp in zip(modalities, features, inputs)}


def _require(value, name, encoder_type):
    if value is None:
        raise ValueError(f"encoder_type={encoder_type!r} needs {name}")
