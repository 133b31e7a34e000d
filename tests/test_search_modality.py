"""A modality registered from this file alone is indexed, searched and served by the search tools.

``toy`` (the adapter of ``test_modality_registry.py``) with its own file suffix ``.toy`` (a text file of
floats) and a processor that reads such files.  Nothing in ``search/`` names it: its extension, its
place among the query modalities and the way the page shows it (``search_view="file"``: a plain
link) come from the registry, read after the search modules were imported.
"""
import contextlib
import io
import json
import os
import sqlite3

import pytest
import torch
from search_helpers import LiveServer, index_main, write_checkpoint, write_png
from test_modality_registry import CHUNK, ToyAdapter, ToyAdapterConfig
from test_search import post_file, post_json, raw

from one_peace.models.modalities import Modality, modality_names, register_modality, unregister_modality
from one_peace.search.query import main as search_main

BRANCHES = ("text", "image", "audio", "toy")


def read_toy(path):
    values = [float(v) for v in open(path).read().split()]
    if not values or len(values) % CHUNK:
        raise ValueError(f"a .toy file holds a multiple of {CHUNK} numbers, {path} holds {len(values)}")
    return values


def process_toy_files(hub, paths):
    return {"src_toys": torch.tensor([read_toy(p) for p in paths], dtype=hub.dtype, device=hub.device)}


def toy_may_start_fresh(model, state_dict):
    """Upgrade hook: a checkpoint without a toy branch (the fixture's) lets it start fresh; this is how
    the test's checkpoint gets one."""
    return {k for k in model.state_dict() if ".toy_" in f".{k}" and k not in state_dict}


@pytest.fixture(scope="module")
def toy():
    spec = register_modality(Modality("toy", ToyAdapter, ToyAdapterConfig, ("src_toys",), fused_type="tl",
                                      processor=process_toy_files, upgrade=toy_may_start_fresh,
                                      extensions=(".toy",), search_view="file"))
    yield spec
    unregister_modality("toy")
    assert "toy" not in modality_names()


@pytest.fixture(scope="module")
def toy_checkpoint(toy, tmp_path_factory, fixture_bpe_dir):
    """The fixtures' retrieval model (text, image, audio) plus a toy branch, saved as a checkpoint."""
    from one_peace import from_pretrained

    folder = tmp_path_factory.mktemp("toy_ckpt")
    base = write_checkpoint(folder / "retrieval.pt")
    torch.manual_seed(0)
    # The toy branch starts fresh: deferred initialisation replays its init calls (models/deferred_init.py).
    hub = from_pretrained(base, device="cpu", bpe_dir=fixture_bpe_dir, modalities=BRANCHES)
    assert hub.model.modalities == BRANCHES
    saved = torch.load(base, weights_only=False)
    path = folder / "retrieval_toy.pt"
    torch.save({"args": None, "cfg": saved["cfg"], "model": hub.model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def toy_index(toy_checkpoint, tmp_path_factory, fixture_bpe_dir):
    """(index dir, collection dir, summary): three .toy files, a broken one, a picture."""
    root = tmp_path_factory.mktemp("toy_files")
    generator = torch.Generator().manual_seed(3)
    for name in ("a.toy", "b.toy", "c.toy"):
        (root / name).write_text(" ".join(f"{v:.6f}" for v in torch.randn(5 * CHUNK, generator=generator).tolist()))
    (root / "broken.toy").write_text("not numbers")
    write_png(root / "red.png", (220, 20, 20))
    index = tmp_path_factory.mktemp("toy_index") / "index"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # one-peace-index in this process: the toy is registered here only
        code = index_main([index, root, "--checkpoint", toy_checkpoint, "--bpe-dir", fixture_bpe_dir])[0]
    assert code == 0, out.getvalue()
    return index, root, json.loads(out.getvalue())


def run(argv, capsys):
    code = search_main([str(a) for a in argv] + ["--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def test_toy_files_are_indexed_under_their_modality(toy_index):
    index, root, summary = toy_index
    assert summary["found"] == {"image": 1, "toy": 4} and summary["embedded"] == 4
    assert [f["path"] for f in summary["failed"]] == [str(root / "broken.toy")]
    with sqlite3.connect(os.path.join(index, "index.sqlite")) as db:
        files = dict(db.execute("SELECT path, modality FROM files"))
        failed = dict(db.execute("SELECT path, reason FROM files WHERE status = 'failed'"))
        counts = dict(db.execute("SELECT modality, COUNT(*) FROM vectors GROUP BY modality"))
        model = json.loads(db.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()[0])
    assert files == {str(root / n): "toy" for n in ("a.toy", "b.toy", "c.toy", "broken.toy")} | \
        {str(root / "red.png"): "image"}
    assert list(failed) == [str(root / "broken.toy")] and "ValueError" in failed[str(root / "broken.toy")]
    assert counts == {"image": 1, "toy": 3}
    assert model["modalities"] == list(BRANCHES)


def test_toy_queries_find_toy_files(toy_index, capsys):
    index, root, _ = toy_index
    # a .toy query file: its modality from the registry, every indexed modality searched
    out = run([index, "--file", root / "b.toy", "-k", "3"], capsys)
    assert out["query"] == {"file": str(root / "b.toy"), "modality": "toy"}
    assert sorted(out["results"]) == ["image", "toy"]
    top = out["results"]["toy"][0]
    assert top["path"] == str(root / "b.toy") and top["score"] == pytest.approx(1.0, abs=1e-4)
    assert len(out["results"]["toy"]) == 3
    # --modality toy: accepted, and only toy searched (a text finds the toy files too: one space)
    out = run([index, "--text", "a toy", "--modality", "toy", "-k", "5"], capsys)
    assert list(out["results"]) == ["toy"]
    assert sorted(h["path"] for h in out["results"]["toy"]) == [str(root / n) for n in ("a.toy", "b.toy", "c.toy")]
    out = run([index, "--file", root / "a.toy", "--modality", "image,toy", "-k", "1"], capsys)
    assert out["results"]["toy"][0]["path"] == str(root / "a.toy")


def test_server_lists_and_serves_the_toy_modality(toy_index):
    from one_peace.search.searcher import SearchIndex
    from one_peace.search.server import create_app

    index, root, _ = toy_index
    with LiveServer(create_app(SearchIndex(str(index)))) as server:
        status, info = raw(server, "GET", "/api/info")
        info = json.loads(info)
        assert status == 200 and info["counts"] == {"image": 1, "toy": 3}
        assert info["modalities"] == ["image", "toy"]  # thumbnails first, then a plain-link view
        assert info["views"]["toy"] == "file" and info["views"]["image"] == "image"
        assert "toy" in info["query_modalities"] and ".toy" in info["accept"]
        status, out = post_json(server.url, {"text": "a toy", "modalities": ["toy"], "k": 3})
        assert status == 200, out
        hits = out["results"]["toy"]
        assert len(hits) == 3 and all(h["view"] == "file" and "thumb_url" not in h for h in hits)
        status, data = raw(server, "GET", hits[0]["url"])
        assert status == 200 and data == open(hits[0]["path"], "rb").read()
        assert raw(server, "GET", f"/thumb/{hits[0]['id']}")[0] == 404  # no thumbnail for a "file" view
        status, data = post_file(server, root / "c.toy", [("modalities", "toy"), ("k", "1")])
        out = json.loads(data)
        assert status == 200 and out["query"] == {"file": "c.toy", "modality": "toy"}
        assert out["results"]["toy"][0]["path"] == str(root / "c.toy")


def test_page_shows_toy_hits_as_links(toy_index):
    """The page draws the toy section from /api/info and its hits by their view: a link, no player."""
    from test_search_browser import ARGS, CHROMIUM

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from one_peace.search.searcher import SearchIndex
    from one_peace.search.server import create_app

    index, root, _ = toy_index
    with LiveServer(create_app(SearchIndex(str(index)))) as server, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url + "/")
        page.wait_for_selector("#modalities input")
        assert page.eval_on_selector_all("#modalities input", "els => els.map(e => e.value)") == ["image", "toy"]
        page.fill("#text", "a toy")
        page.click("#go")
        page.wait_for_selector('section[data-modality="toy"] .hit')
        links = page.eval_on_selector_all('section[data-modality="toy"] .hit a.name', "els => els.map(a => "
                                          "[a.closest('.hit').dataset.path, a.getAttribute('href')])")
        assert sorted(path for path, _ in links) == [str(root / n) for n in ("a.toy", "b.toy", "c.toy")]
        assert all(href.startswith("/media/") for _, href in links)
        assert page.locator('section[data-modality="toy"] img, section[data-modality="toy"] audio').count() == 0
        assert page.locator('section[data-modality="image"] img').count() == 1
        assert errors == []
        browser.close()
