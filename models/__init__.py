"""ONE-PEACE model core (plain PyTorch; fairseq is only needed for registration and the hub)."""
from .config import (
    AudioAdapterConfig,
    EncoderConfig,
    ImageAdapterConfig,
    OnePeaceClassifyConfig,
    OnePeacePretrainConfig,
    OnePeaceRetrievalConfig,
    TextAdapterConfig,
)
from .hub import from_pretrained  # imports no fairseq until called
from .modalities import Modality, get_modality, modality_names, register_modality
from .one_peace import OnePeaceClassifyModel, OnePeacePretrainModel, OnePeaceRetrievalModel

__all__ = ["AudioAdapterConfig", "EncoderConfig", "ImageAdapterConfig", "OnePeaceClassifyConfig",
           "OnePeacePretrainConfig", "OnePeaceRetrievalConfig", "TextAdapterConfig", "Modality", "get_modality",
           "modality_names", "register_modality", "OnePeaceClassifyModel", "OnePeacePretrainModel",
           "OnePeaceRetrievalModel", "from_pretrained"]

