"""Filtered search latency (``python bench/search.py --part filters``): an index of N stored vectors
(768-d, 2000 gaussian clusters, like real embeddings) in 100 folders with dates over ten years, searched
through ``SearchIndex.search_pages`` as the server does (SQLite for the allowed ids, faiss with an ID
selector, or exact scores of a few allowed vectors under an approximate index).

Per index type and filter: the vectors the filter allows, the path taken, the first query's time (the
SQL and the selector; later queries with the same filter reuse them while the index does not change),
the median of later single queries, and recall@10 against exact search over the allowed vectors.
"""
import os
import time
from datetime import datetime

import numpy as np

FOLDERS = 100


def make_index(index_dir, n, dim, rng):
    """A hand-made index of ``n`` clustered vectors; (vectors, per-vector folder number, taken_at)."""
    from one_peace.search.scan import Source
    from one_peace.search.store import IndexStore

    centers = rng.standard_normal((2000, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    vectors = centers[rng.integers(0, 2000, n)] + rng.standard_normal((n, dim), dtype=np.float32) * (0.8 / dim ** .5)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    folder = rng.integers(0, FOLDERS, n)
    start = datetime(2015, 1, 1).timestamp()
    taken = start + rng.random(n) * 10 * 365 * 86400
    store = IndexStore(index_dir, create=True)
    for lo in range(0, n, 5000):
        store.commit_batch([(Source(f"/photos/f{folder[i]:03d}/img{i:07d}.jpg", "image", int(rng.integers(1e4, 1e7)),
                                    0), "ok", None, [(None, None, vectors[i])], {"taken_at": float(taken[i])})
                            for i in range(lo, min(n, lo + 5000))])
    store.set_roots(["/photos"])
    store.set("model", {"dim": dim, "checkpoint": "none", "model_type": "one_peace_retrieval", "dtype": "float32",
                        "modalities": ["image"]})
    store.close()
    return vectors, folder, taken


def bench_filters(workdir, n=100_000, dim=768, n_queries=50, kinds=("flat", "ivfsq")):
    from one_peace.search import ranking, vector_index
    from one_peace.search.filters import Filters
    from one_peace.search.searcher import SearchIndex, build_faiss

    rng = np.random.default_rng(0)
    index_dir = os.path.join(workdir, "filtered_index")
    start = time.perf_counter()
    vectors, folder, taken = make_index(index_dir, n, dim, rng)
    print(f"(index of {n} vectors written in {time.perf_counter() - start:.0f} s)\n", flush=True)
    queries = vectors[rng.choice(n, n_queries, replace=False)] + 0.05 * rng.standard_normal((n_queries, dim),
                                                                                          dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    mid = datetime(2020, 1, 1).timestamp()
    cases = [("none", Filters(), np.ones(n, bool)),
             ("folder (10 of 100)", Filters(folders=tuple(f"/photos/f{i:03d}" for i in range(10))), folder < 10),
             ("date range (half)", Filters(since=mid), taken >= mid),
             ("folder (1 of 100)", Filters(folders=("/photos/f007",)), folder == 7),
             ("folder + date (1 of 200)", Filters(folders=("/photos/f007",), since=mid), (folder == 7) & (taken >= mid))]
    print(f"| vectors ({dim}-d) | index | filter | allowed | path | first query ms | query ms (median) | "
          "recall@10 |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in kinds:
        options = vector_index.IndexOptions(index_type=kind)
        index = SearchIndex(index_dir, needs_model=False, options=options)
        faiss_index = build_faiss(index.store, "image", dim, options, write=False)
        vector_index.set_search_params(faiss_index, options)
        index._faiss["image"] = (index.store.version("image"), faiss_index)
        for label, filters, mask in cases:
            allowed = np.flatnonzero(mask)
            truth = [set((allowed[np.argsort(-(vectors[allowed] @ q))[:10]] + 1).tolist()) for q in queries]
            index._allowed.clear()  # the first query pays the SQL
            t = time.perf_counter()
            index.search_pages(queries[0], ["image"], 10, 0, filters)
            first = 1000 * (time.perf_counter() - t)
            times, recall = [], []
            for q, expected in zip(queries, truth):
                t = time.perf_counter()
                results, _ = index.search_pages(q, ["image"], 10, 0, filters)
                times.append(time.perf_counter() - t)
                recall.append(len({h["id"] for h in results["image"]} & expected) / 10)
            path = "faiss" if not filters.active() else \
                "exact (SQLite vectors)" if mask.sum() <= ranking.EXACT_MAX else "faiss + ID selector"
            print(f"| {n:.0e} | {kind} | {label} | {int(mask.sum())} | {path} | {first:.1f} | "
                  f"{1000 * float(np.median(times)):.2f} | {np.mean(recall):.3f} |", flush=True)
        index.store.close()
