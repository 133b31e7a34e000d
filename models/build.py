"""Building a model from a saved configuration: plain code shared by the hub and the fairseq glue.

A checkpoint's ``cfg["model"]`` (fairseq's saved config dict) is merged over the config dataclass
defaults as fairseq merges it (unknown fields are an error naming them); the task's settings that
shape the model (head type, image size, classes) then adjust it as the official ``build_model`` does.
"""
import dataclasses
from typing import Dict, Iterable, Mapping, Optional

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from .config import OnePeaceClassifyConfig, OnePeacePretrainConfig, OnePeaceRetrievalConfig
from .modalities import modality_names

CONFIGS = {"one_peace_retrieval": OnePeaceRetrievalConfig, "one_peace_classify": OnePeaceClassifyConfig,
           "one_peace_pretrain": OnePeacePretrainConfig}


def _known_fields(saved, config_cls):
    """The saved values whose fields ``config_cls`` has, recursively: fairseq drops the others when it
    builds a model from a checkpoint (a pretraining checkpoint loaded as a retrieval model carries
    ``reset_logit_scale`` ...), and so do we.  ``_name`` is fairseq's bookkeeping, not a field."""
    if not isinstance(saved, Mapping) or not dataclasses.is_dataclass(config_cls):
        return saved
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    out = {}
    for key, value in saved.items():
        if key in fields and key != "_name":
            sub = fields[key].type
            out[key] = _known_fields(value, sub) if dataclasses.is_dataclass(sub) else value
    return out


def config_from_saved(config_cls, saved: Optional[Mapping], source: str = "checkpoint"):
    """A ``config_cls`` instance with the saved values over its defaults (nested configs too)."""
    base = OmegaConf.structured(config_cls)
    try:
        merged = OmegaConf.merge(base, _known_fields(dict(saved or {}), config_cls))
    except (ValidationError, ConfigKeyError) as err:
        raise ValueError(f"{source}: a saved model config value does not fit {config_cls.__name__} "
                         f"({str(err).splitlines()[0]})") from None
    return OmegaConf.to_object(merged)


def vision_adapters(encoder_cfg, modalities: Iterable[str]):
    """Adapter configs of the given modalities that take images of patch_image_size (image, video)."""
    adapters = [getattr(encoder_cfg, f"{m}_adapter", None) for m in modalities]
    return [a for a in adapters if a is not None and hasattr(a, "rel_bucket_size")]


def configure_branches(cfg, modalities: Iterable[str], patch_image_size: Optional[int]) -> None:
    """Official build-time adjustments: branches from the head type, image geometry from the task."""
    modalities = tuple(modalities)
    for m in modality_names():
        setattr(cfg.encoder, f"use_{m}_moe", m in modalities)
    if patch_image_size:
        for adapter_cfg in vision_adapters(cfg.encoder, modalities):
            adapter_cfg.rel_bucket_size = patch_image_size // 16


def configure_pretrain(cfg, patch_image_size: Optional[int]) -> None:
    """The pretraining model keeps its branch flags; encoder and decoder get the image geometry."""
    if patch_image_size:
        enabled = [m for m in modality_names() if getattr(cfg.encoder, f"use_{m}_moe", False)]
        for adapter_cfg in vision_adapters(cfg.encoder, enabled):
            adapter_cfg.rel_bucket_size = patch_image_size // 16
        for adapter_cfg in vision_adapters(cfg.decoder, enabled):
            adapter_cfg.bucket_size = patch_image_size // 16


def pretrain_load_options(stage2_pretrain: bool, reset_logit_scale: bool, state_dict) -> Dict[str, bool]:
    """Upgrade options of a pretraining model's load: stage 2 starting from a stage-1 checkpoint drops
    the image branch (and may reset the logit scale); resuming stage 2 applies none."""
    if stage2_pretrain:
        from_stage1 = any("image_adapter" in k for k in state_dict) or not any("audio_adapter" in k
                                                                              for k in state_dict)
        return {"reset_logit_scale": bool(reset_logit_scale), "drop_image": True} if from_stage1 else {}
    return {"reset_logit_scale": True} if reset_logit_scale else {}

