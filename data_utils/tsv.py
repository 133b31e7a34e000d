"""TSV data files: header-addressed columns, random row access via a byte-offset index.

Only the byte offset of each row is kept in memory, so multi-GB annotation files are fine.
File handles are reopened per process, so a reader can be shared with DataLoader workers.
"""
import os
import re
from typing import Dict, List, Optional, Sequence, Union

import numpy as np


class TSVRowError(ValueError):
    """A data row that does not match the header (``row`` is the 1-based line number)."""

    def __init__(self, path: str, row: int, reason: str):
        self.path, self.row, self.reason = path, row, reason
        super().__init__(f"{path}, line {row}: {reason}")


class TSVReader:
    """Rows of a headed TSV as ``{column: str}`` dicts, optionally restricted to ``selected_cols``."""

    def __init__(self, path: str, selected_cols: Union[None, str, Sequence[str]] = None,
                 separator: str = "\t", data_root: Optional[str] = None):
        self.path = os.fspath(path)
        self.separator = separator
        self.data_root = data_root
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"TSV file not found: {self.path}")
        self.header = self._read_header()
        self.columns = self._select(selected_cols)
        self._col_idx = [self.header.index(c) for c in self.columns]
        self._offsets, self._lines = self._index_rows()
        if len(self._offsets) == 0:
            raise ValueError(f"{self.path}: has a header ({self.separator.join(self.header)!r}) but no data rows")
        self._fh, self._fh_pid = None, None

    # ---- construction ----------------------------------------------------------------
    def _read_header(self) -> List[str]:
        with open(self.path, "rb") as fh:
            first = fh.readline()
        header = first.decode("utf-8-sig").rstrip("\r\n")  # tolerate a BOM
        if not header.strip():
            raise ValueError(f"{self.path}: empty file or empty header line (a header row naming "
                             "the columns is required)")
        return [name.strip() for name in header.split(self.separator)]

    def _select(self, selected_cols) -> List[str]:
        if selected_cols is None or selected_cols == "":
            return list(self.header)
        cols = selected_cols.split(",") if isinstance(selected_cols, str) else list(selected_cols)
        cols = [c.strip() for c in cols]
        for col in cols:
            if col not in self.header:
                raise ValueError(f"{self.path}: column {col!r} not in header; available columns: "
                               f"{', '.join(self.header)}")
        return cols

    def _index_rows(self):
        """Byte offset and line number of every non-blank data row."""
        offsets, lines = [], []
        with open(self.path, "rb") as fh:
            pos = len(fh.readline())
            lineno = 1
            for raw in fh:
                lineno += 1
                if raw.strip(b"\r\n"):
                    offsets.append(pos)
                    lines.append(lineno)
                pos += len(raw)
        return np.asarray(offsets, dtype=np.int64), np.asarray(lines, dtype=np.int64)

    # ---- access ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._offsets)

    def _handle(self):
        if self._fh is None or self._fh_pid != os.getpid():
            self._fh, self._fh_pid = open(self.path, "rb"), os.getpid()
        return self._fh

    def line_number(self, index: int) -> int:
        return int(self._lines[index])

    def __getitem__(self, index: int) -> Dict[str, str]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.path}: row index {index} out of range ({len(self)} rows)")
        index = index % len(self)
        fh = self._handle()
        fh.seek(int(self._offsets[index]))
        row = self.line_number(index)
        try:
            text = fh.readline().decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise TSVRowError(self.path, row, f"not valid UTF-8 ({exc})") from None
        fields = text.split(self.separator)
        if len(fields) != len(self.header):
            kind = "missing fields" if len(fields) < len(self.header) else "extra fields"
            raise TSVRowError(self.path, row, f"{kind}: expected {len(self.header)} "
                              f"({', '.join(self.header)}), got {len(fields)}")
        return {col: fields[i] for col, i in zip(self.columns, self._col_idx)}

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def validate(self) -> None:
        """Read every row once, raising the first TSVRowError."""
        for _ in self:
            pass

    def resolve(self, value: str) -> str:
        """Media path of a cell, relative to ``data_root`` or else to this TSV's directory."""
        return resolve_media_path(value, self.data_root, tsv_path=self.path)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fh"], state["_fh_pid"] = None, None  # file handles do not pickle
        return state

    def __repr__(self) -> str:
        return f"TSVReader({self.path!r}, columns={self.columns}, rows={len(self)})"


def resolve_media_path(value: str, data_root: Optional[str] = None, tsv_path: Optional[str] = None) -> str:
    """Absolute paths are kept; relative ones join ``data_root``, else the TSV's own directory."""
    value = os.path.expanduser(value)
    if os.path.isabs(value):
        return value
    if data_root is not None:
        return os.path.join(os.path.expanduser(data_root), value)
    if tsv_path is not None:
        return os.path.join(os.path.dirname(os.path.abspath(tsv_path)), value)
    return value


_RANGE = re.compile(r"\[(\d+)-(\d+)\]")


def expand_data_paths(spec: str) -> List[str]:
    """``"a.tsv,b[1-3].tsv"`` -> ``[a.tsv, b1.tsv, b2.tsv, b3.tsv]`` (ranges inclusive).

    A zero-padded start (``[01-12]``) keeps its width; several ranges in one path expand
    left to right.
    """
    paths: List[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if part:
            paths.extend(_expand_one(part))
    if not paths:
        raise ValueError(f"no data paths in {spec!r}")
    return paths


def _expand_one(path: str) -> List[str]:
    match = _RANGE.search(path)
    if match is None:
        return [path]
    lo_s, hi_s = match.group(1), match.group(2)
    lo, hi = int(lo_s), int(hi_s)
    if lo > hi:
        raise ValueError(f"data path range [{lo_s}-{hi_s}] in {path!r} is empty (start > end)")
    width = len(lo_s) if lo_s.startswith("0") and len(lo_s) > 1 else 0
    head, tail = path[: match.start()], path[match.end():]
    out = []
    for i in range(lo, hi + 1):
        out.extend(_expand_one(f"{head}{str(i).zfill(width)}{tail}"))
    return out


def select_epoch_file(paths: Sequence[str], epoch: int) -> str:
    """File used in ``epoch`` (1-based): round-robin over the shards."""
    if not paths:
        raise ValueError("no data files to choose from")
    return paths[(epoch - 1) % len(paths)]
