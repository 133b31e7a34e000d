"""Mistakes with the search tools are one clear line (``TOOL: error: ...``, exit 2) or a 4xx naming the
problem, checked at start where possible; never a traceback, a 500 or a silent success.  Also: the
page's allowed Host names, IVF lists clamped to the data, 0-pixel images, the bench's count labels."""
import importlib.util
import io
import json
import os
import shutil
import sys
from contextlib import redirect_stdout

import pytest
from helpers import BPE_ASSETS, MEDIA, REPO
from search_helpers import LiveServer, index_main, make_collection, write_png
from test_search import db_rows, post_json, raw

from one_peace.search import server as serve_module
from one_peace.search import vector_index
from one_peace.search.query import main as search_main
from one_peace.search.searcher import faiss_path

pytest_plugins = ["search_fixtures"]  # search_checkpoint, built_index, live_server


@pytest.fixture()
def photos(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    for i, colour in enumerate([(220, 20, 20), (20, 220, 20), (20, 20, 220)]):
        write_png(root / f"p{i}.png", colour)
    return root


def new_index(tmp_path, roots, checkpoint, bpe, capsys, *extra):
    index = tmp_path / "index"
    code, summary, err = index_main([index, *roots, "--checkpoint", checkpoint, "--bpe-dir", bpe, *extra], capsys)
    assert code == 0, err
    return index, summary


def error_of(code_and_err, *needles):
    code, err = code_and_err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") <= 2, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def search(capsys, *argv):
    code = search_main([str(a) for a in argv])
    return code, capsys.readouterr().err


def index(capsys, *argv):
    code, _, err = index_main(list(argv), capsys)
    return code, err


@pytest.fixture()
def no_serving(monkeypatch):
    """A start that should have been refused fails the test instead of serving forever."""
    monkeypatch.setattr(serve_module, "serve", lambda *a: pytest.fail("served despite the error"))


def serve(capsys, *argv):
    code = serve_module.main([str(a) for a in argv])
    return code, capsys.readouterr().err


# ---- numbers refused at start --------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-1"])
def test_batch_size_below_one_is_refused(tmp_path, photos, search_checkpoint, capsys, value):
    error_of(index(capsys, tmp_path / "index", photos, "--checkpoint", search_checkpoint, "--batch-size", value),
             f"--batch-size must be at least 1, got {value}")
    assert not (tmp_path / "index").exists()


@pytest.mark.parametrize("option", ["--nlist", "--nprobe", "--ef-search"])
def test_faiss_numbers_below_one_are_refused_by_the_indexer(tmp_path, photos, search_checkpoint, capsys, option):
    error_of(index(capsys, tmp_path / "index", photos, "--checkpoint", search_checkpoint, option, "0"),
             f"{option} must be at least 1, got 0")


@pytest.mark.parametrize("value", ["0", "-1"])
def test_search_nprobe_below_one_is_refused(built_index, capsys, value):
    index_dir, _, _ = built_index
    error_of(search(capsys, index_dir, "--text", "a dog", "--nprobe", value), f"--nprobe must be at least 1, got {value}")
    error_of(search(capsys, index_dir, "--text", "a dog", "--ef-search", value), "--ef-search must be at least 1")


@pytest.mark.parametrize("port", ["99999", "-1", "0"])
def test_serve_refuses_a_port_out_of_range(built_index, capsys, no_serving, port):
    error_of(serve(capsys, built_index[0], "--port", port), f"--port must be between 1 and 65535, got {port}")


@pytest.mark.parametrize("mb", ["-1", "0", "nan"])
def test_serve_refuses_an_upload_limit_not_above_zero(built_index, capsys, no_serving, mb):
    error_of(serve(capsys, built_index[0], "--max-upload-mb", mb), "--max-upload-mb must be a number of megabytes")


# ---- paths -----------------------------------------------------------------------------------------
def test_an_index_path_that_is_a_file_is_refused(tmp_path, photos, search_checkpoint, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("not an index")
    error_of(index(capsys, path, photos, "--checkpoint", search_checkpoint), f"index path {path} is a file")
    error_of(search(capsys, path, "--text", "x"), f"index path {path} is a file")
    error_of(index(capsys, path, "--stats"), f"index path {path} is a file")
    assert path.read_text() == "not an index"


def test_swapped_or_missing_folders_create_nothing(tmp_path, photos, search_checkpoint, fixture_bpe_dir, capsys):
    before = sorted(os.listdir(photos))
    # FOLDER INDEX_DIR instead of INDEX_DIR FOLDER: the photo folder is not an index and not empty
    error_of(index(capsys, photos, tmp_path / "index", "--checkpoint", search_checkpoint),
             f"{photos} is not an index", "not empty", "swapped")
    assert sorted(os.listdir(photos)) == before and not (tmp_path / "index").exists()
    error_of(index(capsys, tmp_path / "new", tmp_path / "nowhere", "--checkpoint", search_checkpoint),
             f"folder to index not found: {tmp_path / 'nowhere'}")
    assert not (tmp_path / "new").exists()
    error_of(index(capsys, tmp_path / "new", photos, "--checkpoint", tmp_path / "none.pt"), "checkpoint not found")
    assert not (tmp_path / "new").exists()
    error_of(index(capsys, tmp_path / "new", "--checkpoint", search_checkpoint), "name the folders to index")
    (tmp_path / "empty").mkdir()  # an empty directory (or one an earlier start left a lock in) is a fine new index
    (tmp_path / "empty" / "lock").write_text("")
    code, summary, err = index_main([tmp_path / "empty", photos, "--checkpoint", search_checkpoint, "--bpe-dir",
                                     fixture_bpe_dir], capsys)
    assert code == 0 and summary["embedded"] == 3, err


def test_forget_root_and_added_folders_must_be_known_or_exist(tmp_path, photos, search_checkpoint,
                                                              fixture_bpe_dir, capsys):
    index_dir, _ = new_index(tmp_path, [photos], search_checkpoint, fixture_bpe_dir, capsys)
    error_of(index(capsys, index_dir, "--forget-root", tmp_path / "other"),
             f"--forget-root {tmp_path / 'other'}: not a folder of this index", str(photos))
    error_of(index(capsys, index_dir, tmp_path / "typo"), f"folder to index not found: {tmp_path / 'typo'}")
    assert db_rows(index_dir, "SELECT path FROM roots") == [(str(photos),)]


# ---- the BPE folder ----------------------------------------------------------------------------------
def test_a_bpe_dictionary_that_does_not_fit_the_checkpoint_is_named(built_index, tmp_path, photos,
                                                                    search_checkpoint, capsys, no_serving):
    index_dir, _, _ = built_index
    full = str(BPE_ASSETS)  # GPT-2's 50k-entry dictionary; the fixture model has 256 token embeddings
    for err in (error_of(search(capsys, index_dir, "--text", "a dog", "--bpe-dir", full)),
                error_of(index(capsys, tmp_path / "index", photos, "--checkpoint", search_checkpoint,
                               "--bpe-dir", full))):
        assert "BPE dictionary" in err and "does not fit checkpoint" in err
        assert os.path.join(full, "dict.txt") in err and search_checkpoint in err
    error_of(serve(capsys, index_dir, "--bpe-dir", full), "does not fit checkpoint")


def test_a_missing_recorded_bpe_folder_names_it_and_the_environment(tmp_path, photos, search_checkpoint,
                                                                    fixture_bpe_dir, capsys, monkeypatch):
    bpe = tmp_path / "bpe"
    bpe.mkdir()
    for name in os.listdir(fixture_bpe_dir):
        shutil.copy(os.path.join(fixture_bpe_dir, name), bpe / name)
    index_dir, _ = new_index(tmp_path, [photos], search_checkpoint, str(bpe), capsys)
    (bpe / "dict.txt").unlink()
    monkeypatch.delenv("ONE_PEACE_BPE_DIR", raising=False)
    err = error_of(search(capsys, index_dir, "--text", "red"), f"the BPE folder {bpe} recorded by index",
                   "lacks dict.txt", "$ONE_PEACE_BPE_DIR is not set", "--bpe-dir")
    assert "bpe_dir argument" not in err
    monkeypatch.setenv("ONE_PEACE_BPE_DIR", fixture_bpe_dir)  # the fallback when the recorded folder is gone
    code = search_main([str(index_dir), "--text", "red", "--json"])
    out = capsys.readouterr()
    assert code == 0 and len(json.loads(out.out)["results"]["image"]) == 3


# ---- the server ---------------------------------------------------------------------------------------
def test_allowed_host_adds_to_the_loopback_names(built_index, monkeypatch, capsys):
    served = {}
    monkeypatch.setattr(serve_module, "serve", lambda app, host, port: served.update(app=app, host=host, port=port))
    assert serve_module.main([str(built_index[0]), "--allowed-host", "example.local", "--port", "8799"]) == 0
    assert "http://127.0.0.1:8799/" in capsys.readouterr().err  # the printed URL answers
    with LiveServer(served["app"]) as server:
        for host, status in (("127.0.0.1", 200), ("localhost", 200), ("example.local", 200), ("evil.example", 400)):
            assert raw(server, "GET", "/", headers={"Host": host})[0] == status, host


def test_api_bad_k_bodies_and_huge_ids_are_4xx(live_server):
    for k in ("abc", 2.5, True, "0", [3]):
        status, out = post_json(live_server.url, {"text": "a dog", "k": k})
        assert status == 400 and "k must be a whole number between 1 and 1000" in out["error"], (k, out)
    status, out = post_json(live_server.url, {"text": "a dog", "modalities": 5})
    assert status == 400 and "modalities must be a list" in out["error"]
    status, out = post_json(live_server.url, {"text": "a dog", "k": "2"})
    assert status == 200 and all(len(h) <= 2 for h in out["results"].values())
    status, data = raw(live_server, "POST", "/api/search", b"<query><text>a dog</text></query>",
                       {"Content-Type": "application/xml"})
    assert status == 400 and "expected a JSON body" in json.loads(data)["error"]
    assert "application/xml" in json.loads(data)["error"]
    status, data = raw(live_server, "POST", "/api/search", b"text=a+dog&modalities=image&k=2",
                       {"Content-Type": "application/x-www-form-urlencoded"})  # a plain form is read as one
    out = json.loads(data)
    assert status == 200 and list(out["results"]) == ["image"] and len(out["results"]["image"]) == 2
    for vid in ("9223372036854775808", "99999999999999999999999"):
        status, data = raw(live_server, "GET", f"/media/{vid}")
        assert status == 404 and b"no such file" in data
        assert raw(live_server, "GET", f"/thumb/{vid}")[0] == 404


# ---- IVF lists ---------------------------------------------------------------------------------------------
def test_more_ivf_lists_than_vectors_are_clamped_and_later_runs_work(tmp_path, search_checkpoint, fixture_bpe_dir,
                                                                       capsys, caplog):
    root = make_collection(tmp_path / "files", tmp_path / "outside")
    os.remove(root / "clip.mp4")
    index_dir, summary = new_index(tmp_path, [MEDIA, root], search_checkpoint, fixture_bpe_dir, capsys,
                                   "--index-type", "ivf", "--nlist", "1000")
    assert set(summary["index_types"].values()) == {"ivf"}
    assert "IVF nlist 1000 is more than the 6 vectors to index: using 6 lists" in caplog.text
    built = vector_index.faiss().downcast_index(vector_index.load(faiss_path(str(index_dir), "image")))
    assert built.nlist == 6 and built.ntotal == 6
    assert json.loads(db_rows(index_dir, "SELECT value FROM meta WHERE key = 'faiss:image'")[0][0])["nlist"] == 6
    write_png(root / "new.png", (1, 2, 3))  # the recorded setting keeps working on later runs
    code, again, err = index_main([index_dir], capsys)
    assert code == 0 and again["counts"]["image"] == 7, err
    code = search_main([str(index_dir), "--text", "a dog", "--modality", "image", "-k", "3", "--json"])
    assert code == 0 and len(json.loads(capsys.readouterr().out)["results"]["image"]) == 3


def test_a_faiss_failure_names_the_options_and_new_options_recover(tmp_path, photos, search_checkpoint,
                                                                   fixture_bpe_dir, capsys, monkeypatch):
    index_dir, _ = new_index(tmp_path, [photos], search_checkpoint, fixture_bpe_dir, capsys)
    real = vector_index.build

    def refuse_hnsw(vectors, ids, kind, options, seed=0):
        if kind == "hnsw":
            raise RuntimeError("Error in faiss::IndexHNSW: 'something faiss-internal'")
        return real(vectors, ids, kind, options, seed)

    monkeypatch.setattr(vector_index, "build", refuse_hnsw)
    err = error_of(index(capsys, index_dir, "--index-type", "hnsw"), "cannot build the image faiss index",
                   "'index_type': 'hnsw'", "something faiss-internal", "--index-type / --nlist")
    assert "RuntimeError" not in err
    code, summary, _ = index_main([index_dir, "--index-type", "flat"], capsys)
    assert code == 0 and summary["index_types"] == {"image": "flat"}


# ---- images without pixels -----------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(0, 0), (0, 5), (5, 0)])
def test_an_image_without_pixels_is_an_error_naming_it(size):
    from PIL import Image

    from one_peace.data_utils.processors import load_images

    with pytest.raises(ValueError, match=rf"images\[1\]: image of {size[0]}x{size[1]} pixels has no content"):
        load_images([Image.new("RGB", (4, 4)), Image.new("RGB", size)])
    with pytest.raises(ValueError, match="pixels has no content"):
        load_images([Image.new("I;16", size)])


# ---- bench/search.py labels ------------------------------------------------------------------------------------
def test_bench_labels_rows_with_the_real_count(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_search", REPO / "bench" / "search.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the bench adds bench/ to it
    spec.loader.exec_module(bench)
    out = io.StringIO()
    with redirect_stdout(out):
        bench.bench_vectors([1000, 2000], str(tmp_path), n_queries=3, hnsw_max=0)
    rows = [line.split("|")[1].strip() for line in out.getvalue().splitlines()[2:]]
    assert set(rows) == {"1e3", "2000"}  # today's 2000 was "1e3" too
