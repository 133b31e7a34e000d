"""Configuration dataclasses with every field (and default) of the official config.

An official checkpoint stores its resolved config as a nested dict; fairseq merges it
into these dataclasses, so every key it contains must exist here, including fields the
model never reads (``normalize_before``, ``learned_pos``, ``freeze_extractor`` ...).

These are plain dataclasses, so ``one_peace.models`` imports without fairseq (fast, and
without fairseq's side effects on logging).  The fairseq glue registers their
``FairseqDataclass`` twins (``fairseq_glue/registration.py:fairseq_config``), field for field.
"""
from dataclasses import dataclass, field
from typing import Any, Optional

from ..data_utils.feature_spec import OFFICIAL_FEATURE_ENCODER_SPEC as DEFAULT_FEATURE_ENCODER_SPEC


@dataclass
class TextAdapterConfig:
    bucket_size: int = 256
    layernorm_embedding: bool = False
    add_type_embedding: bool = False
    shrink_alpha: float = 1.0
    dropout: float = 0.0
    use_attn_bias: bool = False


@dataclass
class ImageAdapterConfig:
    bucket_size: int = 16
    rel_bucket_size: int = 16
    layernorm_embedding: bool = False
    add_type_embedding: bool = False
    vision_encoder_type: str = "hmlp"  # mlp | hmlp | none
    shrink_alpha: float = 1.0
    dropout: float = 0.0
    use_attn_bias: bool = False


@dataclass
class AudioAdapterConfig:
    feature_embed_dim: int = 512  # not read: the extractor width comes from the spec
    feature_encoder_spec: Optional[str] = DEFAULT_FEATURE_ENCODER_SPEC
    abs_pos_type: str = "conv"  # conv | fixed
    conv_pos_depth: int = 5
    conv_pos_width: int = 95
    conv_pos_groups: int = 16
    conv_pos_pre_ln: bool = False
    bucket_size: int = 256
    layernorm_embedding: bool = False
    add_type_embedding: bool = False
    shrink_alpha: float = 1.0
    dropout: float = 0.0
    use_attn_bias: bool = False
    conv_bias: bool = False
    freeze_extractor: bool = False  # kept for config compatibility; not read
    # Not an official field.  The official code back-propagates into frames computed from zero
    # padding, where zero-variance LayerNorms inflate gradients (~1e13 seen); True stops that
    # gradient (the forward is unchanged).  False reproduces the official gradients exactly.
    block_padding_gradient: bool = True


@dataclass
class VideoAdapterConfig:
    """Not an official adapter (``docs/VIDEO.md``): per-frame image patches + temporal positions.
    Vision geometry follows the image adapter's fields; ``num_frames`` is the longest clip."""

    num_frames: int = 8
    bucket_size: int = 16
    rel_bucket_size: int = 16
    layernorm_embedding: bool = False
    add_type_embedding: bool = False
    vision_encoder_type: str = "hmlp"  # mlp | hmlp | none (the pretraining decoder)
    shrink_alpha: float = 1.0
    dropout: float = 0.0
    use_attn_bias: bool = True
    # A checkpoint whose image branch initialises the video branch when the loaded checkpoint has
    # neither (our stage-2 checkpoints drop the image branch: name the stage-1 checkpoint here).
    image_init_checkpoint: Optional[str] = None


@dataclass
class EncoderConfig:
    """``AdjustEncDecConfig``: fairseq's EncDecBaseConfig fields + ONE-PEACE fields."""

    embed_path: Optional[str] = None
    embed_dim: int = 512
    ffn_embed_dim: int = 2048
    layers: int = 6
    attention_heads: int = 8
    normalize_before: bool = False  # unused: ONE-PEACE is always pre-LN
    learned_pos: bool = False  # unused
    layerdrop: float = 0.0
    layers_to_keep: Optional[Any] = None
    text_adapter: TextAdapterConfig = field(default_factory=TextAdapterConfig)
    image_adapter: ImageAdapterConfig = field(default_factory=ImageAdapterConfig)
    audio_adapter: AudioAdapterConfig = field(default_factory=AudioAdapterConfig)
    video_adapter: VideoAdapterConfig = field(default_factory=VideoAdapterConfig)  # not official
    drop_path_rate: float = 0.0
    magneto_scale_attn: bool = False
    scale_attn: bool = True
    scale_fc: bool = True
    scale_heads: bool = True
    use_text_moe: bool = True
    use_image_moe: bool = True
    use_audio_moe: bool = True
    use_video_moe: bool = False  # not official: off unless a video task or config turns it on
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
