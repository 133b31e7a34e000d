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

SCHEMA_VERSION = 1
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
    indexed_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS vectors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- the faiss id; never reused, so a stale index cannot point elsewhere
    path TEXT NOT NULL REFERENCES files(path) ON DELETE CASCADE,
    modality TEXT NOT NULL,
    row INTEGER,                           -- line of a .tsv of texts, else NULL
    text TEXT,                             -- the embedded text (texts only), for display
    vector BLOB NOT NULL);                 -- float32, L2-normalised
CREATE INDEX IF NOT EXISTS vectors_by_path ON vectors(path);
CREATE INDEX IF NOT EXISTS vectors_by_modality ON vectors(modality);
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
        with self.db:
            self.db.executescript(_SCHEMA)
        version = self.get("schema_version")
        if version is None:
            self.set("schema_version", SCHEMA_VERSION)
        elif version != SCHEMA_VERSION:
            raise ValueError(f"{self.db_path} has schema version {version}; this code reads {SCHEMA_VERSION}")

    def close(self):
        self.db.close()

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
                    modalities.add(row[0])
                    self.db.execute("DELETE FROM files WHERE path = ?", (path,))  # vectors cascade
            self._bump(modalities)
        return len(paths)

    def commit_batch(self, entries: Sequence[Tuple]) -> None:
        """One transaction for a batch: ``entries`` of (source, status, reason, [(row, text, vector)]);
        a file's earlier record and vectors are replaced."""
        now = time.time()
        with self.db:
            for source, status, reason, vectors in entries:
                self.db.execute("DELETE FROM files WHERE path = ?", (source.path,))
                self.db.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (source.path, source.modality, source.size, source.mtime_ns, status, reason, now))
                self.db.executemany(
                    "INSERT INTO vectors (path, modality, row, text, vector) VALUES (?, ?, ?, ?, ?)",
                    [(source.path, source.modality, row, text, np.asarray(vec, np.float32).tobytes())
                     for row, text, vec in vectors])
            self._bump(source.modality for source, *_ in entries)

    # ---- vectors -------------------------------------------------------------------------
    def counts(self) -> Dict[str, int]:
        return dict(self.db.execute("SELECT modality, COUNT(*) FROM vectors GROUP BY modality ORDER BY modality"))

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
        """vector id -> its record (path, modality, row, text, size, mtime_ns)."""
        if not len(ids):
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(
            f"SELECT v.id, v.path, v.modality, v.row, v.text, f.size, f.mtime_ns FROM vectors v "
            f"JOIN files f ON f.path = v.path WHERE v.id IN ({marks})", [int(i) for i in ids])
        return {r[0]: dict(id=r[0], path=r[1], modality=r[2], row=r[3], text=r[4], size=r[5], mtime_ns=r[6])
                for r in rows}

    def vector_of(self, vid: int, dim: int) -> Optional[np.ndarray]:
        row = self.db.execute("SELECT vector FROM vectors WHERE id = ?", (int(vid),)).fetchone()
        return np.frombuffer(row[0], np.float32).reshape(dim) if row else None


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
