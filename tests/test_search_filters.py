"""Filters (folder, date, size, duration), the minimum score and pages (offset / limit): run in SQLite
and faiss (ID selector, or exact scores of a few allowed vectors) on every index type, equal to brute
force over the allowed vectors; in the CLI and the API."""
import os
from datetime import datetime

import numpy as np
import pytest
from search_helpers import search_error, search_json
from search_query_helpers import DATES, DURATIONS, stored, vector_id
from test_search import post_json

from one_peace.search import ranking, vector_index
from one_peace.search.filters import Filters, make_filters, parse_date, parse_duration, parse_size
from one_peace.search.scan import Source
from one_peace.search.searcher import SearchIndex, build_faiss
from one_peace.search.store import IndexStore

pytest_plugins = ["search_fixtures", "search_query_fixtures"]  # search_checkpoint, query_index, query_server
DIM = 16


# ---- parsing ---------------------------------------------------------------------------------------
def test_dates_sizes_and_durations_parse_as_documented():
    assert parse_date("2024-07-01", "--since") == datetime(2024, 7, 1).timestamp()
    assert parse_date("2024-07-01", "--until", end=True) == pytest.approx(datetime(2024, 7, 2).timestamp() - 1e-6)
    assert parse_date("2024-07-01T10:30", "--since") == datetime(2024, 7, 1, 10, 30).timestamp()
    assert parse_date("2024-07-01T00:00:00Z", "--since") == 1719792000.0
    assert parse_date(1719792000, "since") == 1719792000.0
    assert (parse_size("500k", "s"), parse_size("10MB", "s"), parse_size("2MiB", "s"), parse_size(7, "s")) == \
        (500_000, 10_000_000, 2 * 2 ** 20, 7)
    assert (parse_duration("90", "d"), parse_duration("1.5m", "d"), parse_duration("1:30", "d"),
            parse_duration("1:02:03", "d"), parse_duration("2h", "d")) == (90, 90, 90, 3723, 7200)
    for call, message in ((lambda: parse_date("yesterday", "--since"), "--since must be a date YYYY-MM-DD"),
                          (lambda: parse_size("ten", "--min-size"), "--min-size must be a size"),
                          (lambda: parse_duration("-3", "--max-duration"), "--max-duration must be a duration"),
                          (lambda: make_filters(["/r"], since="2024-02-01", until="2024-01-01"),
                           "since .* is after until"),
                          (lambda: make_filters(["/r"], folder="/elsewhere"), "folder /elsewhere is not in the index")):
        with pytest.raises(ValueError, match=message):
            call()


# ---- a hand-made index: every filter and every index type against brute force ----------------------
FOLDERS = ("a", "a_b", "a%", "ab", "a/deep")  # LIKE wildcards and prefixes of each other


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """An index of 6000 vectors in FOLDERS, with dates, sizes and (for a third) durations; 50 are equal."""
    base = tmp_path_factory.mktemp("filters")
    root = str(base / "r")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((6000, DIM)).astype(np.float32)
    vectors[100:150] = vectors[100]  # exact ties
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    meta = []
    store = IndexStore(str(base / "index"), create=True)
    entries = []
    for i, vector in enumerate(vectors):
        folder = FOLDERS[i % len(FOLDERS)]
        path = f"{root}/{folder}/f{i:05d}.png"
        info = {"taken_at": 1.6e9 + 1000.0 * i, "duration_s": float(i % 50) if i % 3 == 0 else None}
        entries.append((Source(path, "image", 100 + i, 0), "ok", None, [(None, None, vector)], info))
        meta.append((path, folder, 100 + i, info["taken_at"], info["duration_s"]))
    store.commit_batch(entries)
    store.set_roots([root])
    store.set("model", {"dim": DIM, "checkpoint": "none", "model_type": "one_peace_retrieval", "dtype": "float32",
                        "modalities": ["image"]})
    store.close()
    return str(base / "index"), root, vectors, meta


def open_index(index_dir, kind, **options):
    """The hand-made index searched through a faiss index of ``kind`` (built in memory, not saved: the
    tests of each kind share the directory)."""
    options = vector_index.IndexOptions(index_type=kind, **options)
    index = SearchIndex(index_dir, needs_model=False, options=options)
    faiss_index = build_faiss(index.store, "image", DIM, options, write=False)
    vector_index.set_search_params(faiss_index, options)
    index._faiss["image"] = (index.store.version("image"), faiss_index)
    assert vector_index.kind_of(index.faiss_index("image")) == kind
    return index


def brute_force(vectors, meta, query, keep):
    allowed = [i for i, m in enumerate(meta) if keep(m)]
    scores = vectors[allowed] @ query
    order = sorted(range(len(allowed)), key=lambda j: (-scores[j], allowed[j]))
    return [meta[allowed[j]][0] for j in order], [float(scores[j]) for j in order]


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfsq", "hnsw"])
def test_filters_match_brute_force_on_every_index_type(synthetic, kind):
    index_dir, root, vectors, meta = synthetic
    index = open_index(index_dir, kind, nprobe=8)
    rng = np.random.default_rng(1)
    day = 1.6e9 + 1000.0 * 1200
    cases = [  # (filters, the same rule in Python); few allowed (exact path) and many (faiss selector)
        (Filters(folders=(f"{root}/a",)), lambda m: m[1] in ("a", "a/deep")),
        (Filters(folders=(f"{root}/a_b", f"{root}/a%")), lambda m: m[1] in ("a_b", "a%")),
        (Filters(folders=(f"{root}/a/deep",), since=day), lambda m: m[1] == "a/deep" and m[3] >= day),
        (Filters(min_size=1000, max_size=5500), lambda m: 1000 <= m[2] <= 5500),
        (Filters(min_duration=10, max_duration=20), lambda m: m[4] is not None and 10 <= m[4] <= 20),
        (Filters(since=day, until=day + 4e6), lambda m: day <= m[3] <= day + 4e6),
    ]
    for filters, keep in cases:
        query = rng.standard_normal(DIM).astype(np.float32)
        query /= np.linalg.norm(query)
        paths, scores = brute_force(vectors, meta, query, keep)
        results, pages = index.search_pages(query, ["image"], 10, 0, filters)
        hits = results["image"]
        assert all(keep(meta[int(os.path.basename(h["path"])[1:6])]) for h in hits), filters
        found = [h["path"] for h in hits]
        if kind == "flat" or len(paths) <= ranking.EXACT_MAX:  # exact
            assert found == paths[:10] and pages["image"]["total"] == len(paths), filters
            np.testing.assert_allclose([h["score"] for h in hits], scores[:10], atol=1e-5)
        else:  # approximate: the selector keeps the allowed ones, the search stays wide enough
            assert len(set(found) & set(paths[:10])) >= 8, filters
    index.store.close()


@pytest.mark.parametrize("kind, depth", [("flat", 80), ("ivf", 80), ("ivfsq", 63), ("hnsw", 63)])
def test_pages_join_up_into_the_ranking_with_ties_by_id(synthetic, kind, depth):
    """Pages of 7 join up into the ranking of one search as deep (HNSW, ivfsq: within their first block, 64)."""
    index_dir, root, vectors, meta = synthetic
    index = open_index(index_dir, kind)
    # 50 vectors score exactly 1 (their order is by id); HNSW's graph cannot hold 50 equal points: another query
    query = vectors[3] if kind == "hnsw" else vectors[100]
    whole, _ = index.search_pages(query, ["image"], depth)
    joined, offset = [], 0
    while offset < depth:
        results, pages = index.search_pages(query, ["image"], min(7, depth - offset), offset)
        assert [h["rank"] for h in results["image"]] == list(range(offset + 1, offset + 1 + len(results["image"])))
        assert pages["image"]["has_more"]
        joined += results["image"]
        offset += 7
    assert [h["id"] for h in joined] == [h["id"] for h in whole["image"]]
    if kind != "hnsw":
        ties = [h["id"] for h in whole["image"] if h["score"] == whole["image"][0]["score"]]
        assert len(ties) == 50 and ties == sorted(ties)
    again, _ = index.search_pages(query, ["image"], 7, 21)  # the same request: the same page
    assert [h["id"] for h in again["image"]] == [h["id"] for h in joined[21:28]]
    index.store.close()


def test_min_score_cuts_and_ends_the_pages(synthetic):
    index_dir, _, vectors, meta = synthetic
    index = open_index(index_dir, "flat")
    query = vectors[7]
    passing = int((vectors @ query >= 0.5).sum())
    results, pages = index.search_pages(query, ["image"], 1000, 0, None, min_score=0.5)
    assert len(results["image"]) == passing and min(h["score"] for h in results["image"]) >= 0.5
    assert pages["image"] == {"offset": 0, "limit": 1000, "has_more": False, "total": passing}
    results, pages = index.search_pages(query, ["image"], 2, passing - 1, None, min_score=0.5)
    assert len(results["image"]) == 1 and not pages["image"]["has_more"]
    with pytest.raises(ValueError, match="offset \\+ limit must be at most"):
        index.search_pages(query, ["image"], 1000, ranking.MAX_DEPTH)
    index.store.close()


# ---- the CLI and the API on the real index ---------------------------------------------------------
def names(out, modality="image"):
    return sorted(os.path.basename(h["path"]) for h in out["results"][modality])


def test_cli_filters(query_index, capsys):
    index, library = query_index
    everything = ["--modality", "image", "-k", "100"]
    out = search_json([index, "--text", "a photo", "--folder", library / "photos", *everything], capsys)
    assert names(out) == sorted(os.listdir(library / "photos")) and out["filters"]["folders"] == [
        str(library / "photos")]
    out = search_json([index, "--text", "a photo", "--folder", library / "scene", *everything], capsys)
    assert names(out) == []  # a prefix of "scenes" is not the folder
    out = search_json([index, "--text", "a photo", "--since", "2024-01-01", "--until", "2024-12-31", *everything],
                      capsys)
    assert names(out) == [f"day_{i}.png" for i in range(6)]
    night = DATES["night"].date().isoformat()  # the night scenes were taken at 22:00 that day: in it
    out = search_json([index, "--text", "a photo", "--until", night, *everything], capsys)
    assert names(out) == sorted(os.listdir(library / "photos") + [f"night_{i}.png" for i in range(6)])
    out = search_json([index, "--text", "a photo", "--min-size", "100k", "--max-size", "0.3MB", *everything], capsys)
    expected = sorted(p.name for sub in ("photos", "copies") for p in (library / sub).iterdir()
                      if 100_000 <= p.stat().st_size <= 300_000)
    assert names(out) == expected and len(expected) >= 3
    out = search_json([index, "--text", "a sound", "--min-duration", "2", "--max-duration", "0:04", "--modality",
                       "audio,image"], capsys)
    assert names(out, "audio") == [n for n, d in DURATIONS.items() if 2 <= d <= 4] and names(out) == []
    out = search_json([index, "--like", vector_id(index, library / "photos" / "dog.JPEG"), "--min-score", "0.9",
                       *everything], capsys)
    vectors = stored(index, "image")
    dog = vectors[str(library / "photos" / "dog.JPEG")]
    assert names(out) == sorted(os.path.basename(p) for p, v in vectors.items() if v @ dog >= 0.9)
    assert "--since must be a date" in search_error([index, "--text", "x", "--since", "May"], capsys)
    assert "is not in the index" in search_error([index, "--text", "x", "--folder", "/nowhere"], capsys)
    assert "--offset must be at least 0" in search_error([index, "--text", "x", "--offset", "-1"], capsys)
    assert "--min-score must be a cosine" in search_error([index, "--text", "x", "--min-score", "2"], capsys)


def test_cli_pages(query_index, capsys):
    index, _ = query_index
    whole = search_json([index, "--text", "a dog", "--modality", "image", "-k", "40"], capsys)
    pages = [search_json([index, "--text", "a dog", "--modality", "image", "-k", "6", "--offset", o], capsys)
             for o in range(0, 30, 6)]
    assert [h["path"] for p in pages for h in p["results"]["image"]] == [h["path"] for h in whole["results"]["image"]]
    assert [p["pages"]["image"]["has_more"] for p in pages] == [True] * 4 + [False]
    assert whole["pages"]["image"]["total"] == 29  # 4 photos, 13 copies, 12 scenes


def test_api_filters_pages_and_more_like_this(query_server, query_index):
    index, library = query_index
    dog = vector_id(index, library / "photos" / "dog.JPEG")
    same = vector_id(index, library / "copies" / "dog_same.jpg")
    first, second = (post_json(query_server.url, {"like": dog, "modalities": ["image"], "k": 1, "offset": o})
                     for o in (0, 1))
    assert first[0] == second[0] == 200
    # the byte copy ties with the photo: ids in order, one per page
    assert [first[1]["results"]["image"][0]["id"], second[1]["results"]["image"][0]["id"]] == sorted([dog, same])
    assert first[1]["pages"]["image"] == {"offset": 0, "limit": 1, "has_more": True, "total": 29}
    assert first[1]["query"] == {"id": dog, "path": str(library / "photos" / "dog.JPEG"), "modality": "image"}
    status, out = post_json(query_server.url, {"text": "a photo", "modalities": ["image", "audio"], "k": 50,
                                               "folder": [str(library / "scenes")], "since": "2024-01-01",
                                               "until": "2024-12-31"})
    assert status == 200 and names(out) == [f"day_{i}.png" for i in range(6)] and out["results"]["audio"] == []
    assert out["filters"]["since"].startswith("2024-01-01T00:00")
    status, out = post_json(query_server.url, {"text": "a sound", "modalities": ["audio"], "max_duration": 1.5,
                                               "min_score": -1})
    assert status == 200 and names(out, "audio") == ["tone_1s.wav"]
    for payload, message in (({"text": "x", "since": "soon"}, "since must be a date"),
                             ({"text": "x", "offset": -2}, "offset must be a whole number"),
                             ({"text": "x", "folder": "/nowhere"}, "is not in the index"),
                             ({"like": 10 ** 12}, "no vector with id"),
                             ({"text": "x", "min_size": "big"}, "min_size must be a size")):
        status, out = post_json(query_server.url, payload)
        assert status == 400 and message in out["error"], (payload, out)


def test_filtered_search_reads_ids_not_vectors(synthetic, monkeypatch):
    """A filter asks SQLite for vector ids; vectors are read only for a few allowed ones (exact scores), once."""
    index_dir, root, vectors, meta = synthetic
    read = []

    def vectors_by_id(ids, dim):
        read.append(len(ids))
        return vectors[ids - 1]  # ids count from 1 in insertion order

    for kind, expected in (("flat", [1200]), ("ivf", [1200]), ("flat-wide", [])):  # 1200 vectors in folder "ab"
        wide = (f"{root}/ab", f"{root}/a_b", f"{root}/a%", f"{root}/a")  # every vector: faiss + selector
        filters = Filters(folders=(f"{root}/ab",) if kind != "flat-wide" else wide)
        index = open_index(index_dir, kind.split("-")[0])
        monkeypatch.setattr(index.store, "vectors", None)  # never the whole modality
        monkeypatch.setattr(index.store, "vectors_by_id", vectors_by_id)
        for query in vectors[3:5]:  # the second query with the filter reuses what the first read
            results, _ = index.search_pages(query, ["image"], 5, 0, filters)
        assert read == expected and len(results["image"]) == 5
        read.clear()
        index.store.close()
