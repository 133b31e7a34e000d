"""faiss indexes over L2-normalised vectors (inner product = cosine similarity).

``flat`` is exact; ``ivf`` (IVF-Flat) and ``hnsw`` (HNSW-Flat) are approximate.  ``auto`` picks
flat below ``approx_threshold`` vectors and the approximate type above it: the default threshold
is where exact search of base-size (768-d) vectors passes ~10 ms per query on 2 CPU cores
(``bench/search.py``, ``docs/BENCHMARKS.md``).
"""
import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import numpy as np

INDEX_TYPES = ("auto", "flat", "ivf", "hnsw")
DEFAULT_APPROX_THRESHOLD = 50_000
logger = logging.getLogger("one_peace.search")


@dataclass
class IndexOptions:
    index_type: str = "auto"
    approx_threshold: int = DEFAULT_APPROX_THRESHOLD
    # what auto takes past the threshold: IVF builds in about a minute at 1e6 base-size vectors on
    # 2 cores, HNSW takes far longer (bench/search.py)
    approx_type: str = "ivf"
    nlist: Optional[int] = None  # IVF lists (default 2 sqrt(N))
    nprobe: int = 32  # IVF lists visited per query
    hnsw_m: int = 16
    ef_construction: int = 40
    ef_search: int = 64

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(**{k: v for k, v in (d or {}).items() if k in cls.__dataclass_fields__})


def faiss():
    import faiss as _faiss

    return _faiss


def resolve_type(options: IndexOptions, n: int) -> str:
    if options.index_type not in INDEX_TYPES:
        raise ValueError(f"index type must be one of {INDEX_TYPES}, got {options.index_type!r}")
    if options.index_type != "auto":
        return options.index_type
    return "flat" if n < options.approx_threshold else options.approx_type


def default_nlist(n: int) -> int:
    # ~2 sqrt(N) lists, and at least 39 training points per list (faiss warns below that).
    return max(1, min(int(2 * math.sqrt(n)), n // 39))


def ivf_lists(options: IndexOptions, n: int) -> int:
    """IVF lists for ``n`` vectors: ``options.nlist`` (default 2 sqrt(N)), at most ``n``: k-means needs a
    training point per list, and faiss fails with fewer (the recorded setting is kept and applies
    in full once the index has grown)."""
    nlist = options.nlist or default_nlist(n)
    if nlist > n:
        logger.warning("IVF nlist %d is more than the %d vectors to index: using %d lists", nlist, n, max(n, 1))
    return max(1, min(nlist, n))


def build(vectors: np.ndarray, ids: np.ndarray, kind: str, options: IndexOptions, seed: int = 0):
    """A faiss index of ``kind`` holding ``vectors`` under ``ids``."""
    f = faiss()
    n, dim = vectors.shape
    if kind == "ivf" and n == 0:
        kind = "flat"  # nothing to train the lists on
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if kind == "flat":
        index = f.IndexIDMap2(f.IndexFlatIP(dim))
    elif kind == "hnsw":
        inner = f.IndexHNSWFlat(dim, options.hnsw_m, f.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = options.ef_construction
        index = f.IndexIDMap2(inner)
    elif kind == "ivf":
        nlist = ivf_lists(options, n)
        quantizer = f.IndexFlatIP(dim)
        index = f.IndexIVFFlat(quantizer, dim, nlist, f.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        sample = vectors
        if n > 64 * nlist:  # k-means on a sample: enough for the centroids, far cheaper
            sample = vectors[np.random.default_rng(seed).choice(n, 64 * nlist, replace=False)]
        index.train(sample)
        quantizer.this.disown()  # the index frees its quantizer (else Python frees it under the index)
        index.own_fields = True
    else:
        raise ValueError(f"unknown index type {kind!r}")
    if n:
        index.add_with_ids(vectors, ids)
    return index


def set_search_params(index, options: IndexOptions) -> None:
    f = faiss()
    inner = f.downcast_index(index.index) if isinstance(index, f.IndexIDMap2) else index
    if isinstance(inner, f.IndexHNSW):
        inner.hnsw.efSearch = max(1, options.ef_search)  # a bad recorded value still searches
    elif isinstance(inner, f.IndexIVF):
        inner.nprobe = max(1, min(options.nprobe, inner.nlist))


def kind_of(index) -> str:
    f = faiss()
    inner = f.downcast_index(index.index) if isinstance(index, f.IndexIDMap2) else f.downcast_index(index)
    if isinstance(inner, f.IndexHNSW):
        return "hnsw"
    if isinstance(inner, f.IndexIVF):
        return "ivf"
    return "flat"


def search(index, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """(scores (Q, k), ids (Q, k)); missing neighbours have id -1."""
    k = max(1, min(k, index.ntotal)) if index.ntotal else 1
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def save(index, path: str) -> None:
    """Written beside and renamed over: a reader never sees half a file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    faiss().write_index(index, tmp)
    os.replace(tmp, path)


def load(path: str):
    return faiss().read_index(path)


def nbytes(index) -> int:
    """Serialised size: what the index holds (vectors, graph or lists, ids)."""
    return int(faiss().serialize_index(index).nbytes)
