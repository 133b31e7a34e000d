"""An index directory: SQLite metadata and vectors (the truth), faiss indexes built from them.

    INDEX/index.sqlite      meta (checkpoint identity, options), roots, files, vectors
    INDEX/faiss/<m>.faiss   one faiss index per modality, ids = ``vectors.id``
    INDEX/lock              held by a running ``one-peace-index``

Every batch of embedded files is committed in one SQLite transaction with its vectors, so an
interrupted run keeps what it committed.  Each change to a modality's vectors bumps its version
(``meta``); a faiss file records the version it was built from and is rebuilt when they differ.
"""
import contextlib
import fcntl
import json
import os
import sqlite3
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

SCHEMA_VERSION = 2
DB_NAME = "index.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS roots (path TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    modality TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    reason TEXT,
    indexed_at REAL NOT NULL,
    taken_at REAL,                         -- seconds since the epoch: EXIF DateTimeOriginal, a container's
                                           -- creation time, else the mtime (what the date filter reads)
    duration_s REAL);                      -- audio and video, else NULL
CREATE TABLE IF NOT EXISTS vectors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- the faiss id; never reused, so a stale index cannot point elsewhere
    path TEXT NOT NULL REFERENCES files(path) ON DELETE CASCADE,
    modality TEXT NOT NULL,
    row INTEGER,                           -- line of a .tsv of texts, else NULL
    text TEXT,                             -- the embedded text (texts only), for display
    vector BLOB NOT NULL,                  -- float32, L2-normalised
    start_s REAL,                          -- a segment of a long video or sound: its span in seconds;
    end_s REAL);                           -- NULL when the vector stands for the whole file
CREATE INDEX IF NOT EXISTS vectors_by_path ON vectors(path);
CREATE INDEX IF NOT EXISTS vectors_by_modality ON vectors(modality);
CREATE INDEX IF NOT EXISTS files_by_date ON files(taken_at);  -- date filters read a range, not the table
"""
# Version 1 -> 2: file dates and durations, segment spans (old rows date from their mtime).
_MIGRATE_1_TO_2 = """
ALTER TABLE files ADD COLUMN taken_at REAL;
ALTER TABLE files ADD COLUMN duration_s REAL;
ALTER TABLE vectors ADD COLUMN start_s REAL;
ALTER TABLE vectors ADD COLUMN end_s REAL;
UPDATE files SET taken_at = mtime_ns / 1e9;
"""


class IndexBusy(RuntimeError):
    pass


class IndexStore:
    """The SQLite side of an index directory."""

    def __init__(self, index_dir: str, create: bool = False):
        self.dir = os.path.abspath(os.path.expanduser(index_dir))
        self.db_path = os.path.join(self.dir, DB_NAME)
        if os.path.exists(self.dir) and not os.path.isdir(self.dir):
            raise ValueError(f"index path {self.dir} is a file, not an index directory")
        if not os.path.isfile(self.db_path):
            if not create:
                raise FileNotFoundError(f"{self.dir} is not a search index (no {DB_NAME}); build one with "
                                        "one-peace-index")
            os.makedirs(self.dir, exist_ok=True)
        # One connection per thread that opens a store; the server opens one per request thread.
        self.db = sqlite3.connect(self.db_path, timeout=30, check_same_thread=False)
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.execute("PRAGMA journal_mode = WAL")  # readers (search, serve) never block the indexer
        version = self._stored_version()
        if version == 1:
            with self.db:
                self.db.executescript(_MIGRATE_1_TO_2)
            self.set("schema_version", 2)
            version = 2
        with self.db:
            self.db.executescript(_SCHEMA)
        if version is None:
            self.set("schema_version", SCHEMA_VERSION)
        elif version != SCHEMA_VERSION:
            raise ValueError(f"{self.db_path} has schema version {version}; this code reads {SCHEMA_VERSION}")

    def close(self):
        self.db.close()

    def _stored_version(self) -> Optional[int]:
        """The schema version recorded in an existing database (None for a new one)."""
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone():
            return None
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return json.loads(row[0]) if row else None

    # ---- meta ----------------------------------------------------------------------------
    def get(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set(self, key: str, value) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def version(self, modality: str) -> int:
        return int(self.get(f"version:{modality}", 0))

    def _bump(self, modalities: Iterable[str]) -> None:
        for m in set(modalities):
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"version:{m}", json.dumps(self.version(m) + 1)))

    # ---- roots and files -----------------------------------------------------------------
    def roots(self) -> List[str]:
        return [r for (r,) in self.db.execute("SELECT path FROM roots ORDER BY path")]

    def set_roots(self, roots: Sequence[str]) -> None:
        with self.db:
            self.db.execute("DELETE FROM roots")
            self.db.executemany("INSERT INTO roots VALUES (?)", [(r,) for r in sorted(set(roots))])

    def files(self) -> Dict[str, Tuple[str, int, int, str]]:
        """path -> (modality, size, mtime_ns, status)."""
        return {p: (m, s, t, st) for p, m, s, t, st in
                self.db.execute("SELECT path, modality, size, mtime_ns, status FROM files")}

    def failures(self) -> List[Tuple[str, str, str]]:
        return list(self.db.execute("SELECT path, modality, reason FROM files WHERE status = 'failed' ORDER BY path"))

    def clear_failures(self) -> int:
        """Forget the files that failed (they have no vectors): the next run embeds them again."""
        with self.db:
            return self.db.execute("DELETE FROM files WHERE status = 'failed'").rowcount

    def mark_stale(self, paths: Sequence[str]) -> None:
        """Make the next run embed ``paths`` again (as if changed); their vectors serve until then."""
        with self.db:
            self.db.executemany("UPDATE files SET mtime_ns = -1 WHERE path = ?", [(p,) for p in paths])

    def listing(self, modality: Optional[str] = None) -> List[Dict]:
        """Every recorded file (of ``modality``) with its status, reason and vector count, by path."""
        where, params = ("WHERE f.modality = ?", (modality,)) if modality else ("", ())
        rows = self.db.execute(
            "SELECT f.path, f.modality, f.status, f.reason, f.size, f.mtime_ns, "
            f"(SELECT COUNT(*) FROM vectors v WHERE v.path = f.path) FROM files f {where} ORDER BY f.path", params)
        keys = ("path", "modality", "status", "reason", "size", "mtime_ns", "vectors")
        return [dict(zip(keys, row)) for row in rows]

    def delete_files(self, paths: Sequence[str]) -> int:
        if not paths:
            return 0
        with self.db:
            modalities = set()
            for path in paths:
                row = self.db.execute("SELECT modality FROM files WHERE path = ?", (path,)).fetchone()
                if row:
                    modalities.add(row[0])  # and every modality of its vectors (a video's sound track)
                    modalities.update(m for (m,) in self.db.execute(
                        "SELECT DISTINCT modality FROM vectors WHERE path = ?", (path,)))
                    self.db.execute("DELETE FROM files WHERE path = ?", (path,))  # vectors cascade
            self._bump(modalities)
        return len(paths)

    def commit_batch(self, entries: Sequence[Tuple]) -> None:
        """One transaction for a batch; a file's earlier record and vectors are replaced.

        An entry is ``(source, status, reason, vectors[, file_info])``.  A vector is ``(row, text,
        vector)`` of the file's own modality, or ``(row, text, vector, modality, start_s, end_s)`` (a
        segment, or another modality of the same file: a video's sound track is audio).  ``file_info``
        may give ``taken_at`` (default: the mtime) and ``duration_s``."""
        now = time.time()
        touched = set()
        with self.db:
            for source, status, reason, vectors, *more in entries:
                info = more[0] if more else {}
                taken_at = info.get("taken_at")
                self.db.execute("DELETE FROM files WHERE path = ?", (source.path,))
                self.db.execute(
                    "INSERT INTO files (path, modality, size, mtime_ns, status, reason, indexed_at, taken_at, "
                    "duration_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (source.path, source.modality, source.size, source.mtime_ns, status, reason, now,
                     source.mtime_ns / 1e9 if taken_at is None else float(taken_at), info.get("duration_s")))
                rows = [_vector_row(source, v) for v in vectors]
                self.db.executemany(
                    "INSERT INTO vectors (path, modality, row, text, vector, start_s, end_s) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                touched.add(source.modality)
                touched.update(r[1] for r in rows)
            self._bump(touched)

    # ---- vectors -------------------------------------------------------------------------
    def counts(self) -> Dict[str, int]:
        return dict(self.db.execute("SELECT modality, COUNT(*) FROM vectors GROUP BY modality ORDER BY modality"))

    def modalities(self) -> List[str]:
        """The modalities with vectors, sorted: one index lookup per modality ever stored (``counts`` reads
        the whole modality index, too slow for every query of a large index)."""
        seen = [k[len("version:"):] for (k,) in self.db.execute("SELECT key FROM meta WHERE key LIKE 'version:%'")]
        if not seen:  # every commit records its modalities' versions; read the vectors if none is recorded
            return sorted(self.counts())
        return sorted(m for m in seen if self.db.execute("SELECT 1 FROM vectors WHERE modality = ? LIMIT 1",
                                                          (m,)).fetchone())

    def file_counts(self) -> Dict[str, Dict[str, int]]:
        out: Dict[str, Dict[str, int]] = {}
        for modality, status, n in self.db.execute("SELECT modality, status, COUNT(*) FROM files GROUP BY 1, 2"):
            out.setdefault(modality, {})[status] = n
        return out

    def vectors(self, modality: str, dim: int) -> Tuple[np.ndarray, np.ndarray]:
        """(ids (N,) int64, vectors (N, dim) float32) of one modality, read in id order."""
        rows = self.db.execute("SELECT id, vector FROM vectors WHERE modality = ? ORDER BY id", (modality,))
        ids, chunks = [], []
        for vid, blob in rows:
            ids.append(vid)
            chunks.append(blob)
        matrix = np.frombuffer(b"".join(chunks), dtype=np.float32).reshape(len(ids), dim) if ids else \
            np.zeros((0, dim), np.float32)
        return np.asarray(ids, np.int64), matrix

    def vector_ids(self, modality: str) -> np.ndarray:
        return np.asarray([i for (i,) in self.db.execute(
            "SELECT id FROM vectors WHERE modality = ? ORDER BY id", (modality,))], np.int64)

    def vectors_by_id(self, ids: Sequence[int], dim: int) -> np.ndarray:
        """(len(ids), dim) float32 of the given vector ids, in id order."""
        blobs = []
        for start in range(0, len(ids), 500):  # SQLite caps the number of parameters
            part = [int(i) for i in ids[start:start + 500]]
            blobs += [b for (b,) in self.db.execute(
                f"SELECT vector FROM vectors WHERE id IN ({','.join('?' * len(part))}) ORDER BY id", part)]
        return np.frombuffer(b"".join(blobs), np.float32).reshape(len(blobs), dim)

    def lookup(self, ids: Sequence[int]) -> Dict[int, Dict]:
        """vector id -> its record (path, modality, row, text, size, mtime_ns, taken_at, duration_s,
        start_s, end_s, file_modality)."""
        if not len(ids):
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(
            f"SELECT v.id, v.path, v.modality, v.row, v.text, f.size, f.mtime_ns, f.taken_at, f.duration_s, "
            f"v.start_s, v.end_s, f.modality FROM vectors v JOIN files f ON f.path = v.path "
            f"WHERE v.id IN ({marks})", [int(i) for i in ids])
        keys = ("id", "path", "modality", "row", "text", "size", "mtime_ns", "taken_at", "duration_s", "start_s",
                "end_s", "file_modality")
        return {r[0]: dict(zip(keys, r)) for r in rows}

    def vector_of(self, vid: int, dim: int) -> Optional[np.ndarray]:
        row = self.db.execute("SELECT vector FROM vectors WHERE id = ?", (int(vid),)).fetchone()
        return np.frombuffer(row[0], np.float32).reshape(dim) if row else None


def _vector_row(source, vector: Tuple) -> Tuple:
    if len(vector) == 3:
        (row, text, vec), modality, start, end = vector, source.modality, None, None
    else:
        row, text, vec, modality, start, end = vector
    return (source.path, modality, row, text, np.asarray(vec, np.float32).tobytes(), start, end)


@contextlib.contextmanager
def exclusive(index_dir: str):
    """Hold ``INDEX/lock`` for the duration (one indexer at a time; refused at once, not queued)."""
    os.makedirs(index_dir, exist_ok=True)
    with open(os.path.join(index_dir, "lock"), "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexBusy(f"another one-peace-index is running on {index_dir}") from None
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
