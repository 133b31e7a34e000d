"""What one-peace-index records for the date and duration filters (docs/SEARCH.md, "Dates and durations"):
a photo's EXIF DateTimeOriginal (with its offset, else local time), a video's container date, else the
file's mtime; the duration of sounds and videos."""
import datetime
import os
import sqlite3

import pytest
import soundfile as sf
from PIL import Image
from search_helpers import index_main, write_png
from test_search_video import FPS, chirp, solid, write_video

from one_peace.search.media_info import parse_container_date, parse_exif_date

pytest_plugins = ["search_fixtures"]  # search_checkpoint

MTIME = 1_500_000_000  # 2017-07-14, set on every file: a date that is not the mtime came from the file


def write_jpeg(path, date=None, offset=None):
    exif = Image.Exif()
    if date:
        ifd = exif.get_ifd(0x8769)  # the Exif IFD
        ifd[36867] = date  # DateTimeOriginal
        if offset:
            ifd[36881] = offset  # OffsetTimeOriginal
    Image.new("RGB", (40, 30), (10, 200, 10)).save(path, exif=exif)


def utc(*args):
    return datetime.datetime(*args, tzinfo=datetime.timezone.utc).timestamp()


def test_dates_and_durations_are_recorded(tmp_path, capsys, search_checkpoint, fixture_bpe_dir):
    root = tmp_path / "files"
    root.mkdir()
    write_jpeg(root / "zoned.jpg", "2019:07:04 12:30:00", "+02:00")
    write_jpeg(root / "naive.jpg", "2020:01:02 03:04:05")
    write_jpeg(root / "unset.jpg", "0000:00:00 00:00:00")
    write_png(root / "plain.png", (1, 2, 3))
    write_video(root / "clip.mp4", [solid((50, 60, 70))] * (2 * FPS), sound=chirp(2.0),
                metadata={"creation_time": "2021-06-01T10:00:00.000000Z"})
    write_video(root / "undated.mp4", [solid((70, 60, 50))] * FPS)
    sf.write(root / "song.flac", chirp(1.5), 16000)
    (root / "note.txt").write_text("a note\n")
    for name in os.listdir(root):
        os.utime(root / name, (MTIME, MTIME))
    code, summary, err = index_main([tmp_path / "index", root, "--checkpoint", search_checkpoint, "--bpe-dir",
                                     fixture_bpe_dir], capsys)
    assert code == 0 and summary["failed"] == [], err
    with sqlite3.connect(tmp_path / "index" / "index.sqlite") as db:
        rows = {os.path.basename(p): (t, d) for p, t, d in db.execute("SELECT path, taken_at, duration_s FROM files")}
    assert rows["zoned.jpg"] == (utc(2019, 7, 4, 10, 30), None)  # 12:30 at +02:00
    assert rows["naive.jpg"][0] == datetime.datetime(2020, 1, 2, 3, 4, 5).timestamp()  # local time
    assert rows["clip.mp4"][0] == utc(2021, 6, 1, 10, 0)
    for name in ("unset.jpg", "plain.png", "undated.mp4", "song.flac", "note.txt"):
        assert rows[name][0] == MTIME, name  # no date in the file: its mtime
    assert rows["song.flac"][1] == pytest.approx(1.5)
    assert rows["clip.mp4"][1] == pytest.approx(2.0, abs=0.1) and rows["undated.mp4"][1] == pytest.approx(1.0, abs=0.1)
    assert rows["note.txt"][1] is None and rows["plain.png"][1] is None


@pytest.mark.parametrize("value, offset, expected", [
    ("2019:07:04 12:30:00", "-05:00", utc(2019, 7, 4, 17, 30)),
    ("2019:07:04 12:30:00\x00", None, datetime.datetime(2019, 7, 4, 12, 30).timestamp()),
    ("2019:02:30 12:30:00", None, None),  # no such day
    ("    :  :     :  :  ", None, None),  # blank, as some cameras write it
    (b"2019:07:04 12:30:00", None, None),  # not text
])
def test_exif_dates(value, offset, expected):
    assert parse_exif_date(value, offset) == expected


@pytest.mark.parametrize("value, expected", [
    ("2021-06-01T10:00:00.000000Z", utc(2021, 6, 1, 10, 0)),
    ("2021-06-01T12:00:00+0200", utc(2021, 6, 1, 10, 0)),  # QuickTime's creationdate
    ("2021-06-01 10:00:00", utc(2021, 6, 1, 10, 0)),  # no zone: UTC, as container dates are
    ("1970-01-01T00:00:00.000000Z", None),  # what encoders write when unset
    ("1904-01-01T00:00:00Z", None),
    ("yesterday", None),
])
def test_container_dates(value, expected):
    assert parse_container_date(value) == expected
