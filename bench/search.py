"""Search benchmarks: indexing throughput of one-peace-index, and faiss query latency / recall / size.

Indexing: a random-initialised checkpoint of the ``tiny`` / ``base`` retrieval architecture in the
official layout (``bench/load.py:make_stand_in``, 256 px images, the real BPE vocabulary) embeds a
generated collection (copies of the shared media: 500x375 .. 1200x800 JPEGs, 5 s FLAC clips, short
.txt files) through ``one-peace-index --modality M`` in a fresh process per precision; files/s count
decoding + embedding + committing, not the checkpoint load.

Vector search: 768-d L2-normalised vectors (the base model's width), 1e3 / 1e5 / 1e6 of them (``--counts``),
of three kinds (``--data``): ``uniform`` on the sphere (no structure, the worst case for approximate
indexes), ``clustered`` at 1e5 (2000 gaussian clusters), and ``real``: real embeddings of augmented
real media, perturbed and mixed up to the count (``bench/real_vectors.py`` says how).  Each index type
is built with the defaults of ``one_peace.search.vector_index`` (``ivfsq`` and ``ivf`` also with other
``nprobe``, ``hnsw`` with another ``efSearch``), saved and read back as the search tools read it
(memory-mapped); rows give the build time, the median latency of single queries (what the server
does; the lowest of 3 passes after a first one that faults the pages in), recall@10 against exact
search, the file's size and the resident memory the loaded index added after the queries.

Checkpoint hashing: the SHA-256 of a whole checkpoint identifies an index's model
(``one_peace.hub.file_identity``); MB/s of a first hash (the file just written, so in the page cache:
the CPU's rate; a cold read is bounded by the disk too) and the time of a cached lookup.

    python bench/search.py                                  # everything (~20 min on 2 cores)
    python bench/search.py --part index --sizes tiny
    python bench/search.py --part vectors --data real --counts 20000,50000,100000,1000000   # ~10 min
    python bench/search.py --part vectors --counts 1000,100000
    python bench/search.py --part hash --hash-mb 1024
    python bench/search.py --part filters --filter-count 100000   # filtered queries (bench/search_query.py)
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from load import bpe_dir, machine, make_stand_in  # noqa: E402 - bench/load.py beside this file

MEDIA = os.path.join(HERE, "..", "..", "shared", "assets", "media")
DIM = 768  # base model embedding width (4B: 1536, twice the flat latency and every size)


# ---- indexing throughput -----------------------------------------------------------------------
def make_collection(root, n_images, n_audio, n_texts):
    images = ["dog.JPEG", "elephant.JPEG", "one_piece.jpeg", "pokemons.jpg"]
    for sub in ("image", "audio", "text"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i in range(n_images):
        name = images[i % len(images)]
        shutil.copy(os.path.join(MEDIA, name), os.path.join(root, "image", f"{i:04d}_{name}"))
    for i in range(n_audio):
        name = ("cow.flac", "dog.flac")[i % 2]
        shutil.copy(os.path.join(MEDIA, name), os.path.join(root, "audio", f"{i:04d}_{name}"))
    words = "a dog barks at the mailman while an elephant walks slowly through tall grass".split()
    for i in range(n_texts):
        with open(os.path.join(root, "text", f"{i:04d}.txt"), "w") as fh:
            fh.write(" ".join(words[(i + j) % len(words)] for j in range(12)) + "\n")


def index_run(index, roots, checkpoint, dtype, modality, batch_size):
    cmd = [sys.executable, "-m", "one_peace.search.indexer", index, *roots, "--checkpoint", checkpoint,
           "--dtype", dtype, "--bpe-dir", bpe_dir(), "--modality", modality, "--batch-size", str(batch_size),
           "--json", "--progress", "none"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def bench_indexing(sizes, dtypes, workdir, counts, batch_size):
    print("| size | dtype | images/s | 5 s clips/s | texts/s | checkpoint load s |")
    print("|---|---|---|---|---|---|")
    for size in sizes:
        checkpoint = os.path.join(workdir, f"{size}.pt")
        make_stand_in(checkpoint, size)
        root = os.path.join(workdir, f"files_{size}")
        make_collection(root, *counts[size])
        for dtype in dtypes:
            index = os.path.join(workdir, f"index_{size}_{dtype}")
            rates, load = {}, []
            for modality in ("image", "audio", "text"):
                summary = index_run(index, [root], checkpoint, dtype, modality, batch_size)
                assert not summary["failed"] and summary["embedded"] == summary["found"][modality], summary
                rates[modality] = summary["files_per_s"]
                load.append(summary["load_seconds"])
            print(f"| {size} | {dtype} | {rates['image']:.2f} | {rates['audio']:.2f} | {rates['text']:.1f} | "
                  f"{np.median(load):.1f} |", flush=True)
        os.remove(checkpoint)


# ---- checkpoint hashing ------------------------------------------------------------------------
def bench_hash(workdir, megabytes):
    os.environ["ONE_PEACE_CACHE"] = os.path.join(workdir, "cache")  # not the user's hash cache
    from one_peace.hub import file_identity

    path = os.path.join(workdir, "checkpoint.bin")
    block = np.random.default_rng(0).bytes(1 << 20)
    with open(path, "wb") as fh:
        for _ in range(megabytes):
            fh.write(block)
    start = time.perf_counter()
    file_identity.whole_file_sha256(path)
    first = time.perf_counter() - start
    start = time.perf_counter()
    file_identity.whole_file_sha256(path)
    cached = time.perf_counter() - start
    os.remove(path)
    print("| file MB | first hash s | MB/s | cached lookup ms |")
    print("|---|---|---|---|")
    print(f"| {megabytes} | {first:.2f} | {megabytes / first:.0f} | {1000 * cached:.2f} |", flush=True)


# ---- vector search -----------------------------------------------------------------------------
def normalised(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def uniform(n, rng):
    out = np.empty((n, DIM), np.float32)
    for i in range(0, n, 100_000):  # in chunks: no float64 copy of a 3 GB matrix
        out[i:i + 100_000] = normalised(rng.standard_normal((min(100_000, n - i), DIM), dtype=np.float32))
    return out


def clustered(n, rng, centers, spread=0.8):
    which = rng.integers(0, len(centers), n)
    noise = rng.standard_normal((n, DIM), dtype=np.float32) * (spread / np.sqrt(DIM))
    return normalised(centers[which] + noise)


def count_label(n):
    """1e3 for 1000 (a power of ten), else the count itself (2000, not a rounded 1e3)."""
    power = int(round(np.log10(n))) if n > 0 else 0
    return f"1e{power}" if n == 10 ** power else str(n)


def timed_queries(index, queries, truth, max_seconds=20.0, passes=3):
    """(median ms of single queries once the pages they touch are resident, the first pass's median ms,
    recall@10, queries run).  A first pass over the queries (a memory-mapped index faults its pages in,
    as a server does after it starts), then ``passes`` more; the lowest of their medians is reported: on a
    machine shared with other jobs a pass that overlaps theirs waits for a core (each pass stops after
    ``max_seconds / (passes + 1)``)."""
    def one_pass(limit):
        found, wall = [], []
        for q in queries[:limit]:
            t = time.perf_counter()
            found.append(index.search(q[None], 10)[1][0])
            wall.append(time.perf_counter() - t)
            if sum(wall) > max_seconds / (passes + 1):
                break
        return found, 1000 * float(np.median(wall))

    found, first = one_pass(len(queries))
    warm = min(one_pass(len(found))[1] for _ in range(passes))
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    return warm, first, float(recall), len(found)


def exact_top10(data, queries, chunk=200_000):
    """Ids of the 10 best inner products of each query, exactly (matrix products in chunks: no copy)."""
    best_s = np.full((len(queries), 10), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 10), np.int64)
    for start in range(0, len(data), chunk):
        scores = queries @ data[start:start + chunk].T
        top = np.argpartition(-scores, min(10, scores.shape[1] - 1), axis=1)[:, :10]
        s = np.concatenate([best_s, np.take_along_axis(scores, top, 1)], axis=1)
        i = np.concatenate([best_i, top + start], axis=1)
        order = np.argsort(-s, axis=1)[:, :10]
        best_s, best_i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
    return best_i


def resident_mb():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


# each index type with its default search setting, then settings that trade latency for recall
SEARCH_SETTINGS = {"flat": [{}], "ivfsq": [{"nprobe": 16}, {}, {"nprobe": 64}], "ivf": [{}, {"nprobe": 128}],
                   "hnsw": [{}, {"ef_search": 256}]}


def make_data(kind, n, n_queries, workdir, rng):
    if kind == "uniform":
        return uniform(n, rng), uniform(n_queries, rng), "random on the sphere"
    if kind == "clustered":
        centers = uniform(2000, rng)
        return clustered(n, rng, centers), clustered(n_queries, rng, centers), "2000 gaussian clusters"
    from real_vectors import real_structured  # bench/real_vectors.py

    return real_structured(n, n_queries, DIM, workdir, rng)


def parameters(kind, options, n):
    nlist = min(options.nlist or vector_index_module().default_nlist(n), n)
    if kind == "ivf":
        return f"nlist {nlist}, nprobe {min(options.nprobe, nlist)}"
    if kind == "ivfsq":
        return f"nlist {nlist}, nprobe {min(options.nprobe, nlist)}, re-rank {options.refine_factor}x"
    if kind == "hnsw":
        return f"M {options.hnsw_m}, efC {options.ef_construction}, efSearch {options.ef_search}"
    return "exact"


def vector_index_module():
    from one_peace.search import vector_index

    return vector_index


def bench_vectors(counts, workdir, n_queries, hnsw_max, data_kinds=("uniform", "clustered"), kinds=None):
    """One row per (count, data, index, setting): build s, median ms of single queries on the index as
    the server loads it (memory-mapped), recall@10 against exact search, file size and resident MB."""
    vector_index = vector_index_module()
    print(f"| vectors ({DIM}-d) | data | index | parameters | build s | query ms (median) | first pass ms | recall@10 "
          "| file MB | resident MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    path = os.path.join(workdir, "bench.faiss")
    cases = [(n, d) for d in data_kinds for n in counts if d != "clustered" or n == 100_000]
    notes = {}
    for n, data_kind in cases:
        label = count_label(n)
        data, queries, notes[data_kind] = make_data(data_kind, n, n_queries, workdir, rng)
        truth = exact_top10(data, queries)
        for kind, settings in SEARCH_SETTINGS.items():
            if (kinds and kind not in kinds) or (data_kind == "clustered" and kind == "flat"):
                continue
            options = vector_index.IndexOptions()
            if kind == "hnsw" and n > hnsw_max:
                print(f"| {label} | {data_kind} | hnsw | M {options.hnsw_m}, efC {options.ef_construction} | not run "
                      f"(above --hnsw-max {hnsw_max}) | | | | | |", flush=True)
                continue
            start = time.perf_counter()
            built = vector_index.build(data, np.arange(n), kind, options)
            build_s = time.perf_counter() - start
            vector_index.save(built, path)
            del built
            size = os.path.getsize(path) / 2 ** 20
            before = resident_mb()
            index = vector_index.load(path)  # as one-peace-search / -serve read it
            seen = set()
            for extra in settings:
                options = vector_index.IndexOptions(**extra)
                vector_index.set_search_params(index, options)
                params = parameters(kind, options, n)
                if params in seen:  # nprobe capped at nlist: the same search again
                    continue
                seen.add(params)
                ms, first_ms, recall, done = timed_queries(index, queries, truth, 24.0 if kind == "flat" else 12.0)
                print(f"| {label} | {data_kind} | {kind} | {params} | {build_s:.1f} | {ms:.2f} | {first_ms:.2f} | "
                      f"{recall:.3f} "
                      f"| {size:.0f} | {resident_mb() - before:.0f} |"
                      + ("" if done == len(queries) else f" <!-- {done} queries -->"), flush=True)
            del index
            os.remove(path)
        del data
    if "real" not in notes:
        return
    print(f"\nreal: {notes['real']}")
    defaults = vector_index.IndexOptions()
    print("\nauto (the defaults): " + ", ".join(
        f"{count_label(n)}: {parameters(vector_index.resolve_type(defaults, n), defaults, n)} "
        f"({vector_index.resolve_type(defaults, n)})" for n in counts))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["all", "index", "vectors", "hash", "filters"], default="all")
    parser.add_argument("--sizes", default="tiny,base")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--counts", default="1000,100000,1000000", help="vector counts")
    parser.add_argument("--data", default="uniform,clustered,real",
                        help="vector kinds: uniform, clustered (at 1e5), real (bench/real_vectors.py)")
    parser.add_argument("--kinds", default=None, help="index types (default: all of SEARCH_SETTINGS)")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="largest count HNSW is built for")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hash-mb", type=int, default=1024, help="size of the file hashed (--part hash)")
    parser.add_argument("--filter-count", type=int, default=100_000, help="vectors of --part filters")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="one_peace_search_bench_")
    os.makedirs(workdir, exist_ok=True)
    import faiss
    import torch

    print(f"Machine: {machine()}, faiss {faiss.__version__}, {torch.get_num_threads()} torch threads, "
          f"{faiss.omp_get_max_threads()} faiss threads\n", flush=True)
    try:
        if args.part in ("all", "index"):
            # (images, clips, texts) per size: enough for a steady rate, little enough for 2 cores
            counts = {"tiny": (48, 24, 96), "base": (32, 16, 64)}
            bench_indexing(args.sizes.split(","), args.dtypes.split(","), workdir, counts, args.batch_size)
            print()
        if args.part in ("all", "vectors"):
            bench_vectors([int(c) for c in args.counts.split(",")], workdir, args.queries, args.hnsw_max,
                          args.data.split(","), args.kinds.split(",") if args.kinds else None)
            print()
        if args.part in ("all", "hash"):
            bench_hash(workdir, args.hash_mb)
        if args.part in ("all", "filters"):
            from search_query import bench_filters  # bench/search_query.py

            print()
            bench_filters(workdir, args.filter_count, DIM, min(args.queries, 50))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
