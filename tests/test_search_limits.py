"""Limits that protect the machine (docs/SEARCH.md, "Limits and exclusions"): a pixel cap read from the
header before decoding (a clear failure, counted), a duration cap (the rest of a long file left out,
recorded), ``--exclude`` patterns (remembered by the index); the console script, and bad values refused."""
import json
import os
import sqlite3
import struct
import subprocess
import sys
import zlib

import pytest
from search_helpers import index_main, write_png
from test_search_video import FPS, solid, write_video

from one_peace.search.media_info import DEFAULT_MAX_PIXELS

pytest_plugins = ["search_fixtures"]  # search_checkpoint


def write_png_header(path, width, height):
    """A PNG that declares ``width`` x ``height`` grey pixels and holds a few bytes of them: what a
    decompression bomb looks like to a header reader (decoding it would allocate width x height)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(body)


def run(capsys, *argv):
    code, summary, err = index_main(list(argv), capsys)
    assert code == 0, err
    return summary


def rows(index_dir, sql, *params):
    with sqlite3.connect(os.path.join(index_dir, "index.sqlite")) as db:
        return db.execute(sql, params).fetchall()


def test_a_picture_over_the_pixel_cap_is_refused_before_decoding_and_counted(tmp_path, capsys, search_checkpoint,
                                                                             fixture_bpe_dir):
    root = tmp_path / "files"
    root.mkdir()
    write_png_header(root / "bomb.png", 20000, 20000)  # 400 megapixels declared in a 100-byte file
    write_png(root / "small.png", (200, 10, 10), size=(48, 40))  # 1920 pixels
    write_png(root / "tiny.png", (10, 10, 200), size=(20, 20))  # 400 pixels
    index_dir = tmp_path / "index"
    summary = run(capsys, index_dir, root, "--checkpoint", search_checkpoint, "--bpe-dir", fixture_bpe_dir,
                  "--max-pixels", "1000")
    assert summary["over_max_pixels"] == 2 and summary["embedded"] == 1
    reasons = {os.path.basename(f["path"]): f["reason"] for f in summary["failed"]}
    assert reasons["bomb.png"].startswith("a picture of 400000000 pixels is over --max-pixels 1000 (a guard against "
                                          "decompression bombs")
    assert reasons["small.png"].startswith("a picture of 48x40 = 1920 pixels is over --max-pixels 1000")
    # the cap is remembered; raising it retries what it refused (the bomb stays refused by the default cap)
    again = run(capsys, index_dir)
    assert again["skipped_failed"] == 2 and again["media_options"]["max_pixels"] == 1000
    raised = run(capsys, index_dir, "--max-pixels", str(DEFAULT_MAX_PIXELS))
    assert raised["changed"] == 2 and raised["embedded"] == 1 and raised["over_max_pixels"] == 1
    assert [os.path.basename(f["path"]) for f in raised["failed"]] == ["bomb.png"]
    assert f"over --max-pixels {DEFAULT_MAX_PIXELS}" in raised["failed"][0]["reason"]
    assert raised["counts"] == {"image": 2}


def test_the_duration_cap_truncates_long_sounds_and_videos(tmp_path, capsys, search_checkpoint, fixture_bpe_dir):
    import soundfile as sf
    from test_search_video import chirp

    root = tmp_path / "files"
    root.mkdir()
    sf.write(root / "long.wav", chirp(3.0), 16000)
    write_video(root / "long.mp4", [solid((40, 80, 120 + 40 * (i // FPS))) for i in range(3 * FPS)])
    index_dir = tmp_path / "index"
    summary = run(capsys, index_dir, root, "--checkpoint", search_checkpoint, "--bpe-dir", fixture_bpe_dir,
                  "--max-duration", "2", "--segment-seconds", "1")
    assert sorted(os.path.basename(t["path"]) for t in summary["truncated"]) == ["long.mp4", "long.wav"]
    assert summary["failed"] == [] and summary["embedded"] == 2
    for name in ("long.wav", "long.mp4"):
        (reason, duration), = rows(index_dir, "SELECT reason, duration_s FROM files WHERE path = ?", str(root / name))
        assert reason == f"indexed the first 2 s of {duration:.1f} s (--max-duration)" and duration == \
            pytest.approx(3.0, abs=0.1)
        spans = rows(index_dir, "SELECT start_s, end_s FROM vectors WHERE path = ? AND start_s IS NOT NULL "
                     "ORDER BY start_s", str(root / name))
        assert spans == [(0.0, 1.0), (1.0, 2.0)]  # nothing past the cap
    # a higher cap embeds them again, whole
    raised = run(capsys, index_dir, "--max-duration", "60")
    assert raised["changed"] == 2 and raised["truncated"] == []
    assert rows(index_dir, "SELECT MAX(end_s) FROM vectors WHERE path = ?", str(root / "long.wav")) == [(3.0,)]


def test_exclude_patterns_are_remembered_and_remove_what_they_match(tmp_path, capsys, search_checkpoint,
                                                                    fixture_bpe_dir):
    root = tmp_path / "photos"
    for folder in ("raw", "trips/2019", "trips/2020"):
        (root / folder).mkdir(parents=True)
    for name in ("keep.png", "draft.tmp.png", "raw/a.png", "trips/2019/b.png", "trips/2020/c.png"):
        write_png(root / name, (len(name) * 9 % 255, 40, 90))
    index_dir = tmp_path / "index"
    script = os.path.join(os.path.dirname(sys.executable), "one-peace-index")
    assert os.path.isfile(script), "one-peace-index is not installed: pip install -e . registers it"
    proc = subprocess.run([script, str(index_dir), str(root), "--checkpoint", search_checkpoint, "--bpe-dir",
                           fixture_bpe_dir, "--exclude", "*.tmp.png", "--exclude", "raw", "--exclude", "trips/2019/*",
                           "--json", "--progress", "none"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout)
    assert first["media_options"]["exclude"] == ["*.tmp.png", "raw", "trips/2019/*"]
    indexed = lambda: sorted(os.path.relpath(p, root) for (p,) in rows(index_dir, "SELECT path FROM files"))  # noqa: E731
    assert indexed() == ["keep.png", "trips/2020/c.png"]
    write_png(root / "raw" / "new.png", (1, 2, 3))
    again = run(capsys, index_dir)  # remembered
    assert again["new"] == 0 and indexed() == ["keep.png", "trips/2020/c.png"]
    cleared = run(capsys, index_dir, "--exclude", "")
    assert cleared["new"] == 4 and cleared["media_options"]["exclude"] == []
    narrowed = run(capsys, index_dir, "--exclude", "keep.png")  # an indexed file that now matches is removed
    assert narrowed["removed"] == 1 and "keep.png" not in indexed() and len(indexed()) == 5
    from one_peace.search.admin import stats, stats_lines
    from one_peace.search.store import IndexStore

    store = IndexStore(str(index_dir))
    shown = "\n".join(stats_lines(stats(store)))  # --stats says which limits and exclusions are in force
    store.close()
    assert "media limits:" in shown and "keep.png" in shown


@pytest.mark.parametrize("argv, message", [
    (["--max-pixels", "0"], "--max-pixels must be at least 1, got 0"),
    (["--max-duration", "0"], "--max-duration must be a number of seconds above 0, got 0"),
    (["--max-duration", "nan"], "--max-duration must be a number of seconds above 0, got nan"),
    (["--segment-seconds", "0.5"], "--segment-seconds must be a number of seconds of at least 1, got 0.5"),
])
def test_bad_limits_are_refused_before_anything_is_created(tmp_path, capsys, argv, message):
    from one_peace.search.indexer import main

    assert main([str(tmp_path / "index"), str(tmp_path)] + argv) == 2
    assert capsys.readouterr().err.strip() == f"one-peace-index: error: {message}"
    assert not (tmp_path / "index").exists()
