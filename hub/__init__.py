"""The inference hub: load a checkpoint, preprocess, embed, and the task methods (grounding, VQA, NLVR2,
zero-shot).  Imports only the plain-torch core (``models/``, ``data_utils/``, ``metrics/``): no fairseq.

    from one_peace import from_pretrained     # or: from one_peace.hub import from_pretrained
"""
from .interface import DTYPES, MODEL_TYPES, OnePeaceHubInterface, from_pretrained

__all__ = ["DTYPES", "MODEL_TYPES", "OnePeaceHubInterface", "from_pretrained"]
