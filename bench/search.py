"""Search benchmarks: indexing throughput of one-peace-index, and faiss query latency / recall / size.

Indexing: a random-initialised checkpoint of the ``tiny`` / ``base`` retrieval architecture in the
official layout (``bench/load.py:make_stand_in``, 256 px images, the real BPE vocabulary) embeds a
generated collection (copies of the shared media: 500x375 .. 1200x800 JPEGs, 5 s FLAC clips, short
.txt files) through ``one-peace-index --modality M`` in a fresh process per precision; files/s count
decoding + embedding + committing, not the checkpoint load.

Vector search: random L2-normalised vectors (uniform on the sphere: no structure, the hardest case
for approximate indexes) of the base model's width, 1e3 / 1e5 / 1e6 of them, and at 1e5 also
clustered vectors (2000 gaussian clusters, queries drawn like the data: closer to real embeddings).
Each index type built with the defaults of ``one_peace.search.vector_index``; latency of single
queries (what the server does), recall@10 against exact search, build time, size (the faiss file;
RAM when loaded).

Checkpoint hashing: the SHA-256 of a whole checkpoint identifies an index's model
(``one_peace.search.identity``); MB/s of a first hash (the file just written, so in the page cache:
the CPU's rate; a cold read is bounded by the disk too) and the time of a cached lookup.

    python bench/search.py                                  # everything (~10 min on 2 cores)
    python bench/search.py --part index --sizes tiny
    python bench/search.py --part vectors --counts 1000,100000
    python bench/search.py --part hash --hash-mb 1024
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
    from one_peace.search import identity

    path = os.path.join(workdir, "checkpoint.bin")
    block = np.random.default_rng(0).bytes(1 << 20)
    with open(path, "wb") as fh:
        for _ in range(megabytes):
            fh.write(block)
    start = time.perf_counter()
    identity.whole_file_sha256(path)
    first = time.perf_counter() - start
    start = time.perf_counter()
    identity.whole_file_sha256(path)
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


def timed_queries(index, queries, truth, max_seconds=20.0):
    """(median ms of single queries, recall@10, queries run); stops after ``max_seconds``."""
    index.search(queries[:1], 10)  # warm-up
    found, times = [], []
    for q in queries:
        t = time.perf_counter()
        found.append(index.search(q[None], 10)[1][0])
        times.append(time.perf_counter() - t)
        if sum(times) > max_seconds:
            break
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    return 1000 * float(np.median(times)), float(recall), len(times)


def file_mb(index, path):
    from one_peace.search import vector_index

    vector_index.save(index, path)
    size = os.path.getsize(path) / 2 ** 20
    os.remove(path)
    return size


# each index type with its default search setting, then one that trades latency for recall
SEARCH_SETTINGS = {"flat": [{}], "ivf": [{}, {"nprobe": 128}], "hnsw": [{}, {"ef_search": 256}]}


def bench_vectors(counts, workdir, n_queries, hnsw_max):
    from one_peace.search import vector_index

    print(f"| vectors ({DIM}-d) | data | index | parameters | build s | query ms (median) | recall@10 | size MB |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    path = os.path.join(workdir, "bench.faiss")
    cases = [(n, "uniform") for n in counts] + [(n, "clustered") for n in counts if n == 100_000]
    for n, data_kind in cases:
        label = count_label(n)
        if data_kind == "uniform":
            data, queries = uniform(n, rng), uniform(n_queries, rng)
        else:
            centers = uniform(2000, rng)
            data, queries = clustered(n, rng, centers), clustered(n_queries, rng, centers)
        exact = vector_index.build(data, np.arange(n), "flat", vector_index.IndexOptions())
        truth = exact.search(queries, 10)[1]  # batched: one GEMM
        del exact
        for kind, settings in SEARCH_SETTINGS.items():
            if data_kind == "clustered" and kind == "flat":
                continue
            options = vector_index.IndexOptions()
            if kind == "hnsw" and n > hnsw_max:
                print(f"| {label} | {data_kind} | hnsw | M {options.hnsw_m}, efC {options.ef_construction} | not run "
                      f"(above --hnsw-max {hnsw_max}) | | | |", flush=True)
                continue
            start = time.perf_counter()
            index = vector_index.build(data, np.arange(n), kind, options)
            build_s = time.perf_counter() - start
            size = file_mb(index, path)
            seen = set()
            for extra in settings:
                options = vector_index.IndexOptions(**extra)
                vector_index.set_search_params(index, options)
                if kind == "ivf":
                    nlist = vector_index.default_nlist(n)
                    params = f"nlist {nlist}, nprobe {min(options.nprobe, nlist)}"
                elif kind == "hnsw":
                    params = f"M {options.hnsw_m}, efC {options.ef_construction}, efSearch {options.ef_search}"
                else:
                    params = "exact"
                if params in seen:  # nprobe capped at nlist: the same search again
                    continue
                seen.add(params)
                ms, recall, done = timed_queries(index, queries, truth)
                print(f"| {label} | {data_kind} | {kind} | {params} | {build_s:.1f} | {ms:.2f} | {recall:.3f} "
                      f"| {size:.1f} |" + ("" if done == len(queries) else f" <!-- {done} queries -->"), flush=True)
            del index
        del data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["all", "index", "vectors", "hash"], default="all")
    parser.add_argument("--sizes", default="tiny,base")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--counts", default="1000,100000,1000000", help="vector counts")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="largest count HNSW is built for")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hash-mb", type=int, default=1024, help="size of the file hashed (--part hash)")
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
            bench_vectors([int(c) for c in args.counts.split(",")], workdir, args.queries, args.hnsw_max)
            print()
        if args.part in ("all", "hash"):
            bench_hash(workdir, args.hash_mb)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
