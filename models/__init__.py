"""ONE-PEACE model core (plain PyTorch; fairseq is only needed for registration and the hub)."""
from .config import (AudioAdapterConfig, EncoderConfig, ImageAdapterConfig, OnePeaceClassifyConfig,
                     OnePeacePretrainConfig, OnePeaceRetrievalConfig, TextAdapterConfig)
from .one_peace import OnePeaceClassifyModel, OnePeacePretrainModel, OnePeaceRetrievalModel


def from_pretrained(*args, **kwargs):
    """Load a checkpoint into a hub interface (see ``one_peace.models.hub``)."""
    from .hub import from_pretrained as _from_pretrained

    return _from_pretrained(*args, **kwargs)
