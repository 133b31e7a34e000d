"""Macro mean average precision (FSD50K), equal to sklearn's ``average_precision_score`` per class.

AP of one class = sum over distinct score thresholds (descending) of
(recall_i - recall_{i-1}) * precision_i, i.e. sklearn's step-wise definition (no
interpolation).  Classes without a positive example have no defined AP and are left
out of the mean; how many were used is reported.
"""
from typing import Tuple

import numpy as np


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class; ``nan`` when there is no positive."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets).ravel() > 0
    num_pos = int(targets.sum())
    if num_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    scores, targets = scores[order], targets[order]
    # Last index of each run of equal scores: tied items enter the ranking together.
    last_of_run = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]
    true_pos = np.cumsum(targets)[last_of_run]
    precision = true_pos / (last_of_run + 1)
    recall = true_pos / num_pos
    recall_steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_steps * precision))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> Tuple[float, int]:
    """(mean AP in percent over classes with a positive, number of such classes).

    scores, targets: (N, C); targets are 0/1 (multi-hot).
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must be equal (N, C) arrays")
    aps = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    aps = [ap for ap in aps if not np.isnan(ap)]
    if not aps:
        return 0.0, 0
    return 100.0 * float(np.mean(aps)), len(aps)
