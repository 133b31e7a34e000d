"""Is a modality's part of an index searchable?  A checkpoint whose branch was never trained (a
stage-1 pretraining checkpoint has an audio branch at its initial weights) maps every file to nearly
the same vector: each query then ranks them arbitrarily, and nothing else says so.

A modality is flagged *collapsed* when, over a sample of its vectors, the mean pairwise cosine passes
:data:`MEAN_COSINE_LIMIT` or the top singular direction carries more than :data:`TOP_ENERGY_LIMIT` of
their energy (the vectors are L2-normalised, so the energy is the number of vectors).  Trained
branches are far below both (the fixtures' random-but-varied model: cosine 0.1-0.9); a folder
holding copies of one file is flagged too.
"""
from typing import Dict, List, Optional

import numpy as np

from .store import IndexStore

MEAN_COSINE_LIMIT = 0.98
TOP_ENERGY_LIMIT = 0.99
SAMPLE = 1000  # vectors read per modality (a 1000 x 1000 Gram matrix: milliseconds)


def collapse_of(store: IndexStore, modality: str, dim: int, sample: int = SAMPLE) -> Optional[Dict]:
    """The measures of one modality (None below 2 vectors); ``collapsed`` says whether they pass a limit."""
    ids = store.vector_ids(modality)
    if len(ids) < 2:
        return None
    if len(ids) > sample:
        ids = np.sort(np.random.default_rng(0).choice(ids, sample, replace=False))
    vectors = store.vectors_by_id(ids, dim).astype(np.float64)
    n = len(vectors)
    gram = vectors @ vectors.T
    mean_cosine = float((gram.sum() - np.trace(gram)) / (n * (n - 1)))
    singular = np.linalg.svd(vectors, compute_uv=False)
    top_energy = float(singular[0] ** 2 / max((singular ** 2).sum(), 1e-12))
    return {"modality": modality, "vectors": int(store.counts().get(modality, n)), "sampled": n,
            "mean_cosine": round(mean_cosine, 6), "top_energy": round(top_energy, 6),
            "collapsed": mean_cosine > MEAN_COSINE_LIMIT or top_energy > TOP_ENERGY_LIMIT}


def message(found: Dict) -> str:
    m = found["modality"]
    return (f"the {m} vectors of this index are nearly all alike (mean pairwise cosine {found['mean_cosine']:.4f}, "
            f"{100 * found['top_energy']:.1f}% of their energy in one direction, over {found['sampled']} of "
            f"{found['vectors']}): the checkpoint's {m} branch looks untrained (e.g. a stage-1 pretraining "
            f"checkpoint that never saw {m}), so {m} results come in arbitrary order. Index {m} with a "
            f"retrieval checkpoint trained on {m} (e.g. the released one-peace.pt) in a new index directory")


def collapsed_modalities(store: IndexStore) -> List[Dict]:
    """The collapsed modalities of an index, each with its measures and a ``message`` for the user."""
    model = store.get("model")
    if not model:
        return []
    out = []
    for modality in store.counts():
        found = collapse_of(store, modality, int(model["dim"]))
        if found and found["collapsed"]:
            out.append(dict(found, message=message(found)))
    return out
