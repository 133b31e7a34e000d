"""Box metrics for visual grounding (RefCOCO/+/g): IoU, generalised IoU, accuracy at IoU >= 0.5.

Boxes are ``(x0, y0, x1, y1)`` tensors of shape (N, 4), compared row by row.
"""
from typing import Tuple

import torch


def _intersection(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0]))
    height = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1]))
    return width.clamp(min=0) * height.clamp(min=0), width, height


def area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of each row of ``a`` with the same row of ``b``."""
    inter, _, _ = _intersection(a, b)
    return inter / (area(a) + area(b) - inter)


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GIoU (Rezatofighi et al. 2019) row by row: IoU - (hull - union) / hull."""
    inter, _, _ = _intersection(a, b)
    union = area(a) + area(b) - inter
    hull = ((torch.maximum(a[:, 2], b[:, 2]) - torch.minimum(a[:, 0], b[:, 0]))
            * (torch.maximum(a[:, 3], b[:, 3]) - torch.minimum(a[:, 1], b[:, 1])))
    return inter / union - (hull - union) / hull


def iou_hits(hyps: torch.Tensor, refs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Bool per row: IoU >= threshold with a non-empty intersection (the official IouAcc)."""
    inter, width, height = _intersection(hyps.double(), refs.double())
    iou = inter / (area(hyps.double()) + area(refs.double()) - inter)
    return (iou >= threshold) & (width > 0) & (height > 0)


def boxes_to_pixels(logits: torch.Tensor, w_ratios: torch.Tensor, h_ratios: torch.Tensor, size: int):
    """Normalised predictions -> xyxy boxes in each original image's pixels."""
    boxes = torch.sigmoid(logits.float()).double() * size
    scale = torch.stack([w_ratios, h_ratios, w_ratios, h_ratios], dim=1).double()
    return boxes / scale
