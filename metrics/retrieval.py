"""Recall@K for cross-modal retrieval (ids decide which pairs match).

Ranks are computed from scores, not from ``topk`` indices, and exact ties count against the
model (pessimistic): an item's rank is the number of candidates that score higher than its
best-scoring match plus the non-matching candidates that score the same.  A model that gives every
candidate one score therefore ranks each item last among its ties, not first (``topk``, as in the
official evaluation, breaks ties by position, which rewards the order of the data).
"""
from typing import Dict, Sequence

import numpy as np
import torch

DEFAULT_KS = (1, 5, 10)


def first_match_rank(scores: torch.Tensor, row_ids: torch.Tensor, col_ids: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's best matching column; -1 for rows without any match.

    scores: (R, C); row_ids (R,), col_ids (C,) integer ids; a column matches a row when
    the ids are equal.
    """
    scores = scores.float()
    match = row_ids.view(-1, 1) == col_ids.view(1, -1)
    best = scores.masked_fill(~match, float("-inf")).max(dim=1).values.unsqueeze(1)
    rank = (scores > best).sum(dim=1) + ((scores == best) & ~match).sum(dim=1)
    return torch.where(match.any(dim=1), rank, torch.full_like(rank, -1))


def recall_counts(scores, row_ids, col_ids, ks: Sequence[int] = DEFAULT_KS) -> Dict[int, int]:
    """Number of rows whose first match is within the top K (rows without a match never are)."""
    rank = first_match_rank(torch.as_tensor(scores), torch.as_tensor(row_ids), torch.as_tensor(col_ids))
    found = rank >= 0
    return {k: int((found & (rank < k)).sum()) for k in ks}


def recall_at_k(scores, row_ids, col_ids, ks: Sequence[int] = DEFAULT_KS) -> Dict[int, float]:
    """Recall@K in percent over the rows of ``scores``."""
    counts = recall_counts(scores, row_ids, col_ids, ks)
    total = max(len(row_ids), 1)
    return {k: 100.0 * c / total for k, c in counts.items()}


def retrieval_metrics(query_emb, query_ids, text_emb, text_ids, query_name: str = "audio",
                      ks: Sequence[int] = DEFAULT_KS) -> Dict[str, float]:
    """Both directions between one modality and texts, with the official key names.

    ``txt_r{K}``: query -> text (for each audio/image, is a matching caption in the top K);
    ``{query_name}_r{K}``: text -> query; ``r_mean``: mean of all of them (= the mean of the two
    directions' means ``txt_r_mean`` and ``{query_name}_r_mean``); ``txt_count`` / ``{query_name}_count``:
    how many texts / queries were ranked.
    """
    query_emb = torch.as_tensor(np.asarray(query_emb), dtype=torch.float32)
    text_emb = torch.as_tensor(np.asarray(text_emb), dtype=torch.float32)
    query_ids = torch.as_tensor(np.asarray(query_ids), dtype=torch.long)
    text_ids = torch.as_tensor(np.asarray(text_ids), dtype=torch.long)
    scores = query_emb @ text_emb.t()
    out = {}
    for k, value in recall_at_k(scores, query_ids, text_ids, ks).items():
        out[f"txt_r{k}"] = value
    for k, value in recall_at_k(scores.t(), text_ids, query_ids, ks).items():
        out[f"{query_name}_r{k}"] = value
    out["r_mean"] = float(np.mean(list(out.values()))) if out else 0.0
    # Official extras: the mean of each direction and how many items each side holds.
    out["txt_r_mean"] = float(np.mean([out[f"txt_r{k}"] for k in ks]))
    out[f"{query_name}_r_mean"] = float(np.mean([out[f"{query_name}_r{k}"] for k in ks]))
    out["txt_count"], out[f"{query_name}_count"] = float(len(text_ids)), float(len(query_ids))
    return out
