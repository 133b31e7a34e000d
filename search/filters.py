"""Filters of a query: folder, date, size and duration, run in SQLite (``docs/SEARCH.md``, "Filters").

A filter becomes one ``WHERE`` over ``files``, joined to the vectors' (path, id) index, that yields the
allowed vector ids of a modality (cached per index version by ``searcher.SearchIndex``); the faiss search
then keeps only those ids (``ranking.py``).

* folder: the file's path lies under it (a range compare on ``files.path``, its primary key: no LIKE,
  so ``%`` and ``_`` in names are plain characters); several folders: any of them;
* date: ``files.taken_at`` (EXIF DateTimeOriginal for photos, the container's date for videos, else
  the mtime) in ``[since, until]``; a date without a time is a whole day, in local time;
* size (bytes, ``files.size``) and duration (seconds, ``files.duration_s``; files without one, e.g.
  images, never pass a duration filter).
"""
import math
import os
import re
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta
from typing import Dict, List, Optional, Sequence, Tuple

from .scan import normalise_root, under_root

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?i?b?)\s*$", re.I)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10 ** 3, "kb": 10 ** 3, "m": 10 ** 6, "mb": 10 ** 6, "g": 10 ** 9, "gb": 10 ** 9,
               "t": 10 ** 12, "tb": 10 ** 12, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|m|min|h)?\s*$", re.I)
_CLOCK = re.compile(r"^\s*(?:(\d+):)?(\d+):(\d+(?:\.\d*)?)\s*$")


@dataclass(frozen=True)
class Filters:
    folders: Tuple[str, ...] = ()
    since: Optional[float] = None  # taken_at >= since (seconds since the epoch)
    until: Optional[float] = None  # taken_at <= until
    min_size: Optional[int] = None
    max_size: Optional[int] = None
    min_duration: Optional[float] = None
    max_duration: Optional[float] = None

    def active(self) -> bool:
        return any(getattr(self, f.name) not in (None, ()) for f in fields(self))

    def where(self) -> Tuple[str, List]:
        """(SQL condition over ``f`` = files, parameters); "1" when nothing is filtered."""
        parts, params = [], []
        if self.folders:
            ors = []
            for folder in self.folders:
                if folder == os.sep:
                    ors.append("1")
                    continue
                # under FOLDER/: from "FOLDER/" up to "FOLDER0" ('0' follows '/'), the path index's order
                ors.append("(f.path = ? OR (f.path >= ? AND f.path < ?))")
                params += [folder, folder + "/", folder + "0"]
            parts.append("(" + " OR ".join(ors) + ")")
        for column, low, high in (("f.taken_at", self.since, self.until), ("f.size", self.min_size, self.max_size),
                                  ("f.duration_s", self.min_duration, self.max_duration)):
            if low is not None:
                parts.append(f"{column} >= ?")
                params.append(low)
            if high is not None:
                parts.append(f"{column} <= ?")
                params.append(high)
        return (" AND ".join(parts) or "1"), params

    def key(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))

    def to_dict(self) -> Dict:
        """The filters in force, for an answer (dates as ISO text, local time)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value in (None, ()):
                continue
            if f.name in ("since", "until"):
                value = datetime.fromtimestamp(value).isoformat(timespec="seconds")
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def allowed_ids(db, filters: Filters, within):
    """The vector ids in ``within`` (a modality's ids, ascending) whose file passes ``filters``, ascending.

    The files are filtered first (the path index for folders), then each passing file's vector ids are
    read from the (path, id) index: no vector row (a blob of floats) is read."""
    import numpy as np

    where, params = filters.where()
    rows = db.execute("SELECT v.id FROM files f CROSS JOIN vectors v INDEXED BY vectors_by_path ON v.path = f.path "
                      f"WHERE {where}", params)
    return np.intersect1d(np.fromiter((i for (i,) in rows), dtype=np.int64), within)


def _is_number(value) -> bool:
    """A number as JSON or Python gives it (not a string, not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _at_least_zero(value, option: str, what: str):
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{option} must be {what}, got {value!r}")
    return value


def parse_date(value, option: str, end: bool = False) -> Optional[float]:
    """``YYYY-MM-DD`` (a whole day: its start, or with ``end`` its last instant), ``YYYY-MM-DDTHH:MM[:SS]``
    with an optional offset (``Z``, ``+02:00``; without one: local time), or seconds since the epoch."""
    if value is None or value == "":
        return None
    if _is_number(value):
        if not math.isfinite(value):
            raise ValueError(f"{option} must be a date, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{option} must be a date (YYYY-MM-DD), got {value!r}")
    text = value.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = date.fromisoformat(text)
            start = datetime(day.year, day.month, day.day)
            moment = start + timedelta(days=1) - timedelta(microseconds=1) if end else start
        else:
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise ValueError(f"{option} must be a date YYYY-MM-DD or a time YYYY-MM-DDTHH:MM[:SS][+HH:MM], "
                         f"got {value!r}") from None
    return moment.timestamp()  # naive: local time


def parse_size(value, option: str) -> Optional[int]:
    """Bytes: a number, or with a unit: ``500k``, ``10MB``, ``1.5G`` (powers of 1000), ``2MiB`` (of 1024)."""
    if value is None or value == "":
        return None
    if _is_number(value):
        return int(_at_least_zero(value, option, "a size of 0 bytes or more"))
    match = _SIZE.match(value) if isinstance(value, str) else None
    unit = match.group(2).lower() if match else None
    if unit not in _SIZE_UNITS:
        raise ValueError(f"{option} must be a size in bytes, optionally with a unit (500k, 10MB, 2GiB), got {value!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(value, option: str) -> Optional[float]:
    """Seconds: ``90``, ``90s``, ``1.5m``, ``2h``, or a clock ``1:30`` / ``1:02:03``."""
    if value is None or value == "":
        return None
    if _is_number(value):
        return float(_at_least_zero(value, option, "a duration of 0 seconds or more"))
    if isinstance(value, str):
        clock = _CLOCK.match(value)
        if clock:
            hours, minutes, seconds = clock.groups()
            return int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)
        match = _DURATION.match(value)
        if match:
            scale = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600}[(match.group(2) or "").lower()]
            return float(match.group(1)) * scale
    raise ValueError(f"{option} must be a duration in seconds (90, 90s, 1.5m, 2h, 1:30), got {value!r}")


def parse_folders(values, roots: Sequence[str], option: str = "--folder") -> Tuple[str, ...]:
    """Absolute folders; one that is neither under nor above a folder of the index is an error (a typo
    would otherwise filter everything out)."""
    if values is None or values == "":
        return ()
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{option} must be a folder path or a list of them, got {values!r}")
    out = []
    for value in values:
        if not value.strip():
            continue
        folder = normalise_root(value.strip()).rstrip(os.sep) or os.sep
        if not (under_root(folder, roots) or any(under_root(r, [folder]) for r in roots)):
            raise ValueError(f"{option} {folder} is not in the index (its folders: {', '.join(roots) or 'none'})")
        out.append(folder)
    return tuple(out)


def make_filters(roots: Sequence[str], folder=None, since=None, until=None, min_size=None, max_size=None,
                 min_duration=None, max_duration=None, names: Optional[Dict[str, str]] = None) -> Filters:
    """Parsed and checked filters; ``names`` maps each field to the option or key the errors name."""
    names = dict({"folder": "folder", "since": "since", "until": "until", "min_size": "min_size",
                  "max_size": "max_size", "min_duration": "min_duration", "max_duration": "max_duration"},
                 **(names or {}))
    filters = Filters(folders=parse_folders(folder, roots, names["folder"]),
                      since=parse_date(since, names["since"]), until=parse_date(until, names["until"], end=True),
                      min_size=parse_size(min_size, names["min_size"]),
                      max_size=parse_size(max_size, names["max_size"]),
                      min_duration=parse_duration(min_duration, names["min_duration"]),
                      max_duration=parse_duration(max_duration, names["max_duration"]))
    for low, high in (("since", "until"), ("min_size", "max_size"), ("min_duration", "max_duration")):
        a, b = getattr(filters, low), getattr(filters, high)
        if a is not None and b is not None and a > b:
            raise ValueError(f"{names[low]} ({_shown(low, a)}) is after {names[high]} ({_shown(high, b)}): "
                             "nothing could pass")
    return filters


def _shown(name: str, value) -> str:
    return datetime.fromtimestamp(value).isoformat(timespec="seconds") if name in ("since", "until") else f"{value:g}"


def parse_min_score(value, option: str = "min_score") -> Optional[float]:
    if value is None or value == "":
        return None
    try:
        score = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        score = math.nan
    if not -1 <= score <= 1:
        raise ValueError(f"{option} must be a cosine score between -1 and 1, got {value!r}")
    return score
