"""Configuration dataclasses with every field (and default) of the official config.

An official checkpoint stores its resolved config as a nested dict; fairseq merges it
into these dataclasses, so every key it contains must exist here, including fields the
model never reads (``normalize_before``, ``learned_pos``, ``freeze_extractor`` ...).

These are plain dataclasses, so ``one_peace.models`` imports without fairseq (fast, and
without fairseq's side effects on logging).  The fairseq glue registers their
``FairseqDataclass`` twins (``fairseq_glue/registration.py:fairseq_config``), field for field.
"""
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Optional

from . import builtin_modalities  # noqa: F401 - the registry must be full before EncoderConfig is made
from .adapters.audio import AudioAdapterConfig
from .adapters.image import ImageAdapterConfig
from .adapters.text import TextAdapterConfig
from .adapters.video import VideoAdapterConfig
from .modalities import all_modalities

__all__ = ["AudioAdapterConfig", "ImageAdapterConfig", "TextAdapterConfig", "VideoAdapterConfig", "EncoderConfig",
           "OnePeaceBaseConfig", "OnePeaceRetrievalConfig", "OnePeaceClassifyConfig", "OnePeacePretrainConfig",
           "OnePeaceSegmentationConfig"]


@dataclass
class _EncoderFields:
    """The modality-independent fields of ``AdjustEncDecConfig`` (fairseq's EncDecBaseConfig + ONE-PEACE)."""

    embed_path: Optional[str] = None
    embed_dim: int = 512
    ffn_embed_dim: int = 2048
    layers: int = 6
    attention_heads: int = 8
    normalize_before: bool = False  # unused: ONE-PEACE is always pre-LN
    learned_pos: bool = False  # unused
    layerdrop: float = 0.0
    layers_to_keep: Optional[Any] = None
    drop_path_rate: float = 0.0
    magneto_scale_attn: bool = False
    scale_attn: bool = True
    scale_fc: bool = True
    scale_heads: bool = True
    use_layer_scale: bool = True
    layer_scale_init_value: float = 1e-2
    activation_fn: str = "gelu"  # unused: GeGLU uses exact GELU
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    max_positions: int = 1024
    checkpoint_activations: bool = False
    fsdp_checkpoint_wrap_layer_preserve_frequency: int = 1
    fsdp_checkpoint_wrap_layer_skip_frequency: int = 1000
    offload_activations: bool = False


def _modality_fields():
    """``<m>_adapter`` and ``use_<m>_moe`` of every registered modality: a branch is on by default when
    it is part of the released model (``Modality.official``); video and later ones are off."""
    fields = []
    for m in all_modalities():
        fields.append((m.config_field, m.config_cls, field(default_factory=m.config_cls)))
        fields.append((m.moe_flag, bool, field(default=m.official)))
    return fields


# One field pair per registered modality, from the registry (models/builtin_modalities.py).
EncoderConfig = make_dataclass("EncoderConfig", _modality_fields(), bases=(_EncoderFields,))
EncoderConfig.__module__ = __name__
EncoderConfig.__doc__ = ("``AdjustEncDecConfig``: fairseq's EncDecBaseConfig fields + ONE-PEACE fields, with "
                         "``<m>_adapter`` / ``use_<m>_moe`` for each registered modality.")


@dataclass
class OnePeaceBaseConfig:
    _name: Optional[str] = None

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: EncoderConfig = field(default_factory=EncoderConfig)


@dataclass
class OnePeaceRetrievalConfig(OnePeaceBaseConfig):
    copy_rel_pos_table: bool = False


@dataclass
class OnePeaceClassifyConfig(OnePeaceBaseConfig):
    head_scale_ratio: int = 1
    use_pooler: bool = False
    pooler_dropout: float = 0.0
    attn_pooling: bool = False
    use_image_features: bool = False
    freeze_finetune_updates: int = 0


@dataclass
class OnePeacePretrainConfig(OnePeaceBaseConfig):
    reset_logit_scale: bool = False
    logit_scale_init: float = 1 / 0.07
    stage2_pretrain: bool = False


@dataclass
class OnePeaceSegmentationConfig(OnePeaceBaseConfig):
    """UperNet decoder on the image encoder (``models/segmentation.py``); not an official model."""

    seg_layers: Optional[str] = None  # comma-separated encoder layers (default: the quarter points)
    seg_channels: int = 512  # UperNet / PPM / FPN width
    seg_pool_scales: str = "1,2,3,6"  # PPM
    seg_dropout: float = 0.1  # Dropout2d before the classifier (mmseg)
    aux_head: bool = True  # FCN head on the third pyramid level (training only)
    aux_channels: int = 256
