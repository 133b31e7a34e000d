"""Glue between per-batch logging outputs and split-level metrics in fairseq's aggregators.

Sums (accuracy numerator/denominator) are logged as sum meters.  Metrics that need the
whole split (recall@K, mAP) log per-batch arrays into fairseq's ``ConcatTensorMeter``
(keys start with ``_`` so they are not printed) and a derived meter computes the metric
from the concatenation when the aggregator is read.  fairseq gathers logging outputs
from every worker before ``reduce_metrics``, so each worker sees every row exactly once
(dummy batches of workers that ran out of data contribute nothing).
"""
from typing import Callable, Dict, Iterable, Optional

import numpy as np
import torch
from fairseq import metrics


def log_accuracy(logging_outputs, key: str = "accuracy", prefix: str = "_acc") -> None:
    """``key`` = 100 * sum(<prefix>_score) / sum(<prefix>_cnt) when the logs carry them
    (``prefix="_top5"`` for a top-5 accuracy beside the top-1 one)."""
    score, count = f"{prefix}_score", f"{prefix}_cnt"
    logs = [log for log in logging_outputs if count in log]
    if not logs:
        return
    metrics.log_scalar_sum(score, sum(float(log[score]) for log in logs))
    metrics.log_scalar_sum(count, sum(int(log[count]) for log in logs))
    metrics.log_derived(key, lambda meters: round(
        100.0 * meters[score].sum / max(meters[count].sum, 1), 4))


def as_tensor(value) -> torch.Tensor:
    if torch.is_tensor(value):
        return value.detach().cpu()
    return torch.as_tensor(np.asarray(value))


def log_arrays(logging_outputs, keys: Iterable[str]) -> bool:
    """Concatenate each ``key`` over the logs (dim 0) into the meter ``_key``; False if absent."""
    found = False
    for key in keys:
        parts = [as_tensor(log[key]) for log in logging_outputs if key in log]
        parts = [p for p in parts if p.numel() or p.dim() > 1]
        if parts:
            metrics.log_concat_tensor(f"_{key}", torch.cat(parts, dim=0))
            found = True
    return found


def concatenated(meters, key: str) -> Optional[torch.Tensor]:
    meter = meters.get(f"_{key}") if hasattr(meters, "get") else None
    return None if meter is None else meter.tensor


def log_split_metrics(names: Iterable[str], compute: Callable[[object], Dict[str, float]],
                      cache_key: str) -> None:
    """Derived meters ``names`` all read one ``compute(meters)`` result, cached per state.

    The cache is keyed on the concatenated tensor named ``cache_key`` (its identity and
    length), so the split-level computation runs once per read of the aggregator.
    """
    cache = {}

    def value(meters, name):
        tensor = concatenated(meters, cache_key)
        if tensor is None:
            return 0.0
        state = (id(meters), id(tensor), tensor.size(0))
        if cache.get("state") != state:
            cache["state"], cache["result"] = state, compute(meters)
        return cache["result"].get(name, 0.0)

    for name in names:
        metrics.log_derived(name, lambda meters, name=name: value(meters, name))
