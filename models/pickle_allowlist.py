"""The torch.load allow-list of fairseq checkpoints (``weights_only`` loading), shared by the checkpoint readers."""
import argparse
import collections

import numpy as np
import torch


def _safe_globals():
    # What fairseq checkpoints (official and ours) pickle besides tensors and containers.
    items = [argparse.Namespace, collections.OrderedDict, collections.defaultdict, np.dtype]
    for name in ("float64", "float32", "int64", "int32", "bool_"):
        items.append(getattr(np, name))
        items.append(type(np.dtype(name)))
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    items.append(scalar)
    return items


def register_safe_globals():
    """Allow-list the non-tensor types of fairseq checkpoints for ``weights_only`` loading.

    fairseq's own loader calls ``torch.load`` with the default ``weights_only=True``.
    """
    torch.serialization.add_safe_globals(_safe_globals())
