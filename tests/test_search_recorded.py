"""What an index remembers and tells: --modality / --tsv-column recorded for later runs (a changed TSV
column re-embeds the TSVs it changes), the collapse warning of an untrained branch, and
``--stats`` / ``--list`` / ``--clear-failures`` (no checkpoint, no model); symlinked folders."""
import json
import os

import pytest
import torch
from search_helpers import make_collection, write_checkpoint, write_png, write_wav
from test_search import db_rows

import one_peace.search.embed as embed_module
import one_peace.search.indexer as indexer_module
from one_peace.search.indexer import main as indexer_main

pytest_plugins = ["search_fixtures"]  # search_checkpoint, built_index


def run(capsys, *argv, json_out=True):
    code = indexer_main([str(a) for a in argv] + (["--json"] if json_out else []) + ["--progress", "none"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return (json.loads(out.out) if json_out else out.out), out.err


def rows_of(index, path):
    return db_rows(index, f"SELECT row, text FROM vectors WHERE path = '{path}' ORDER BY row")


# ---- remembered options --------------------------------------------------------------------------
def test_modality_and_tsv_column_are_remembered_and_a_changed_column_reembeds(tmp_path, capsys, search_checkpoint,
                                                                              fixture_bpe_dir):
    root = tmp_path / "files"
    root.mkdir()
    write_png(root / "red.png", (220, 20, 20))
    write_wav(root / "tone.wav", 440.0)
    (root / "both.tsv").write_text("id\ttext\tcaption\n1\ta red square\ta photo of a red square\n")
    (root / "text_only.tsv").write_text("id\ttext\n1\ta cow in a field\n")
    index = tmp_path / "index"
    first, _ = run(capsys, index, root, "--checkpoint", search_checkpoint, "--bpe-dir", fixture_bpe_dir,
                   "--modality", "image,text", "--tsv-column", "caption")
    assert first["options"] == {"modality": ["image", "text"], "tsv_column": "caption"}
    assert first["found"] == {"image": 1, "text": 2} and len(first["failed"]) == 1  # text_only.tsv: no caption
    assert rows_of(index, root / "both.tsv") == [(2, "a photo of a red square")]
    write_wav(root / "tone2.wav", 880.0)
    (root / "more.tsv").write_text("caption\ttext\na dog on a sofa\ta dog\n")
    again, _ = run(capsys, index)  # a plain run: the same modalities and column
    assert again["options"] == first["options"] and again["found"] == {"image": 1, "text": 3}
    assert again["new"] == 1 and again["skipped_failed"] == 1
    assert rows_of(index, root / "more.tsv") == [(2, "a dog on a sofa")]
    assert db_rows(index, "SELECT COUNT(*) FROM files WHERE modality = 'audio'") == [(0,)]
    ids = dict(db_rows(index, "SELECT path, id FROM vectors"))
    # another column: the TSVs whose text column it changes (and those that failed) are embedded again
    changed, _ = run(capsys, index, "--tsv-column", "text")
    assert changed["options"]["tsv_column"] == "text" and changed["changed"] == 3 and changed["failed"] == []
    assert rows_of(index, root / "both.tsv") == [(2, "a red square")]
    assert rows_of(index, root / "more.tsv") == [(2, "a dog")]
    assert rows_of(index, root / "text_only.tsv") == [(2, "a cow in a field")]
    assert dict(db_rows(index, "SELECT path, id FROM vectors"))[str(root / "red.png")] == ids[str(root / "red.png")]
    default, _ = run(capsys, index, "--tsv-column", "")  # back to the default (text, else caption): same columns
    assert default["options"]["tsv_column"] is None and default["changed"] == 0 and default["embedded"] == 0
    every, _ = run(capsys, index, "--modality", "all")
    assert every["options"]["modality"] is None and every["new"] == 2 and every["counts"]["audio"] == 2


def test_deleted_files_of_a_modality_outside_modality_are_removed(tmp_path, capsys, search_checkpoint,
                                                                  fixture_bpe_dir):
    root = tmp_path / "files"
    root.mkdir()
    write_png(root / "red.png", (220, 20, 20))
    write_wav(root / "tone.wav", 440.0)
    index = tmp_path / "index"
    run(capsys, index, root, "--checkpoint", search_checkpoint, "--bpe-dir", fixture_bpe_dir)
    only, _ = run(capsys, index, "--modality", "image")
    assert only["removed"] == 0 and only["counts"] == {"audio": 1, "image": 1}  # kept while the file exists
    os.remove(root / "tone.wav")
    gone, _ = run(capsys, index)
    assert gone["removed"] == 1 and gone["counts"] == {"image": 1}


# ---- an untrained branch -------------------------------------------------------------------------------
def collapsed_audio_checkpoint(path):
    """The fixtures' model with its audio projection shrunk to almost nothing: every clip's embedding is
    nearly the projection's bias, as with a branch that never trained."""
    write_checkpoint(path)
    state = torch.load(path, weights_only=False)
    state["model"]["audio_proj.weight"] = state["model"]["audio_proj.weight"] * 1e-4
    state["model"]["audio_proj.bias"] = torch.randn(state["model"]["audio_proj.bias"].shape,
                                                    generator=torch.Generator().manual_seed(0))
    torch.save(state, path)
    return str(path)


def test_a_collapsed_modality_is_warned_about_once_and_reported(tmp_path, capsys, caplog, fixture_bpe_dir):
    from helpers import MEDIA

    checkpoint = collapsed_audio_checkpoint(tmp_path / "stage1.pt")
    root = make_collection(tmp_path / "files", tmp_path / "outside")
    os.remove(root / "clip.mp4")
    index = tmp_path / "index"
    summary, _ = run(capsys, index, MEDIA, root, "--checkpoint", checkpoint, "--bpe-dir", fixture_bpe_dir)
    assert [d["modality"] for d in summary["degenerate"]] == ["audio"]  # images and texts are fine
    found = summary["degenerate"][0]
    assert found["mean_cosine"] > 0.98 and found["vectors"] == found["sampled"] == 3
    assert "audio branch looks untrained" in found["message"] and "one-peace.pt" in found["message"]
    warnings = [r.getMessage() for r in caplog.records if "branch looks untrained" in r.getMessage()]
    assert len(warnings) == 1 and "audio" in warnings[0]
    caplog.clear()
    text, _ = run(capsys, index, json_out=False)  # every run checks again: one warning (logged to stderr)
    assert "untrained" not in text
    assert [r.levelname for r in caplog.records if "audio branch looks untrained" in r.getMessage()] == ["WARNING"]
    stats, _ = run(capsys, index, "--stats")
    assert [d["modality"] for d in stats["degenerate"]] == ["audio"]


def test_the_fixture_model_is_not_flagged(built_index):
    assert built_index[2]["degenerate"] == []


# ---- --stats, --list, --clear-failures ----------------------------------------------------------------------
def test_stats_list_and_clear_failures_need_no_checkpoint(tmp_path, capsys, fixture_bpe_dir, monkeypatch):
    search_checkpoint = write_checkpoint(tmp_path / "retrieval.pt")
    root = make_collection(tmp_path / "files", tmp_path / "outside")
    os.remove(root / "clip.mp4")
    index = tmp_path / "index"
    run(capsys, index, root, "--checkpoint", search_checkpoint, "--bpe-dir", fixture_bpe_dir, "--tsv-column", "text")
    moved = tmp_path / "moved.pt"
    os.rename(search_checkpoint, moved)  # not needed: nothing is embedded
    from one_peace.hub import file_identity

    with monkeypatch.context() as patch:
        for module, name in ((embed_module, "load_hub"), (indexer_module, "checkpoint_modalities"),
                             (file_identity, "file_sha256")):
            patch.setattr(module, name, lambda *a, **k: pytest.fail("the checkpoint was read"))
        stats, _ = run(capsys, index, "--stats")
        assert stats["roots"] == [{"path": str(root), "exists": True}]
        assert stats["options"]["scan"] == {"modality": None, "tsv_column": "text"}
        assert stats["options"]["faiss"]["index_type"] == "auto"
        assert stats["files"] == {"audio": {"ok": 1}, "image": {"ok": 2, "failed": 1}, "text": {"ok": 2}}
        assert stats["vectors"] == {"audio": 1, "image": 2, "text": 3}
        assert stats["checkpoint"]["checkpoint"] == search_checkpoint and stats["checkpoint"]["dim"] == 64
        assert [(f["path"], f["modality"]) for f in stats["failures"]] == [(str(root / "corrupt.jpg"), "image")]
        assert "cannot read image" in stats["failures"][0]["reason"]
        text, _ = run(capsys, index, "--stats", json_out=False)
        for needle in (f"  {root}", "tsv column text", f"checkpoint: {search_checkpoint}", "of the whole file",
                       "image: 2 files indexed, 1 failed, 2 vectors (flat)", f"  {root / 'corrupt.jpg'}: ",
                       "failures: 1 (--clear-failures retries them)"):
            assert needle in text, (needle, text)
        listed, _ = run(capsys, index, "--list")
        assert [r["path"] for r in listed] == sorted(r["path"] for r in listed) and len(listed) == 6
        assert {r["path"]: r["vectors"] for r in listed}[str(root / "captions.tsv")] == 2
        images, _ = run(capsys, index, "--list", "--modality", "image", json_out=False)
        assert images.splitlines()[-1] == "3 files" and "failed  image" in images and "tone.wav" not in images
        cleared, _ = run(capsys, index, "--clear-failures")
        assert cleared["cleared"] == 1 and db_rows(index, "SELECT COUNT(*) FROM files WHERE status = 'failed'") \
            == [(0,)]
    os.rename(moved, search_checkpoint)
    retried, _ = run(capsys, index)  # the cleared file is new again: tried (and fails again)
    assert retried["new"] == 1 and [f["path"] for f in retried["failed"]] == [str(root / "corrupt.jpg")]


def test_stats_refuses_folders_and_a_missing_index(tmp_path, capsys, built_index):
    code = indexer_main([str(built_index[0]), str(tmp_path), "--stats"])
    assert code == 2 and "--stats acts on the index alone" in capsys.readouterr().err
    code = indexer_main([str(tmp_path / "none"), "--list"])
    assert code == 2 and "is not a search index" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


# ---- symlinked folders ----------------------------------------------------------------------------------------
def test_symlinked_folders_are_not_followed_symlinked_files_are(tmp_path, capsys, search_checkpoint,
                                                                fixture_bpe_dir):
    root, elsewhere = tmp_path / "files", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    write_png(root / "red.png", (220, 20, 20))
    write_png(elsewhere / "blue.png", (20, 20, 220))
    os.symlink(elsewhere, root / "linked_folder")
    os.symlink(root, root / "loop")  # a loop: never walked
    os.symlink(elsewhere / "blue.png", root / "linked.png")
    summary, _ = run(capsys, tmp_path / "index", root, "--checkpoint", search_checkpoint, "--bpe-dir",
                     fixture_bpe_dir)
    paths = sorted(p for (p,) in db_rows(tmp_path / "index", "SELECT path FROM files"))
    assert paths == [str(root / "linked.png"), str(root / "red.png")]
    assert summary["found"] == {"image": 2}
