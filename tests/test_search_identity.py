"""The checkpoint identity of an index: the SHA-256 of the whole file (not of its first 16 MiB), cached
by (real path, size, mtime, inode); indexes recorded by the earlier 16 MiB scheme are still accepted, with
a warning that their record is partial."""
import hashlib
import json
import os
import sqlite3

import pytest
import torch
from search_helpers import index_main, write_checkpoint, write_png

from one_peace.hub import file_identity
from one_peace.search import identity
from one_peace.search.query import main as search_main

PAD = (17 << 20) // 4  # float32 values: the checkpoint grows past the 16 MiB the old identity hashed


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ONE_PEACE_CACHE", str(tmp_path / "cache"))  # not the user's hash cache


def padded_checkpoint(path, last: float = 0.0, first: float = 0.0):
    """The fixtures' retrieval checkpoint with an unused 17 MiB tensor saved after the weights:
    ``last`` changes its final value (a byte past 16 MiB), ``first`` its first (within 16 MiB).
    Name it ``DIR/model.pt``: torch's zip format records the file's stem."""
    path.parent.mkdir(exist_ok=True)
    write_checkpoint(path)
    state = torch.load(path, weights_only=False)
    pad = torch.zeros(PAD)
    pad[0], pad[-1] = first, last
    state["pad"] = pad
    torch.save(state, path)
    return str(path)


@pytest.fixture()
def photos(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    write_png(root / "red.png", (220, 20, 20))
    write_png(root / "blue.png", (20, 20, 220))
    return root


def model_record(index):
    with sqlite3.connect(os.path.join(index, "index.sqlite")) as db:
        return json.loads(db.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()[0])


def test_checkpoints_differing_after_16_mib_are_told_apart(tmp_path, photos, capsys, fixture_bpe_dir):
    a = padded_checkpoint(tmp_path / "a" / "model.pt")
    b = padded_checkpoint(tmp_path / "b" / "model.pt", last=1.0)
    assert os.path.getsize(a) == os.path.getsize(b) > 17 << 20
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read(16 << 20) == fb.read(16 << 20)  # the old identity saw the same file
    index = tmp_path / "index"
    code, summary, err = index_main([index, photos, "--checkpoint", a, "--bpe-dir", fixture_bpe_dir], capsys)
    assert code == 0 and summary["embedded"] == 2, err
    record = model_record(index)
    assert record["hashed_bytes"] == record["size"] == os.path.getsize(a)
    assert record["sha256"] == hashlib.sha256(open(a, "rb").read()).hexdigest()
    code, _, err = index_main([index, "--checkpoint", b], capsys)
    assert code == 2 and "refusing checkpoint" in err and b in err and "of the whole file" in err
    assert search_main([str(index), "--text", "red", "--checkpoint", b]) == 2
    assert "refusing checkpoint" in capsys.readouterr().err


def test_the_whole_file_hash_is_cached_until_the_file_changes(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(os.urandom(3 << 20))
    calls = []
    real = file_identity.file_sha256
    monkeypatch.setattr(file_identity, "file_sha256", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = identity.checkpoint_identity(str(path))
    assert first["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and len(calls) == 1
    link = tmp_path / "link.pt"
    link.symlink_to(path)  # the cache is keyed by the real path
    assert identity.checkpoint_identity(str(link))["sha256"] == first["sha256"] and len(calls) == 1
    cache = json.loads(open(file_identity.cache_path()).read())
    assert file_identity.cache_path().startswith(str(tmp_path / "cache")) and str(path) in cache
    with open(path, "r+b") as fh:  # same size, new content and mtime: hashed again
        fh.write(b"changed")
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 10 ** 9))
    second = identity.checkpoint_identity(str(path))
    assert len(calls) == 2 and second["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() != first["sha256"]


def test_indexes_and_onnx_exports_record_one_identity_hashed_once(tmp_path, monkeypatch):
    """An index and an exported graph name a checkpoint the same way (``hub/file_identity.py``), and the
    ONNX side reads the same cache: a checkpoint is hashed once, not once per graph opened."""
    from one_peace.hub.onnx_runtime import checkpoint_identity as onnx_identity

    path = tmp_path / "model.pt"
    path.write_bytes(os.urandom(1 << 20))
    calls = []
    real = file_identity.file_sha256
    monkeypatch.setattr(file_identity, "file_sha256", lambda *a, **k: calls.append(a) or real(*a, **k))
    record, graph = identity.checkpoint_identity(str(path)), onnx_identity(str(path))
    assert (record["size"], record["sha256"]) == (graph["size"], graph["sha256"]) and len(calls) == 1
    assert onnx_identity(str(path)) == graph and len(calls) == 1
    folder = tmp_path / "model_dir"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(os.urandom(1 << 16))
    record, graph = identity.checkpoint_identity(str(folder)), onnx_identity(str(folder))
    assert (record["size"], record["sha256"]) == (graph["size"], graph["sha256"]) and len(calls) == 3


def test_an_index_with_a_16_mib_record_is_accepted_with_a_warning(tmp_path, photos, capsys, caplog,
                                                                   fixture_bpe_dir):
    a = padded_checkpoint(tmp_path / "a" / "model.pt")
    index = tmp_path / "index"
    assert index_main([index, photos, "--checkpoint", a, "--bpe-dir", fixture_bpe_dir], capsys)[0] == 0
    record = model_record(index)  # rewrite the record as earlier versions wrote it
    record.update(hashed_bytes=16 << 20, sha256=hashlib.sha256(open(a, "rb").read(16 << 20)).hexdigest())
    with sqlite3.connect(os.path.join(index, "index.sqlite")) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'model'", (json.dumps(record),))
    identity._warned_partial.clear()
    assert search_main([str(index), "--text", "red", "--json"]) == 0
    assert "records the hash of only the first 16777216 bytes" in caplog.text and "Rebuild" in caplog.text
    capsys.readouterr()
    write_png(photos / "green.png", (20, 220, 20))
    code, summary, _ = index_main([index], capsys)
    assert code == 0 and summary["new"] == 1
    assert model_record(index)["hashed_bytes"] == 16 << 20  # a prefix match never upgrades the record
    c = padded_checkpoint(tmp_path / "c" / "model.pt", first=1.0)  # differs within the first 16 MiB
    code, _, err = index_main([index, "--checkpoint", c], capsys)
    assert code == 2 and "refusing checkpoint" in err and "of the first 16777216 bytes" in err


def test_a_model_directory_builds_and_queries_an_index_and_another_is_refused(tmp_path, photos, capsys,
                                                                             fixture_bpe_dir):
    from one_peace.hub.convert import convert_checkpoint

    model_dir, other_dir = tmp_path / "model", tmp_path / "other"
    convert_checkpoint(write_checkpoint(tmp_path / "model.pt"), str(model_dir), bpe_dir=fixture_bpe_dir)
    convert_checkpoint(write_checkpoint(tmp_path / "other.pt", perturb=True), str(other_dir), bpe_dir=fixture_bpe_dir)
    index = tmp_path / "index"
    code, summary, err = index_main([index, photos, "--checkpoint", model_dir], capsys)
    assert code == 0 and summary["embedded"] == 2, err
    record = model_record(index)
    assert record["checkpoint"] == str(model_dir) and record["size"] > 0
    assert search_main([str(index), "--text", "red", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert {h["path"] for h in hits["results"]["image"]} == {str(photos / "red.png"), str(photos / "blue.png")}
    assert search_main([str(index), "--text", "red", "--checkpoint", str(other_dir)]) == 2
    assert "refusing checkpoint" in capsys.readouterr().err
