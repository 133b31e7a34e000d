"""Semantic segmentation metrics (mmseg definitions), in percent, from a confusion matrix.

The confusion matrix ``cm[label, prediction]`` counts pixels; pixels whose label is
``ignore_index`` are left out.  Per class ``c``:

* ``IoU[c] = cm[c, c] / (cm[c, :].sum() + cm[:, c].sum() - cm[c, c])``
* ``Acc[c] = cm[c, c] / cm[c, :].sum()``

A class with an empty denominator (absent from both labels and predictions for IoU, absent
from the labels for Acc) is NaN and left out of the means ``mIoU`` / ``mAcc``; a class that is
predicted but absent from the labels has IoU 0 and counts.  ``aAcc = trace / cm.sum()`` is the
pixel accuracy.  Every returned value is a percentage (0-100), as every metric of the project.

Accumulating: ``confusion_matrix`` of each batch (or worker) adds up; ``metrics_from_confusion``
turns the sum into the split's metrics, so a split need not be held in memory.
"""
from typing import Dict, Sequence, Union

import numpy as np

ArrayLike = Union[np.ndarray, "torch.Tensor"]  # noqa: F821 - torch is optional here


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def confusion_matrix(pred, label, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(num_classes, num_classes) int64 counts ``cm[label, prediction]`` of one or more maps.

    ``pred`` and ``label`` are integer arrays of equal shape (numpy or torch), or lists of them.
    A label outside ``[0, num_classes)`` other than ``ignore_index``, or a prediction outside
    ``[0, num_classes)`` at a counted pixel, is a ValueError.
    """
    if isinstance(pred, (list, tuple)):
        if not isinstance(label, (list, tuple)) or len(pred) != len(label):
            raise ValueError("pred and label must both be maps or lists of maps of the same length")
        cm = np.zeros((num_classes, num_classes), dtype=np.int64)
        for p, t in zip(pred, label):
            cm += confusion_matrix(p, t, num_classes, ignore_index)
        return cm
    pred, label = _numpy(pred), _numpy(label)
    if pred.shape != label.shape:
        raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in shape")
    keep = label != ignore_index
    label, pred = label[keep].astype(np.int64), pred[keep].astype(np.int64)
    for name, values in (("label", label), ("prediction", pred)):
        bad = (values < 0) | (values >= num_classes)
        if bad.any():
            raise ValueError(f"{name} values {sorted(set(values[bad].tolist()))[:10]} lie outside "
                             f"[0, {num_classes}) (ignore index {ignore_index})")
    return np.bincount(label * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def metrics_from_confusion(cm: ArrayLike) -> Dict[str, object]:
    """``{"mIoU", "mAcc", "aAcc"}`` (floats, percent; NaN when no class has a value) and per-class
    ``"IoU"``, ``"Acc"`` (float64 arrays, percent, NaN where undefined) of a confusion matrix."""
    cm = _numpy(cm).astype(np.float64)
    intersect = np.diag(cm)
    area_label, area_pred = cm.sum(axis=1), cm.sum(axis=0)
    union = area_label + area_pred - intersect
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersect / union, np.nan) * 100
        acc = np.where(area_label > 0, intersect / area_label, np.nan) * 100
    total = cm.sum()
    return {"mIoU": _nanmean(iou), "mAcc": _nanmean(acc),
            "aAcc": float(intersect.sum() / total * 100) if total else float("nan"), "IoU": iou, "Acc": acc}


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def mean_iou(pred, label, num_classes: int, ignore_index: int = 255) -> Dict[str, object]:
    """mmseg's ``mean_iou`` over one map or a list of maps: ``mIoU``, ``mAcc``, ``aAcc`` and
    per-class ``IoU`` / ``Acc``, all in percent (see the module doc)."""
    return metrics_from_confusion(confusion_matrix(pred, label, num_classes, ignore_index))


def per_class(result: Dict[str, object], names: Sequence[str]) -> Dict[str, Dict[str, object]]:
    """``{name: {"IoU": x, "Acc": y}}`` with NaN as None (JSON has no NaN)."""
    def plain(v):
        return None if np.isnan(v) else round(float(v), 4)

    return {name: {"IoU": plain(i), "Acc": plain(a)} for name, i, a in zip(names, result["IoU"], result["Acc"])}
