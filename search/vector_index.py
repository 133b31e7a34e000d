"""faiss indexes over L2-normalised vectors (inner product = cosine similarity).

``flat`` is exact; ``ivfsq``, ``ivf`` (IVF-Flat) and ``hnsw`` (HNSW-Flat) are approximate.  ``ivfsq`` is
IVF over 8-bit scalar-quantised codes (a quarter of the float vectors) whose best ``refine_factor * k``
candidates are re-ranked with float16 copies of the vectors (faiss ``IndexRefine``): its ranking is
that of the cosines (scores within 3e-4 of them), its file three quarters of a flat index's.  Saved
indexes are read memory-mapped (``IO_FLAG_MMAP_IFC``): resident memory is at most the file, and the
part the queries touch is only page cache.

``auto`` picks flat below ``approx_threshold`` vectors and ``approx_type`` above it.  The defaults are
``bench/search.py``'s measurements (``docs/BENCHMARKS.md``, "Search"): at 1e6 base-size (768-d) vectors
of real-embedding structure ``ivfsq`` answers a query in under 10 ms on 2 CPU cores with recall@10 of
at least 0.95 against exact search; exact search passes 10 ms per query near the threshold.
"""
import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import numpy as np

INDEX_TYPES = ("auto", "flat", "ivfsq", "ivf", "hnsw")
APPROX_TYPES = ("ivfsq", "ivf", "hnsw")
DEFAULT_APPROX_THRESHOLD = 30_000
logger = logging.getLogger("one_peace.search")


@dataclass
class IndexOptions:
    index_type: str = "auto"
    approx_threshold: int = DEFAULT_APPROX_THRESHOLD
    approx_type: str = "ivfsq"  # what auto takes past the threshold (bench/search.py)
    nlist: Optional[int] = None  # IVF lists (default 2 sqrt(N))
    nprobe: int = 32  # IVF lists visited per query
    refine_factor: int = 10  # ivfsq: candidates re-ranked (float16 copies) per result asked for
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
    if kind in ("ivf", "ivfsq") and n == 0:
        kind = "flat"  # nothing to train the lists on
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if kind == "flat":
        index = f.IndexIDMap2(f.IndexFlatIP(dim))
    elif kind == "hnsw":
        inner = f.IndexHNSWFlat(dim, options.hnsw_m, f.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = options.ef_construction
        index = f.IndexIDMap2(inner)
    elif kind in ("ivf", "ivfsq"):
        nlist = ivf_lists(options, n)
        quantizer = f.IndexFlatIP(dim)
        if kind == "ivf":
            index = f.IndexIVFFlat(quantizer, dim, nlist, f.METRIC_INNER_PRODUCT)
        else:
            index = f.IndexIVFScalarQuantizer(quantizer, dim, nlist, f.ScalarQuantizer.QT_8bit,
                                              f.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        sample = vectors
        if n > 64 * nlist:  # k-means (and the 8-bit ranges) on a sample: enough, and far cheaper
            sample = vectors[np.random.default_rng(seed).choice(n, 64 * nlist, replace=False)]
        index.train(sample)
        quantizer.this.disown()  # the index frees its quantizer (else Python frees it under the index)
        index.own_fields = True
        if kind == "ivfsq":
            # the candidates re-ranked from float16 copies (half the float vectors): with the 8-bit codes
            # three quarters of a flat index; ids 0..n-1, mapped to vector ids by the IDMap2
            halves = f.IndexScalarQuantizer(dim, f.ScalarQuantizer.QT_fp16, f.METRIC_INNER_PRODUCT)
            refine = f.IndexRefine(index, halves)
            index.this.disown()
            halves.this.disown()
            refine.own_fields = refine.own_refine_index = True
            refine.k_factor = float(max(1, options.refine_factor))
            index = f.IndexIDMap2(refine)
    else:
        raise ValueError(f"unknown index type {kind!r}")
    if n:
        index.add_with_ids(vectors, ids)
    return wrap(index)


class Mapped:
    """A faiss ``IndexIDMap2`` (``flat``, ``hnsw``, ``ivfsq``) searched through its inner index, its
    internal ids mapped to vector ids here: the IDMap2's own mapping is an OpenMP region, which on a
    busy machine waits for a second core (measured on 2 shared cores: 16 ms a single query instead of
    1).  Searched like a faiss index: ``ntotal``, ``search(x, k, params=None)``, ``range_search(x,
    radius, params=None)``; an ID selector in ``params`` names vector ids, as for the IDMap2."""

    def __init__(self, index):
        f = faiss()
        self.index = index
        self.inner = f.downcast_index(index.index)
        self.ids = f.vector_to_array(index.id_map)

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def _to_ids(self, rows: np.ndarray) -> np.ndarray:
        if not len(self.ids):
            return np.full_like(rows, -1)
        return np.where(rows >= 0, self.ids[np.maximum(rows, 0)], -1)

    def _translated(self, params):
        """``params`` with its selector of vector ids turned into one of internal ids (None: unchanged)."""
        sel = getattr(params, "sel", None) if params is not None else None
        return faiss().IDSelectorTranslated(self.index.id_map, sel) if sel is not None else None

    def search(self, x, k, params=None):
        translated = self._translated(params)
        if translated is None:
            scores, rows = self.inner.search(x, k, params=params)
        else:
            original, params.sel = params.sel, translated  # as faiss's IDMap does, for this call only
            try:
                scores, rows = self.inner.search(x, k, params=params)
            finally:
                params.sel = original
        return scores, self._to_ids(rows)

    def range_search(self, x, radius, params=None):
        translated = self._translated(params)
        if translated is None:
            lims, scores, rows = self.inner.range_search(x, radius, params=params)
        else:
            original, params.sel = params.sel, translated
            try:
                lims, scores, rows = self.inner.range_search(x, radius, params=params)
            finally:
                params.sel = original
        return lims, scores, self._to_ids(rows)


class RefinedIVF(Mapped):
    """An ``ivfsq`` index: ``IDMap2(IndexRefine(IVF-SQ8, SQ-fp16))``.  faiss's ``IndexRefine`` takes only
    its own parameters, so those a caller passes (an ID selector of vector ids, an ``nprobe``) become
    ``IndexRefineSearchParameters`` around IVF parameters with the selector translated to internal ids.
    It has no range search."""

    def __init__(self, index):
        super().__init__(index)
        self.refine = self.inner
        self.ivf = faiss().downcast_index(self.refine.base_index)

    @property
    def nlist(self) -> int:
        return self.ivf.nlist

    def search(self, x, k, params=None):
        if params is None:
            scores, rows = self.refine.search(x, k)
        else:
            f = faiss()
            nprobe = getattr(params, "nprobe", None) or self.ivf.nprobe
            base = f.SearchParametersIVF(nprobe=int(min(nprobe, self.ivf.nlist)))
            translated = self._translated(params)  # held here while faiss uses it
            if translated is not None:
                base.sel = translated
            refined = f.IndexRefineSearchParameters(k_factor=self.refine.k_factor, base_index_params=base)
            scores, rows = self.refine.search(x, k, params=refined)
            del translated, base
        return scores, self._to_ids(rows)

    def range_search(self, x, radius, params=None):
        raise NotImplementedError("an ivfsq index has no range search: search its nearest neighbours")


def _inner(index):
    f = faiss()
    if isinstance(index, RefinedIVF):
        return index.ivf
    if isinstance(index, Mapped):
        return index.inner
    return f.downcast_index(index.index) if isinstance(index, f.IndexIDMap2) else f.downcast_index(index)


def wrap(index):
    """A faiss index as this module hands it out: an IDMap2 as :class:`Mapped` (an ``ivfsq`` one as
    :class:`RefinedIVF`), an IVF-Flat (vector ids in its lists) as it is."""
    f = faiss()
    if isinstance(index, f.IndexIDMap2):
        return RefinedIVF(index) if isinstance(f.downcast_index(index.index), f.IndexRefine) else Mapped(index)
    return index


def set_search_params(index, options: IndexOptions) -> None:
    f = faiss()
    if isinstance(index, RefinedIVF):
        index.refine.k_factor = float(max(1, options.refine_factor))
    inner = _inner(index)
    if isinstance(inner, f.IndexHNSW):
        inner.hnsw.efSearch = max(1, options.ef_search)  # a bad recorded value still searches
    elif isinstance(inner, f.IndexIVF):
        inner.nprobe = max(1, min(options.nprobe, inner.nlist))


def kind_of(index) -> str:
    f = faiss()
    if isinstance(index, RefinedIVF):
        return "ivfsq"
    inner = _inner(index)
    if isinstance(inner, f.IndexHNSW):
        return "hnsw"
    if isinstance(inner, f.IndexIVF):
        return "ivf"
    return "flat"


def search(index, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """(scores (Q, k), ids (Q, k)); missing neighbours have id -1."""
    k = max(1, min(k, index.ntotal)) if index.ntotal else 1
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def _faiss_object(index):
    return index.index if isinstance(index, Mapped) else index


def save(index, path: str) -> None:
    """Written beside and renamed over: a reader never sees half a file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    faiss().write_index(_faiss_object(index), tmp)
    os.replace(tmp, path)


def load(path: str):
    """A saved index, memory-mapped where faiss can (its flat codes and lists stay in the file's pages)."""
    f = faiss()
    return wrap(f.read_index(path, getattr(f, "IO_FLAG_MMAP_IFC", 0)))


def nbytes(index) -> int:
    """Serialised size: what the index holds (vectors, codes, graph or lists, ids)."""
    return int(faiss().serialize_index(_faiss_object(index)).nbytes)
