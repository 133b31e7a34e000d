"""Media search: one-peace-index (counts, failures, metadata, incremental runs, interruption,
checkpoint identity), one-peace-search (text, file and cross-modal queries, JSON, the console
script) and the one-peace-serve API (queries, upload limit, what may be served)."""
import hashlib
import http.client
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
from helpers import MEDIA
from search_helpers import (
    MEDIA_FILES,
    UPLOAD_LIMIT,
    index_main,
    make_collection,
    search_json,
    write_checkpoint,
    write_png,
    write_wav,
)

from one_peace.search import vector_index
from one_peace.search.query import main as search_main
from one_peace.search.searcher import faiss_path

pytest_plugins = ["search_fixtures"]  # search_checkpoint, built_index, live_server


def db_rows(index, sql):
    with sqlite3.connect(os.path.join(index, "index.sqlite")) as db:
        return db.execute(sql).fetchall()


def test_index_embeds_every_file_and_counts_the_corrupt_one(built_index, search_checkpoint):
    index, collection, summary = built_index
    # media: 4 images + 2 clips; generated: red.png, corrupt.jpg, leak.png, tone.wav, clip.mp4, note.txt, captions.tsv
    assert summary["found"] == {"image": MEDIA_FILES["image"] + 3, "audio": MEDIA_FILES["audio"] + 1, "video": 1,
                                "text": 2}
    assert summary["new"] == 13 and summary["embedded"] == 12
    assert [f["path"] for f in summary["failed"]] == [str(collection / "corrupt.jpg")]
    assert "cannot read image" in summary["failed"][0]["reason"]
    assert summary["vectors"] == 13  # one per file, one per row of the TSV
    assert summary["counts"] == {"audio": 3, "image": 6, "text": 3, "video": 1}
    assert set(summary["index_types"].values()) == {"flat"}
    files = {p: (m, s, t, st) for p, m, s, t, st in
             db_rows(index, "SELECT path, modality, size, mtime_ns, status FROM files")}
    tone = collection / "tone.wav"
    assert files[str(tone)] == ("audio", tone.stat().st_size, tone.stat().st_mtime_ns, "ok")
    assert files[str(collection / "corrupt.jpg")][3] == "failed"
    vectors = db_rows(index, "SELECT id, path, row, vector FROM vectors")
    assert sorted(r[2] for r in vectors if r[1].endswith("captions.tsv")) == [2, 3]
    norms = [np.linalg.norm(np.frombuffer(r[3], np.float32)) for r in vectors]
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    model = json.loads(db_rows(index, "SELECT value FROM meta WHERE key = 'model'")[0][0])
    data = open(search_checkpoint, "rb").read()
    assert model["checkpoint"] == search_checkpoint and model["size"] == len(data)
    assert model["sha256"] == hashlib.sha256(data).hexdigest() and model["hashed_bytes"] == len(data)
    assert (model["dim"], model["model_type"], model["dtype"]) == (64, "one_peace_retrieval", "float32")
    assert model["modalities"] == ["text", "image", "audio", "video"]  # video from the image branch
    for modality, count in summary["counts"].items():
        assert vector_index.load(faiss_path(str(index), modality)).ntotal == count


def test_text_and_file_queries_rank_by_the_hub_cosine(built_index, capsys, search_checkpoint, fixture_bpe_dir):
    from one_peace import from_pretrained

    index, collection, _ = built_index
    out = search_json([index, "--text", "an elephant", "--modality", "image", "-k", "10"], capsys)
    hits = out["results"]["image"]
    assert list(out["results"]) == ["image"] and len(hits) == 6
    hub = from_pretrained(search_checkpoint, device="cpu", bpe_dir=fixture_bpe_dir)
    paths = [h["path"] for h in hits]
    expected = (hub.extract_image_features(hub.process_image(paths))
                @ hub.extract_text_features(hub.process_text(["an elephant"]))[0]).numpy()
    np.testing.assert_allclose([h["score"] for h in hits], expected, atol=1e-5)
    assert [h["rank"] for h in hits] == list(range(1, 7)) and np.all(np.diff(expected) <= 1e-6)
    # an indexed file finds itself first (query and index embeddings agree), in each modality
    for name, modality in (("dog.flac", "audio"), ("dog.JPEG", "image")):
        top = search_json([index, "--file", MEDIA / name, "--modality", modality, "-k", "1"], capsys)
        assert top["query"]["modality"] == modality
        assert top["results"][modality][0]["path"] == str(MEDIA / name)
        assert top["results"][modality][0]["score"] == pytest.approx(1.0, abs=1e-4)
    clip = search_json([index, "--file", collection / "clip.mp4", "-k", "2"], capsys)
    assert clip["results"]["video"][0]["score"] == pytest.approx(1.0, abs=1e-4)  # video branch: same on reload
    text = search_json([index, "--text", "an elephant walking in the grass", "--modality", "text"], capsys)
    assert text["results"]["text"][0]["path"] == str(collection / "captions.tsv")
    assert text["results"]["text"][0]["row"] == 2 and text["results"]["text"][0]["score"] == pytest.approx(1, abs=1e-4)


def test_cross_modal_query_sound_to_images(built_index, capsys):
    index, _, _ = built_index
    out = search_json([index, "--file", MEDIA / "cow.flac", "--modality", "image,video", "-k", "3"], capsys)
    assert list(out["results"]) == ["image", "video"]
    assert len(out["results"]["image"]) == 3 and len(out["results"]["video"]) == 1
    scores = [h["score"] for h in out["results"]["image"]]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)


def test_console_script_prints_the_ranking(built_index):
    index, collection, _ = built_index
    script = os.path.join(os.path.dirname(sys.executable), "one-peace-search")
    assert os.path.isfile(script), "one-peace-search is not installed: pip install -e . registers it"
    proc = subprocess.run([script, str(index), "--text", "a dog barking at a cow in the field", "--modality",
                           "text,audio", "-k", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "query: text 'a dog barking at a cow in the field'"
    assert lines[1] == "text:" and lines[2].split()[:3] == ["1", "+1.0000", str(collection / "note.txt")]
    assert "audio:" in lines and len(lines) == 1 + 3 + 3


def test_bad_queries_are_errors_naming_the_problem(built_index, capsys, tmp_path):
    index, _, _ = built_index
    assert search_main([str(index), "--text", "x", "--modality", "smell"]) == 2
    assert "unknown modality 'smell'" in capsys.readouterr().err
    (tmp_path / "notes.xyz").write_text("?")
    assert search_main([str(index), "--file", str(tmp_path / "notes.xyz")]) == 2
    assert "cannot tell the modality of 'notes.xyz'" in capsys.readouterr().err
    assert search_main([str(tmp_path), "--text", "x"]) == 2
    assert "is not a search index" in capsys.readouterr().err


def test_other_checkpoint_is_refused_by_index_and_search(built_index, search_checkpoint, tmp_path, capsys):
    index, _, _ = built_index
    other = write_checkpoint(tmp_path / "other.pt", perturb=True)
    code, _, err = index_main([index, "--checkpoint", other], capsys)
    assert code == 2 and search_checkpoint in err and other in err and "refusing checkpoint" in err
    assert search_main([str(index), "--text", "a dog", "--checkpoint", other]) == 2
    err = capsys.readouterr().err
    assert search_checkpoint in err and other in err
    code, _, err = index_main([index, "--dtype", "bfloat16"], capsys)
    assert code == 2 and "built with --dtype float32; refusing bfloat16" in err
    moved = tmp_path / "moved.pt"
    shutil.copy(search_checkpoint, moved)  # the same file elsewhere is accepted
    out = search_json([index, "--text", "a dog", "--checkpoint", moved, "--modality", "audio", "-k", "1"], capsys)
    assert len(out["results"]["audio"]) == 1


@pytest.fixture()
def small_collection(tmp_path):
    root = make_collection(tmp_path / "files", tmp_path / "outside")
    os.remove(root / "clip.mp4")  # video is covered above; keep these runs short
    return root


def vector_ids(index):
    return {p: i for i, p in db_rows(index, "SELECT id, path FROM vectors WHERE row IS NULL")}


def test_second_run_embeds_only_new_and_changed_files(small_collection, tmp_path, capsys, search_checkpoint,
                                                      fixture_bpe_dir):
    index = tmp_path / "index"
    code, first, _ = index_main([index, small_collection, "--checkpoint", search_checkpoint, "--bpe-dir",
                                 fixture_bpe_dir], capsys)
    assert code == 0 and first["embedded"] == 5 and len(first["failed"]) == 1
    before = vector_ids(index)
    write_wav(small_collection / "tone.wav", 880.0, seconds=1.5)  # modified (size)
    os.utime(small_collection / "note.txt", ns=(0, 10 ** 18))  # touched (mtime only)
    write_png(small_collection / "new.png", (0, 0, 255))  # added
    os.remove(small_collection / "red.png")  # deleted
    code, second, _ = index_main([index], capsys)  # roots, checkpoint and BPE from the index
    assert code == 0
    assert (second["new"], second["changed"], second["removed"], second["unchanged"]) == (1, 2, 1, 2)
    assert second["embedded"] == 3 and second["skipped_failed"] == 1 and second["failed"] == []
    after = vector_ids(index)
    assert str(small_collection / "red.png") not in after
    for name in ("leak.png",):
        assert after[str(small_collection / name)] == before[str(small_collection / name)]  # not re-embedded
    for name in ("tone.wav", "note.txt"):
        assert after[str(small_collection / name)] > max(before.values())  # re-embedded: new ids
    assert second["counts"] == {"audio": 1, "image": 2, "text": 3}
    out = search_json([index, "--file", small_collection / "tone.wav", "--modality", "audio", "-k", "1"], capsys)
    assert out["results"]["audio"][0]["score"] == pytest.approx(1.0, abs=1e-4)  # the new tone's vector
    code, third, _ = index_main([index], capsys)
    assert third["embedded"] == 0 and third["unchanged"] == 5 and third["load_seconds"] == 0  # no model load
    (small_collection / "corrupt.jpg").write_bytes((small_collection / "new.png").read_bytes())  # repaired
    code, fourth, _ = index_main([index], capsys)
    assert fourth["changed"] == 1 and fourth["embedded"] == 1 and fourth["counts"]["image"] == 3
    assert db_rows(index, "SELECT COUNT(*) FROM files WHERE status = 'failed'") == [(0,)]


def test_interrupted_run_keeps_committed_batches(small_collection, tmp_path, capsys, monkeypatch,
                                                 search_checkpoint, fixture_bpe_dir):
    import one_peace.search.indexer as indexer

    calls = []
    real_embed = indexer.embed

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_embed(*args, **kwargs)

    monkeypatch.setattr(indexer, "embed", interrupted)
    index = tmp_path / "index"
    code, summary, _ = index_main([index, small_collection, "--checkpoint", search_checkpoint, "--bpe-dir",
                                   fixture_bpe_dir, "--batch-size", "1"], capsys)
    # committed before the third batch: tone.wav (audio), corrupt.jpg (image, failed)
    assert code == 130 and summary["interrupted"] and summary["embedded"] == 1 and len(summary["failed"]) == 1
    assert db_rows(index, "SELECT COUNT(*) FROM files") == [(2,)]
    # search works on what was committed (the faiss index is rebuilt from SQLite)
    out = search_json([index, "--file", small_collection / "tone.wav", "-k", "1"], capsys)
    assert out["results"]["audio"][0]["path"] == str(small_collection / "tone.wav")
    monkeypatch.setattr(indexer, "embed", real_embed)
    code, resumed, _ = index_main([index], capsys)
    assert code == 0 and resumed["unchanged"] == 1 and resumed["skipped_failed"] == 1 and resumed["embedded"] == 4


def test_approximate_indexes_past_the_threshold(small_collection, tmp_path, capsys, search_checkpoint,
                                                fixture_bpe_dir):
    index = tmp_path / "index"
    code, summary, _ = index_main([index, small_collection, "--checkpoint", search_checkpoint, "--bpe-dir",
                                   fixture_bpe_dir, "--approx-threshold", "3", "--approx-type", "ivf"], capsys)
    assert summary["index_types"] == {"audio": "flat", "image": "flat", "text": "ivf"}  # 1, 2 and 3 vectors
    assert vector_index.kind_of(vector_index.load(faiss_path(str(index), "text"))) == "ivf"
    code, summary, _ = index_main([index, "--index-type", "hnsw"], capsys)  # options alone rebuild the indexes
    assert summary["embedded"] == 0 and set(summary["index_types"].values()) == {"hnsw"}
    out = search_json([index, "--text", "an elephant walking in the grass", "--modality", "text", "-k", "1"], capsys)
    assert out["results"]["text"][0]["row"] == 2 and out["results"]["text"][0]["score"] == pytest.approx(1, abs=1e-4)


def test_vector_index_types_find_the_exact_neighbours():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((2000, 32)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    ids = np.arange(100, 2100)
    queries = data[:20] + 0.05 * rng.standard_normal((20, 32)).astype(np.float32)
    options = vector_index.IndexOptions()
    _, exact = vector_index.search(vector_index.build(data, ids, "flat", options), queries, 5)
    assert (exact[:, 0] == ids[:20]).all()
    for kind in ("ivf", "hnsw"):
        index = vector_index.build(data, ids, kind, options)
        vector_index.set_search_params(index, options)
        _, found = vector_index.search(index, queries, 5)
        recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(found, exact)])
        assert recall >= 0.9, (kind, recall)


# ---- one-peace-serve API -----------------------------------------------------------------------
def post_json(url, payload):
    req = urllib.request.Request(url + "/api/search", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def post_file(server, path, fields=()):
    boundary = "----one-peace-test"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{os.path.basename(path)}"'
                 f'\r\nContent-Type: application/octet-stream\r\n\r\n'.encode() + open(path, "rb").read() + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return raw(server, "POST", "/api/search", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def raw(server, method, path, body=None, headers=None):
    """One request with the path sent exactly as given (urllib would normalise '..')."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def test_api_text_and_file_queries(live_server, built_index):
    index, collection, _ = built_index
    status, out = post_json(live_server.url, {"text": "an elephant", "modalities": ["image", "audio"], "k": 2})
    assert status == 200 and list(out["results"]) == ["image", "audio"]
    assert [len(v) for v in out["results"].values()] == [2, 2]
    hit = out["results"]["image"][0]
    assert hit["url"] == f"/media/{hit['id']}" and hit["thumb_url"] == f"/thumb/{hit['id']}"
    status, data = raw(live_server, "GET", hit["url"])
    assert status == 200 and data == open(hit["path"], "rb").read()
    status, thumb = raw(live_server, "GET", hit["thumb_url"])
    assert status == 200 and thumb[:2] == b"\xff\xd8"  # a JPEG
    status, data = post_file(live_server, MEDIA / "dog.flac", [("modalities", "audio"), ("k", "1")])
    out = json.loads(data)
    assert status == 200 and out["query"] == {"file": "dog.flac", "modality": "audio"}
    assert out["results"]["audio"][0]["path"] == str(MEDIA / "dog.flac")
    status, data = post_file(live_server, collection / "clip.mp4", [("modalities", "video")])
    assert status == 200 and json.loads(data)["results"]["video"][0]["name"] == "clip.mp4"
    status, info = raw(live_server, "GET", "/api/info")
    assert status == 200 and json.loads(info)["counts"] == {"audio": 3, "image": 6, "text": 3, "video": 1}


def test_api_refuses_bad_requests_and_large_uploads(live_server):
    assert os.path.getsize(MEDIA / "dog.JPEG") > UPLOAD_LIMIT
    status, data = post_file(live_server, MEDIA / "dog.JPEG")
    assert status == 413 and b"limit" in data
    assert post_json(live_server.url, {})[0] == 400
    status, out = post_json(live_server.url, {"text": "a dog", "modalities": "image,smell"})
    assert status == 400 and "smell" in out["error"]
    status, out = post_json(live_server.url, {"text": "a dog", "k": 0})
    assert status == 400 and "k must be" in out["error"]


def test_only_indexed_files_under_the_roots_are_served(live_server, built_index):
    index, collection, _ = built_index
    for path in ("/media/../../../../etc/passwd", "/media/..%2f..%2fetc%2fpasswd", "/media/%2e%2e/etc/passwd",
                 "/thumb/../../etc/passwd", "/media/999999", "/media/-1", "/etc/passwd",
                 f"/media/{collection}/note.txt"):
        status, data = raw(live_server, "GET", path)
        assert status in (403, 404), path
        assert b"root:" not in data
    (leak_id,) = [i for i, p in db_rows(index, "SELECT id, path FROM vectors") if p.endswith("leak.png")]
    assert raw(live_server, "GET", f"/media/{leak_id}")[0] == 403  # symlink to a file outside the roots
    assert raw(live_server, "GET", f"/thumb/{leak_id}")[0] == 403
    status, _ = raw(live_server, "GET", "/", headers={"Host": "attacker.example"})  # DNS rebinding
    assert status == 400
