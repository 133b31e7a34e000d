"""The default approximate index, ``ivfsq`` (IVF over 8-bit codes, candidates re-ranked with float16
copies): recall against exact search, scores within 3e-4 of the cosines, less room than a flat index,
ID selectors (filters), a memory-mapped reload, and ``auto`` choosing it past the threshold; flat and
hnsw searched with their ids mapped outside faiss's IDMap2 (docs/SEARCH.md; its speed at 1e6 vectors: bench/search.py)."""
import os

import numpy as np
import pytest
from search_helpers import index_main, make_collection

from one_peace.search import vector_index
from one_peace.search.query import main as search_main
from one_peace.search.searcher import faiss_path

pytest_plugins = ["search_fixtures"]  # search_checkpoint


def structured(n, dim=64, centres=40, seed=0):
    """Unit vectors around a few centres (real embeddings cluster), and queries drawn like them."""
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centres, dim)).astype(np.float32)
    data = middle[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    return data


def test_ivfsq_finds_the_exact_neighbours_with_their_cosines(tmp_path):
    data = structured(4000)
    queries, data = data[:50], data[50:]
    ids = np.arange(len(data)) * 5 + 11  # vector ids are not row numbers
    options = vector_index.IndexOptions(nlist=40, nprobe=8)
    index = vector_index.build(data, ids, "ivfsq", options)
    vector_index.set_search_params(index, options)
    assert vector_index.kind_of(index) == "ivfsq" and index.ntotal == len(data)
    scores, found = vector_index.search(index, queries, 10)
    flat = vector_index.build(data, ids, "flat", options)
    _, exact = vector_index.search(flat, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert recall >= 0.95, recall
    rows = (found - 11) // 5
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", data[rows], queries), atol=3e-4)  # float16 copies
    assert vector_index.nbytes(index) < vector_index.nbytes(flat)  # 8-bit codes (1/4) + float16 copies (1/2)
    path = str(tmp_path / "faiss" / "x.faiss")
    vector_index.save(index, path)
    loaded = vector_index.load(path)
    vector_index.set_search_params(loaded, options)
    assert vector_index.kind_of(loaded) == "ivfsq"
    np.testing.assert_array_equal(vector_index.search(loaded, queries, 10)[1], found)


@pytest.mark.parametrize("params", ["plain", "ivf"])
def test_ivfsq_honours_an_id_selector(params):
    f = vector_index.faiss()
    data = structured(1000, seed=1)
    ids = np.arange(len(data)) + 1000
    options = vector_index.IndexOptions(nlist=10, nprobe=10)  # every list: the filtered ranking is exact
    index = vector_index.build(data, ids, "ivfsq", options)
    vector_index.set_search_params(index, options)
    allowed = ids[::7]
    sel = f.IDSelectorBatch(allowed)
    search_params = f.SearchParameters(sel=sel) if params == "plain" else f.SearchParametersIVF(sel=sel, nprobe=10)
    scores, found = index.search(data[:3], 5, params=search_params)
    expected = np.argsort(-(data[allowed - 1000] @ data[:3].T), axis=0)[:5].T
    np.testing.assert_array_equal(found, allowed[expected])


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_id_mapped_indexes_search_and_range_search_in_vector_ids(kind, tmp_path):
    """flat and hnsw map their internal ids to vector ids outside faiss's IDMap2 (whose OpenMP mapping
    waits for a second core on a busy machine): the same ids, selectors and ranges as the IDMap2."""
    f = vector_index.faiss()
    data = structured(500, seed=2)
    ids = np.arange(len(data)) * 3 + 5
    options = vector_index.IndexOptions(ef_search=500)
    index = vector_index.build(data, ids, kind, options)
    vector_index.set_search_params(index, options)
    raw = index.index  # the faiss IDMap2 itself
    np.testing.assert_array_equal(vector_index.search(index, data[:4], 5)[1], raw.search(data[:4], 5)[1])
    allowed = ids[::4]
    sel = f.IDSelectorBatch(allowed)  # held: faiss parameters do not own their selector
    params = f.SearchParameters(sel=sel)
    _, found = index.search(data[:4], 5, params=params)
    assert np.isin(found, allowed).all() and found[0, 0] == ids[0]
    lims, scores, hits = index.range_search(data[:2], 0.8, params=params)
    _, _, expected = raw.range_search(data[:2], 0.8, params=f.SearchParameters(sel=sel))
    assert sorted(hits) == sorted(expected) and np.isin(hits, allowed).all() and len(hits)
    path = str(tmp_path / "x.faiss")
    vector_index.save(index, path)
    assert vector_index.kind_of(vector_index.load(path)) == kind
    empty = vector_index.build(np.zeros((0, 64), np.float32), np.zeros(0, np.int64), kind, options)
    assert vector_index.search(empty, data[:1], 3)[1].tolist() == [[-1]]


def test_auto_takes_ivfsq_past_the_threshold_and_old_types_still_load(tmp_path, capsys, search_checkpoint,
                                                                      fixture_bpe_dir):
    root = make_collection(tmp_path / "files", tmp_path / "outside")
    os.remove(root / "clip.mp4")
    index = tmp_path / "index"
    code, summary, err = index_main([index, root, "--checkpoint", search_checkpoint, "--bpe-dir", fixture_bpe_dir,
                                     "--approx-threshold", "3"], capsys)
    assert code == 0, err
    assert summary["index_types"] == {"audio": "flat", "image": "flat", "text": "ivfsq"}  # 1, 2 and 3 vectors
    assert vector_index.kind_of(vector_index.load(faiss_path(str(index), "text"))) == "ivfsq"

    def top_text():
        assert search_main([str(index), "--text", "an elephant walking in the grass", "--modality", "text", "-k", "1",
                            "--json"]) == 0
        import json

        return json.loads(capsys.readouterr().out)["results"]["text"][0]

    hit = top_text()
    assert hit["row"] == 2 and hit["score"] == pytest.approx(1, abs=1e-4)
    code, summary, _ = index_main([index, "--approx-type", "ivf"], capsys)  # the earlier default: rebuilt
    assert code == 0 and summary["index_types"]["text"] == "ivf" and top_text()["row"] == 2
