"""Accuracy of the arg-max prediction against hard labels or soft target scores."""
from typing import Tuple

import torch


def accuracy_sum(logits: torch.Tensor, target: torch.Tensor) -> Tuple[float, int]:
    """(score summed over samples, number of samples).

    1-D ``target`` holds class ids: a sample scores 1 when the arg-max is its class.
    2-D ``target`` holds a score per class (VQA soft scores): a sample scores the
    target value at the arg-max.  Divide the sum by the count for the accuracy.
    """
    pred = logits.argmax(dim=-1)
    if target.dim() == 1:
        score = (pred == target).sum()
    elif target.dim() == 2:
        if target.shape != logits.shape:
            raise ValueError(f"soft targets {tuple(target.shape)} must match logits {tuple(logits.shape)}")
        score = target.float().gather(1, pred.unsqueeze(1)).sum()
    else:
        raise ValueError(f"target must be 1-D (class ids) or 2-D (scores), got {tuple(target.shape)}")
    return float(score), int(pred.numel())


def topk_accuracy_sum(logits: torch.Tensor, target: torch.Tensor, k: int = 5) -> Tuple[float, int]:
    """(samples whose class id is among the ``k`` highest scores, number of samples); 1-D ``target``.
    With fewer than ``k`` classes every sample counts (top-5 of a 3-class problem is 100 %)."""
    if target.dim() != 1:
        raise ValueError(f"top-k accuracy needs 1-D class-id targets, got {tuple(target.shape)}")
    top = logits.topk(min(k, logits.size(-1)), dim=-1).indices
    return float((top == target.unsqueeze(1)).any(dim=1).sum()), int(target.numel())


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Accuracy in percent."""
    score, count = accuracy_sum(logits, target)
    return 100.0 * score / max(count, 1)
