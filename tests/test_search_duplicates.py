"""Near-duplicates (``one-peace-search INDEX --duplicates``, ``GET /api/duplicates``): real photos with
their re-encoded, resized, cropped and byte copies group per photo at the default threshold, different
photos never; any threshold gives the connected components of the pairs above it; segments of one file
never group with themselves; every faiss index type finds the same groups."""
import json
import os

import numpy as np
import pytest
from search_helpers import search_error, search_json
from search_query_helpers import COPIES, PHOTOS, stored
from test_search import raw

from one_peace.search import vector_index
from one_peace.search.duplicates import DEFAULT_THRESHOLD, find_duplicates
from one_peace.search.query import main as search_main
from one_peace.search.scan import Source
from one_peace.search.searcher import SearchIndex, build_faiss
from one_peace.search.store import IndexStore

pytest_plugins = ["search_fixtures", "search_query_fixtures"]  # search_checkpoint, query_index, query_server


def families(library):
    """photo name -> the paths of the photo and its copies (the dog photo has a byte copy too)."""
    out = {}
    for name in PHOTOS:
        stem = os.path.splitext(name)[0]
        out[name] = {str(library / "photos" / name)} | {str(library / "copies" / f"{stem}_{c}") for c in COPIES}
    out["dog.JPEG"].add(str(library / "copies" / "dog_same.jpg"))
    return out


def components(vectors: dict, threshold: float):
    """Connected components (2 or more) of the graph of pairs at cosine >= threshold, by brute force."""
    paths = sorted(vectors)
    matrix = np.stack([vectors[p] for p in paths])
    linked = matrix @ matrix.T >= threshold
    seen, out = set(), []
    for start in range(len(paths)):
        if start in seen:
            continue
        todo, group = [start], set()
        while todo:
            i = todo.pop()
            if i not in group:
                group.add(i)
                todo += [j for j in np.flatnonzero(linked[i]) if j not in group]
        seen |= group
        if len(group) > 1:
            out.append({paths[i] for i in group})
    return sorted(out, key=sorted)


def test_photos_and_their_copies_group_at_the_default_threshold(query_index, capsys):
    index, library = query_index
    # the photos and their copies (the generated scenes are alike for the test checkpoint: left out)
    out = search_json([index, "--duplicates", "--modality", "image", "--folder", library / "photos", "--folder",
                       library / "copies"], capsys)
    assert list(out) == ["groups"] and list(out["groups"]) == ["image"]
    groups = out["groups"]["image"]
    expected = families(library)
    assert sorted(({e["path"] for e in g} for g in groups), key=sorted) == sorted(expected.values(), key=sorted)
    for group in groups:
        # the original first (the oldest), then by similarity to it
        assert group[0]["path"].startswith(str(library / "photos")) and group[0]["score"] == 1.0
        assert [e["score"] for e in group[1:]] == sorted((e["score"] for e in group[1:]), reverse=True)
        assert all(e["score"] >= DEFAULT_THRESHOLD and {"path", "score", "id", "size"} <= set(e) for e in group)
    assert len(groups[0]) == 5  # the dog: three copies and a byte copy
    # the calibration the default rests on: copies score above it, different photos below
    vectors = stored(index, "image")
    for name, family in expected.items():
        original = vectors[str(library / "photos" / name)]
        assert min(vectors[p] @ original for p in family) >= DEFAULT_THRESHOLD, name
        others = [p for n, f in expected.items() if n != name for p in f]
        assert max(vectors[p] @ vectors[q] for p in family for q in others) < DEFAULT_THRESHOLD - 0.05, name


@pytest.mark.parametrize("threshold", [0.95, 0.99, 0.6])
def test_any_threshold_gives_the_components_of_the_pairs_above_it(query_index, capsys, threshold):
    index, _ = query_index
    out = search_json([index, "--duplicates", "--modality", "image", "--threshold", threshold], capsys)
    found = sorted(({e["path"] for e in g} for g in out["groups"]["image"]), key=sorted)
    assert found == components(stored(index, "image"), threshold)


def test_every_modality_by_default_and_the_text_output(query_index, capsys):
    index, library = query_index
    out = search_json([index, "--duplicates"], capsys)
    assert sorted(out["groups"]) == ["audio", "image"]
    assert [[e["path"] for e in g] for g in out["groups"]["audio"]] == [  # same date: the larger file first
        [str(library / "sounds" / "cow_copy.wav"), str(library / "sounds" / "cow.flac")]]
    assert search_main([str(index), "--duplicates", "--modality", "audio"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"audio: 1 group of near-duplicates (2 items, threshold {DEFAULT_THRESHOLD:g})"
    assert lines[1] == "  group 1 (2):"
    assert lines[2].split()[:2] == ["1.0000", str(library / "sounds" / "cow_copy.wav")]


def test_duplicate_mistakes_are_one_error_line(query_index, capsys):
    index, _ = query_index
    assert "above 0 and at most 1" in search_error([index, "--duplicates", "--threshold", "1.5"], capsys)
    assert "--threshold goes with --duplicates" in search_error([index, "--text", "x", "--threshold", "0.9"], capsys)
    assert "--duplicates takes no query" in search_error([index, "--duplicates", "--text", "x"], capsys)
    assert "is not in the index" in search_error([index, "--duplicates", "--folder", "/nowhere"], capsys)


def test_api_duplicates(query_server, query_index):
    index, library = query_index
    status, data = raw(query_server, "GET", f"/api/duplicates?modalities=image&folder={library / 'photos'}"
                                            f"&folder={library / 'copies'}")
    out = json.loads(data)
    assert status == 200 and out["threshold"] == DEFAULT_THRESHOLD
    assert sorted(({e["path"] for e in g} for g in out["groups"]["image"]), key=sorted) == \
        sorted(families(library).values(), key=sorted)
    entry = out["groups"]["image"][0][0]
    assert entry["thumb_url"] == f"/thumb/{entry['id']}" and entry["view"] == "image"
    assert raw(query_server, "GET", entry["thumb_url"])[0] == 200
    status, data = raw(query_server, "GET", "/api/duplicates?threshold=2")
    assert status == 400 and "at most 1" in json.loads(data)["error"]
    status, data = raw(query_server, "GET", "/api/duplicates?modalities=smell")
    assert status == 400 and "smell" in json.loads(data)["error"]
    status, data = raw(query_server, "GET", "/api/duplicates?since=2030-01-01")  # nothing that new
    assert status == 200 and json.loads(data)["groups"] == {"audio": [], "image": []}


# ---- a hand-made index: segments, and every index type -------------------------------------------
def hand_made(tmp_path, entries, dim):
    store = IndexStore(str(tmp_path / "index"), create=True)
    store.commit_batch(entries)
    store.set_roots([str(tmp_path)])
    store.set("model", {"dim": dim, "checkpoint": "none", "model_type": "one_peace_retrieval", "dtype": "float32",
                        "modalities": ["image", "video", "audio"]})
    store.close()
    return str(tmp_path / "index")


def test_segments_of_one_file_do_not_group_with_themselves(tmp_path):
    rng = np.random.default_rng(0)
    a, b, c = (v / np.linalg.norm(v) for v in rng.standard_normal((3, 8)).astype(np.float32))
    entries = [  # a long video: two equal segments; another video whose one segment equals the first
        (Source(str(tmp_path / "long.mp4"), "video", 900, 0), "ok", None,
         [(None, None, a, "video", 0.0, 10.0), (None, None, a, "video", 10.0, 20.0),
          (None, None, b, "audio", 0.0, 20.0)]),
        (Source(str(tmp_path / "cut.mp4"), "video", 100, 0), "ok", None, [(None, None, a, "video", 0.0, 10.0)]),
        (Source(str(tmp_path / "other.mp4"), "video", 100, 0), "ok", None, [(None, None, c, "video", 0.0, 10.0)]),
    ]
    index = SearchIndex(hand_made(tmp_path, entries, 8), needs_model=False)
    groups = find_duplicates(index)["groups"]
    assert [[e["path"] for e in g] for g in groups["video"]] == [[str(tmp_path / "long.mp4"),
                                                                  str(tmp_path / "cut.mp4")]]
    assert groups["audio"] == []  # one vector: nothing to pair with
    entries[1] = (Source(str(tmp_path / "cut.mp4"), "video", 100, 0), "ok", None, [(None, None, c, "video", 0, 1)])
    index = SearchIndex(hand_made(tmp_path / "two", entries, 8), needs_model=False)
    assert [[e["path"] for e in g] for g in find_duplicates(index)["groups"]["video"]] == [
        [str(tmp_path / "cut.mp4"), str(tmp_path / "other.mp4")]]  # not long.mp4 with itself


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfsq", "hnsw"])
def test_every_index_type_finds_the_same_groups(tmp_path, kind):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((600, 32)).astype(np.float32)
    near = base[:40] + 0.05 * rng.standard_normal((40, 32)).astype(np.float32)  # 40 near copies
    vectors = np.concatenate([base, near])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    entries = [(Source(str(tmp_path / f"f{i:04d}.png"), "image", 100, 0), "ok", None, [(None, None, v)])
               for i, v in enumerate(vectors)]
    index = SearchIndex(hand_made(tmp_path, entries, 32), needs_model=False)
    options = vector_index.IndexOptions(index_type=kind)
    index._faiss["image"] = (index.store.version("image"), build_faiss(index.store, "image", 32, options, write=False))
    assert vector_index.kind_of(index.faiss_index("image")) == kind
    groups = find_duplicates(index, ["image"], 0.95)["groups"]["image"]
    expected = components({str(tmp_path / f"f{i:04d}.png"): v for i, v in enumerate(vectors)}, 0.95)
    assert len(expected) == 40
    found = sorted(({e["path"] for e in g} for g in groups), key=sorted)
    if kind == "flat":
        assert found == expected
    else:  # approximate: almost every pair is found, and nothing else
        assert len(found) >= 38 and all(g in expected for g in found)
