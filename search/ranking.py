"""One modality's ranking for a query: filtered (an ID selector in faiss, or exact scores of the few
allowed vectors), cut at a minimum score, and paged (``offset`` / ``limit``).

The order is by score, then by vector id, and complete at ties (results tied with the last one of a
page are all fetched before the page is cut), so a page is the same slice of the same ranking at every
request while the index does not change.  Exact (``flat``) and IVF indexes rank a fixed candidate set
(all vectors, or those of the ``nprobe`` probed lists), so their pages always join up.  HNSW's
candidates grow with its search breadth and ``ivfsq``'s with the results asked for (``refine_factor``
per result are re-ranked exactly), so they are asked for a block of results, the power of two at or
above the depth (at least 64): pages within one block join up (``docs/SEARCH.md``, "Pages").
"""
import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import numpy as np

from . import vector_index

EXACT_MAX = 4096  # allowed vectors scored exactly (read once from SQLite), whatever the index
MAX_DEPTH = 10_000  # offset + limit: deeper pages cost a search this wide


@dataclass
class Allowed:
    """The vector ids a filter lets through (ascending), with their faiss selector made once, and for
    the exact path their vectors read once."""
    ids: np.ndarray
    _selector: object = field(default=None, repr=False)
    _vectors: Optional[np.ndarray] = field(default=None, repr=False)

    def selector(self):
        if self._selector is None:
            self._selector = vector_index.faiss().IDSelectorBatch(self.ids)
        return self._selector

    def vectors(self, read: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        if self._vectors is None:
            self._vectors = read(self.ids)
        return self._vectors


@dataclass
class Page:
    hits: List[Tuple[int, float]]  # (vector id, score) of this page, best first
    offset: int
    limit: int
    has_more: bool
    total: Optional[int]  # results in all (before paging); None when unknown without a full search

    def info(self):
        return {"offset": self.offset, "limit": self.limit, "has_more": self.has_more, "total": self.total}


def check_page(offset: int, limit: int) -> None:
    if offset < 0:
        raise ValueError(f"offset must be 0 or more, got {offset}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if offset + limit > MAX_DEPTH:
        raise ValueError(f"offset + limit must be at most {MAX_DEPTH}, got {offset + limit}")


def rank_page(index, query: np.ndarray, offset: int, limit: int, allowed: Optional[Allowed] = None,
              min_score: Optional[float] = None, options: Optional[vector_index.IndexOptions] = None,
              vectors_of: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> Page:
    """The page ``[offset, offset + limit)`` of the ranking of ``index`` (a faiss index of vector ids)
    for ``query``; ``allowed`` restricts it (``vectors_of(ids)`` reads vectors for the exact path)."""
    check_page(offset, limit)
    want = offset + limit + 1  # one more than the page: whether there is a next one
    query = np.ascontiguousarray(np.asarray(query, np.float32).reshape(1, -1))
    available = index.ntotal if allowed is None else len(allowed.ids)
    exact = vector_index.kind_of(index) == "flat"
    if available == 0:
        pairs, complete = [], True
    elif allowed is not None and available <= EXACT_MAX and vectors_of is not None:
        # a few allowed vectors: scored exactly (cheaper than faiss asking the selector of every vector)
        pairs, complete, exact = _exact(query[0], allowed.ids, allowed.vectors(vectors_of)), True, True
    else:
        pairs, complete = _faiss_ranking(index, query, want, allowed, available, options or vector_index.IndexOptions())
    if min_score is not None:
        cut = [p for p in pairs if p[1] >= min_score]
        complete = complete or len(cut) < len(pairs)  # a score below the cut was reached: nothing after passes
        pairs = cut
    total = len(pairs) if complete else (available if exact and min_score is None else None)
    return Page(pairs[offset:offset + limit], offset, limit, len(pairs) > offset + limit, total)


def _exact(query: np.ndarray, ids: np.ndarray, vectors: np.ndarray) -> List[Tuple[int, float]]:
    scores = vectors @ query
    order = np.lexsort((ids, -scores))
    return [(int(ids[i]), float(scores[i])) for i in order]


def _faiss_ranking(index, query, want, allowed, available, options) -> Tuple[List[Tuple[int, float]], bool]:
    """(pairs sorted by score then id, whether they are every candidate there is)."""
    # HNSW's candidates grow with its breadth and ivfsq's with k (k_factor * k are re-ranked): both are
    # asked for a whole block (a power of two, at least 64) so that the pages within it agree
    blocked = vector_index.kind_of(index) in BLOCKED_KINDS
    k = min(_block(want) if blocked else want, available)
    while True:
        scores, ids = index.search(query, k, params=_params(index, k, allowed, options))
        pairs = sorted(((int(i), float(s)) for s, i in zip(scores[0], ids[0]) if i >= 0), key=lambda p: (-p[1], p[0]))
        if len(pairs) < k or k >= available:
            return pairs, True  # every candidate (an approximate index may hold fewer than ``available``)
        if want > len(pairs) or pairs[-1][1] < pairs[want - 2][1]:
            return pairs, False  # the last fetched scores below the page's last: no tie crosses the cut
        k = min(2 * k, available)  # the page's last result ties with what follows: fetch every tie


BLOCKED_KINDS = ("hnsw", "ivfsq")


def _block(k: int) -> int:
    """The power of two at or above ``k``, at least 64."""
    return max(64, 1 << max(k - 1, 1).bit_length())


def _params(index, k: int, allowed: Optional[Allowed], options: vector_index.IndexOptions):
    """faiss search parameters: the ID selector, and for approximate indexes a search wide enough
    for ``k`` results of the allowed fraction."""
    f = vector_index.faiss()
    sel = allowed.selector() if allowed is not None else None
    fraction = 1.0 if allowed is None else max(len(allowed.ids) / max(index.ntotal, 1), 1e-9)
    kind = vector_index.kind_of(index)
    extra = {} if sel is None else {"sel": sel}
    if kind in ("ivf", "ivfsq"):  # ivfsq (vector_index.RefinedIVF) reads nprobe and sel from IVF parameters
        nlist = index.nlist if kind == "ivfsq" else f.downcast_index(index).nlist
        return f.SearchParametersIVF(nprobe=min(nlist, math.ceil(max(1, options.nprobe) / fraction)), **extra)
    if kind == "hnsw":
        ef = min(int(max(options.ef_search, k) / fraction), max(index.ntotal, 1))
        return f.SearchParametersHNSW(efSearch=max(ef, 1), **extra)
    return f.SearchParameters(**extra) if sel is not None else None
