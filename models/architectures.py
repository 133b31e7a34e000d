"""Size presets registered as fairseq architectures (``--arch one_peace_<model>_<size>``).

A preset fills the fields that are still at their dataclass default, like fairseq's
legacy ``base_architecture`` functions, so explicit yaml/CLI values win -- except a value
equal to the dataclass default, which cannot be told from an unset one and takes the
preset's (e.g. ``drop_path_rate: 0.0`` under a 4b preset gives 0.4).
"""
import dataclasses

from . import builtin_modalities  # noqa: F401 - adapter presets come from the registry entries
from .builtin_modalities import TINY_AUDIO_SPEC as TINY_SPEC  # noqa: F401 - the tiny audio conv stack
from .modalities import all_modalities

RELEASE_ENCODER = dict(
    embed_dim=1536, ffn_embed_dim=6144, layers=40, attention_heads=24, normalize_before=True,
    learned_pos=True, drop_path_rate=0.4, magneto_scale_attn=True, scale_attn=False, scale_fc=True,
    scale_heads=False, use_layer_scale=True, layer_scale_init_value=1e-6, dropout=0.0,
)


def decoder_preset(dim, ffn, layers, heads):
    return dict(
        embed_dim=dim, ffn_embed_dim=ffn, layers=layers, attention_heads=heads, normalize_before=True,
        learned_pos=True, drop_path_rate=0.0, magneto_scale_attn=True, scale_attn=False, scale_fc=True,
        scale_heads=False, use_layer_scale=False, dropout=0.0,
    )


# The modality-independent part of each size; each modality's adapter part is its registry entry's
# ``presets`` (models/builtin_modalities.py).
SIZES = {
    # The development size of the parity fixtures (64 wide, 2 layers, 4 heads).
    "tiny": dict(encoder=dict(RELEASE_ENCODER, embed_dim=64, ffn_embed_dim=128, layers=2, attention_heads=4,
                              drop_path_rate=0.0),
                 decoder=decoder_preset(32, 64, 1, 2)),
    # About ViT-B scale: 768 wide, 12 layers, 12 heads.
    "base": dict(encoder=dict(RELEASE_ENCODER, embed_dim=768, ffn_embed_dim=2048, layers=12, attention_heads=12,
                              drop_path_rate=0.1),
                 decoder=decoder_preset(384, 1024, 2, 6)),
    # The released 4B model (run_scripts/finetune_3B.yaml and pretrain_*_3B.yaml).
    "4b": dict(encoder=RELEASE_ENCODER, decoder=decoder_preset(768, 2048, 2, 12)),
}


def size_presets() -> dict:
    """``{size: {"encoder": {...}, "decoder": {...}}}`` with ``<m>_adapter`` of every registered modality."""
    presets = {}
    for size, parts in SIZES.items():
        presets[size] = {part: dict(values) for part, values in parts.items()}
        for modality in all_modalities():
            for part, values in modality.presets.get(size, {}).items():
                presets[size][part][modality.config_field] = dict(values)
    return presets


PRESETS = size_presets()


# Width of the segmentation decoder (UperNet / auxiliary FCN) per size; merged into the size presets of
# ``one_peace_segmentation_<size>`` (BEiT's base UperNet is 768 wide; mmseg's default 512).
SEGMENTATION_HEADS = {
    "tiny": dict(seg_channels=32, aux_channels=16),
    "base": dict(seg_channels=768, aux_channels=256),
    "4b": dict(seg_channels=1024, aux_channels=256),
}


def fill_unset(cfg, defaults):
    """Give fields that are None the dataclass default when that is not None.

    ``fairseq-train``'s flags for nested model fields carry no defaults, so every nested field not
    on the command line arrives as None (the audio conv stack would silently vanish).
    """
    for f in dataclasses.fields(defaults):
        default = getattr(defaults, f.name)
        if dataclasses.is_dataclass(default):
            fill_unset(getattr(cfg, f.name), default)
        elif getattr(cfg, f.name, None) is None and default is not None:
            setattr(cfg, f.name, default)


def apply_preset(cfg, preset: dict, defaults):
    """Set ``cfg`` fields (attribute access: dataclass or DictConfig) still equal to ``defaults``."""
    fill_unset(cfg, defaults)
    for key, value in preset.items():
        default = getattr(defaults, key)
        if isinstance(value, dict):
            apply_preset(getattr(cfg, key), value, default)
        elif getattr(cfg, key) == default:
            setattr(cfg, key, value)


def preset_config(config_cls, size: str):
    """A fully populated config dataclass instance of the given size."""
    cfg = config_cls()
    apply_preset(cfg, PRESETS[size], config_cls())
    return cfg

