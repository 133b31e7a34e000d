"""An index of the first schema (before dates, durations and segments) opens and migrates in place:
its files keep their vectors, date from their mtime, and new entries carry the new fields."""
import sqlite3

from one_peace.search.scan import Source
from one_peace.search.store import SCHEMA_VERSION, IndexStore

V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE roots (path TEXT PRIMARY KEY);
CREATE TABLE files (path TEXT PRIMARY KEY, modality TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, status TEXT NOT NULL CHECK (status IN ('ok', 'failed')), reason TEXT,
    indexed_at REAL NOT NULL);
CREATE TABLE vectors (id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL REFERENCES files(path)
    ON DELETE CASCADE, modality TEXT NOT NULL, row INTEGER, text TEXT, vector BLOB NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO files VALUES ('/photos/a.jpg', 'image', 3, 2000000000, 'ok', NULL, 1.0);
"""


def test_a_version_1_index_migrates_and_keeps_its_vectors(tmp_path):
    db = sqlite3.connect(tmp_path / "index.sqlite")
    db.executescript(V1)
    db.execute("INSERT INTO vectors (path, modality, vector) VALUES ('/photos/a.jpg', 'image', ?)", (b"\0" * 8,))
    db.commit()
    db.close()
    store = IndexStore(str(tmp_path))
    assert store.get("schema_version") == SCHEMA_VERSION == 2
    record = store.lookup([1])[1]
    assert record["path"] == "/photos/a.jpg" and record["taken_at"] == 2.0 and record["start_s"] is None
    video = Source("/clips/v.mp4", "video", 10, 5_000_000_000)
    store.commit_batch([(video, "ok", None, [(None, None, [1.0, 0.0]), (None, None, [0.0, 1.0], "audio", 0.0, 5.0)],
                         {"duration_s": 5.0, "taken_at": 7.0})])
    sound = store.lookup([3])[3]
    assert (sound["modality"], sound["file_modality"], sound["end_s"], sound["taken_at"]) == ("audio", "video", 5.0, 7.0)
    audio_version = store.version("audio")
    store.delete_files(["/clips/v.mp4"])  # the sound track's modality changes too: its faiss index is rebuilt
    assert store.version("audio") == audio_version + 1 and store.counts() == {"image": 1}
    store.close()
    assert IndexStore(str(tmp_path)).get("schema_version") == 2  # opening again migrates nothing
