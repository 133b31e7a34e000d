"""Per-pixel cross-entropy and pixel hits over labelled pixels (semantic segmentation).

Pixels labelled ``ignore_index`` (255, the annotation convention of ``data_utils/segmentation.py``)
are left out, as in :func:`one_peace.metrics.segmentation.confusion_matrix`.
"""
import torch
import torch.nn.functional as F


def pixel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255):
    """Mean CE over labelled pixels; logits (B, C, H, W) or (C, H, W), target of the same spatial shape."""
    if logits.dim() == 3:  # one image
        logits, target = logits[None], target[None]
    labelled = int((target != ignore_index).sum())
    loss = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return loss / max(labelled, 1)


def pixel_hits(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255):
    """(correct, labelled) pixel counts of the arg-max over dim -3."""
    keep = target != ignore_index
    return int((logits.argmax(dim=-3)[keep] == target[keep]).sum()), int(keep.sum())
