"""Near-duplicates: groups of near-identical files per modality (``one-peace-search INDEX --duplicates``,
``GET /api/duplicates``; ``docs/SEARCH.md``, "Near-duplicates").

Each stored vector is range-searched in its modality's faiss index for the vectors at cosine
``threshold`` or more; two items (a file, or a row of a TSV of texts) with such a pair of vectors
are joined (union-find), so a group holds every item reachable through near-identical pairs.
Vectors of one item never join it to itself (the segments of one long video).  Filters (a folder, dates,
sizes) keep the files compared.  A group is listed
from its likeliest original (the oldest ``taken_at``, then the largest file), then by similarity to
it; groups by size, then path.
"""
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import vector_index

logger = logging.getLogger(__name__)
# Calibrated on real photos and their copies (JPEG quality 10, half size, 2 % cropped from each side;
# docs/SEARCH.md): copies scored 0.906 and above, different photos 0.80 and below.
DEFAULT_THRESHOLD = 0.9
QUERY_BATCH = 1024  # vectors range-searched at once (memory of the answers)
KNN_FALLBACK = 64  # neighbours per vector for an index without range search (a group larger is found in parts
# that join through their members)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"the duplicate threshold must be a cosine above 0 and at most 1, got {threshold!r}")
    return float(threshold)


def near_pairs(index, vectors: np.ndarray, threshold: float, nprobe: int) -> Tuple[np.ndarray, np.ndarray]:
    """(query rows (P,), neighbour ids (P,)) of every pair at cosine >= ``threshold``; rows index
    ``vectors``, ids are faiss ids.  IVF indexes probe ``nprobe`` lists per vector."""
    f = vector_index.faiss()
    kind = vector_index.kind_of(index)
    params = None
    if kind in ("ivf", "ivfsq"):
        nlist = index.nlist if kind == "ivfsq" else f.downcast_index(index).nlist
        params = f.SearchParametersIVF(nprobe=min(max(1, nprobe), nlist))
    # ivfsq (vector_index.RefinedIVF) has no range search: its nearest neighbours (exact scores), cut
    ranged = kind != "ivfsq"
    rows, ids = [], []
    for start in range(0, len(vectors), QUERY_BATCH):
        batch = np.ascontiguousarray(vectors[start:start + QUERY_BATCH], np.float32)
        if ranged:
            lims, _, found = index.range_search(batch, threshold, params=params)
            counts = np.diff(lims).astype(np.int64)
        else:
            scores, found = index.search(batch, min(KNN_FALLBACK, index.ntotal), params=params)
            keep = (scores >= threshold) & (found >= 0)
            counts, found = keep.sum(axis=1), found[keep]
        rows.append(np.repeat(np.arange(start, start + len(batch)), counts))
        ids.append(found)
    return (np.concatenate(rows) if rows else np.zeros(0, np.int64)), \
        (np.concatenate(ids) if ids else np.zeros(0, np.int64))


def group_modality(search_index, modality: str, threshold: float, filters=None) -> List[List[Dict]]:
    """The duplicate groups of one modality: lists of item records with ``score`` (cosine with the
    group's first item, 1 for it); with ``filters``, among the files that pass them only."""
    store = search_index.store
    if filters is not None and filters.active():
        ids = search_index.allowed(modality, filters).ids
        vectors = store.vectors_by_id(ids, search_index.dim)
    else:
        ids, vectors = store.vectors(modality, search_index.dim)
    if len(ids) < 2:
        return []
    records = store.lookup(ids)
    items: Dict[tuple, int] = {}  # (path, row) -> item number
    item_of = np.empty(len(ids), np.int64)
    for n, vid in enumerate(ids):
        record = records[int(vid)]
        item_of[n] = items.setdefault((record["path"], record["row"]), len(items))
    row_of_id = {int(v): n for n, v in enumerate(ids)}  # pairs with a vector left out by the filters are ignored
    rows, found = near_pairs(search_index.faiss_index(modality), vectors, threshold, search_index.options.nprobe)
    union = _UnionFind(len(items))
    for r, vid in zip(rows.tolist(), found.tolist()):
        other = row_of_id.get(vid)
        if other is not None and item_of[r] != item_of[other]:
            union.union(int(item_of[r]), int(item_of[other]))
    members: Dict[int, List[int]] = {}
    for item in range(len(items)):
        members.setdefault(union.find(item), []).append(item)
    vector_rows: Dict[int, List[int]] = {}
    for n, item in enumerate(item_of.tolist()):
        vector_rows.setdefault(item, []).append(n)
    groups = []
    for group in members.values():
        if len(group) < 2:
            continue
        # each item's record: its first vector's (a segmented file's first segment)
        entries = [(item, records[int(ids[vector_rows[item][0]])]) for item in group]
        entries.sort(key=_first_key)
        first = vectors[vector_rows[entries[0][0]]]
        out = []
        for item, record in entries:
            score = float((vectors[vector_rows[item]] @ first.T).max())
            out.append(_entry(record, 1.0 if item == entries[0][0] else score))
        out[1:] = sorted(out[1:], key=lambda e: (-e["score"], e["path"], e.get("row") or 0))
        groups.append(out)
    groups.sort(key=lambda g: (-len(g), g[0]["path"]))
    return groups


def _first_key(entry) -> tuple:
    """The likeliest original first: the oldest (a copy is made later), then the largest, then by path."""
    record = entry[1]
    taken = record.get("taken_at")
    return (taken if taken is not None else float("inf"), -record["size"], record["path"], record["row"] or 0)


def _entry(record: Dict, score: float) -> Dict:
    out = {"path": record["path"], "score": round(score, 6), "id": record["id"], "modality": record["modality"],
           "size": record["size"], "taken_at": record.get("taken_at")}
    if record.get("row") is not None:
        out["row"], out["text"] = record["row"], record["text"]
    return out


def find_duplicates(search_index, modalities: Optional[Sequence[str]] = None, threshold: float = DEFAULT_THRESHOLD,
                    filters=None) -> Dict[str, Dict[str, List[List[Dict]]]]:
    """``{"groups": {MODALITY: [[{"path", "score", ...}, ...], ...]}}`` over the index's modalities
    (or ``modalities``), among the files that pass ``filters`` (``filters.Filters``) if given."""
    threshold = check_threshold(threshold)
    present = search_index.modalities()
    wanted = list(modalities) if modalities else present
    return {"groups": {m: group_modality(search_index, m, threshold, filters) if m in present else []
                       for m in wanted}}


def format_groups(out: Dict, threshold: float) -> str:
    lines = []
    for modality, groups in out["groups"].items():
        files = sum(len(g) for g in groups)
        lines.append(f"{modality}: {len(groups)} group{'s' * (len(groups) != 1)} of near-duplicates "
                     f"({files} items, threshold {threshold:g})")
        for n, group in enumerate(groups, start=1):
            lines.append(f"  group {n} ({len(group)}):")
            for entry in group:
                name = entry["path"] + (f":{entry['row']}" if entry.get("row") is not None else "")
                lines.append(f"    {entry['score']:.4f}  {name}  ({entry['size']} bytes)")
    return "\n".join(lines)
