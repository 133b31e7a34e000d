"""ONE-PEACE model core: plain PyTorch, imports neither fairseq nor the hub above it.

The hub (``from_pretrained``) moved to ``one_peace.hub`` (``from one_peace import from_pretrained``).
"""
from . import builtin_modalities  # noqa: F401 - fills the modality registry before anything reads it
from .config import (
    AudioAdapterConfig,
    EncoderConfig,
    ImageAdapterConfig,
    OnePeaceClassifyConfig,
    OnePeacePretrainConfig,
    OnePeaceRetrievalConfig,
    TextAdapterConfig,
)
from .modalities import Modality, get_modality, modality_names, register_modality
from .one_peace import OnePeaceClassifyModel, OnePeacePretrainModel, OnePeaceRetrievalModel

__all__ = ["AudioAdapterConfig", "EncoderConfig", "ImageAdapterConfig", "OnePeaceClassifyConfig",
           "OnePeacePretrainConfig", "OnePeaceRetrievalConfig", "TextAdapterConfig", "Modality", "get_modality",
           "modality_names", "register_modality", "OnePeaceClassifyModel", "OnePeacePretrainModel",
           "OnePeaceRetrievalModel"]



def __getattr__(name):
    if name == "from_pretrained":  # it lived here before the hub had its own layer
        raise ImportError("one_peace.models.from_pretrained moved: use `from one_peace import from_pretrained` "
                             "(or one_peace.hub)")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
