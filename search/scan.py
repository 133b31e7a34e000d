"""Finding what to index: files under the roots, their modality by extension, the texts of a TSV.

Which modalities exist, their file extensions and how the page shows them come from the modality
registry (``Modality.extensions``, ``Modality.search_view``; built-ins in
``models/builtin_modalities.py``), read at call time so that a modality registered later is searchable.
"""
import fnmatch
import os
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from ..models.modalities import SEARCH_VIEWS, all_modalities, modality_names

TSV_TEXT_COLUMNS = ("text", "caption")
TEXT_MAX_BYTES = 1 << 20  # a .txt is one document; only its start matters (70 tokens are embedded)
TSV_EXTENSION = ".tsv"  # a table of texts: indexed row by row, never a query


def extensions() -> Dict[str, Tuple[str, ...]]:
    """modality -> the file suffixes indexed under it, in registry order (modalities without any are absent)."""
    return {m.name: tuple(m.extensions) for m in all_modalities() if m.extensions}


def query_extensions() -> List[str]:
    """Suffixes a query file may have: every registered one but the TSV (a table, not one item)."""
    return sorted(e for exts in extensions().values() for e in exts if e != TSV_EXTENSION)


def check_modalities(names: Iterable[str]) -> List[str]:
    """``names`` if every one is a registered modality, else a ValueError naming the choices."""
    names, known = list(names), modality_names()
    for name in names:
        if name not in known:
            raise ValueError(f"unknown modality {name!r}: choose among {', '.join(known)} (comma-separated)")
    return names


def view_of(modality: str) -> str:
    """How the search page shows a hit of ``modality`` (a plain link for one no longer registered)."""
    for m in all_modalities():
        if m.name == modality:
            return m.search_view
    return "file"


def display_order(modalities: Iterable[str]) -> List[str]:
    """``modalities`` as the page shows them: by view (thumbnails first, as :data:`SEARCH_VIEWS`),
    then in registry order; names no longer registered last, by name."""
    names = modality_names()
    rank = {name: (SEARCH_VIEWS.index(view_of(name)), i) for i, name in enumerate(names)}
    return sorted(modalities, key=lambda m: rank.get(m, (len(SEARCH_VIEWS), len(names))) + (m,))


@dataclass(frozen=True)
class Source:
    """One file found under a root (a ``.tsv`` of texts is one source with many items)."""
    path: str  # absolute, normalised (not resolved: a symlinked file keeps its name in the index)
    modality: str
    size: int
    mtime_ns: int


def _by_extension() -> Dict[str, str]:
    table: Dict[str, str] = {}
    for modality, exts in extensions().items():
        for ext in exts:
            table.setdefault(ext, modality)  # the first registered modality claiming a suffix keeps it
    return table


def modality_of(path: str, table: Optional[Dict[str, str]] = None) -> Optional[str]:
    return (table or _by_extension()).get(os.path.splitext(path)[1].lower())


def normalise_root(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def under_root(path: str, roots: Sequence[str]) -> bool:
    """``path`` lies under one of ``roots`` (plain path prefix on whole components)."""
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def excluded(relative: str, patterns: Sequence[str]) -> bool:
    """``relative`` (a path under a root, ``/``-separated) matches one of ``patterns`` (``fnmatch``, case
    sensitive: ``*`` also crosses ``/``), whole or by its last component."""
    name = relative.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(relative, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def scan(roots: Sequence[str], modalities: Optional[Sequence[str]] = None,
         exclude: Sequence[str] = ()) -> Tuple[List[Source], List[str]]:
    """Every indexable file under ``roots`` (folders or single files), sorted by path, and the roots
    that do not exist.  Hidden files and folders are skipped, and so is what ``exclude`` matches (a
    folder that matches is not walked).  Symlinked files are indexed under their own name; symlinked
    folders are not followed (``os.walk``'s default: no loops, and the server would not serve files
    outside the roots anyway): add the target as a root instead."""
    found: Dict[str, Source] = {}
    missing = []
    table = _by_extension()
    for root in roots:
        if not os.path.exists(root):
            missing.append(root)
            continue
        for path in _walk(root, tuple(exclude)):
            modality = modality_of(path, table)
            if modality is None or (modalities and modality not in modalities):
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue  # vanished or dangling link between listing and stat
            found[path] = Source(path, modality, st.st_size, st.st_mtime_ns)
    return [found[p] for p in sorted(found)], missing


def _walk(root: str, exclude: Tuple[str, ...] = ()) -> Iterator[str]:
    if os.path.isfile(root):
        if not excluded(os.path.basename(root), exclude):
            yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel = "" if rel == "." else rel + "/"
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not excluded(rel + d, exclude))
        for name in sorted(filenames):
            if not name.startswith(".") and not excluded(rel + name, exclude) \
                    and os.path.isfile(os.path.join(dirpath, name)):
                yield os.path.join(dirpath, name)


def read_text_file(path: str) -> str:
    with open(path, "rb") as fh:
        raw = fh.read(TEXT_MAX_BYTES)
    try:
        text = raw.decode("utf-8-sig", errors="strict" if len(raw) < TEXT_MAX_BYTES else "ignore")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    text = " ".join(text.split())
    if not text:
        raise ValueError("empty text file")
    return text


def _header(fh) -> List[str]:
    return [name.strip() for name in fh.readline().rstrip("\r\n").split("\t")]


def _column(header: Sequence[str], column: Optional[str]) -> List[str]:
    return [column] if column else [c for c in TSV_TEXT_COLUMNS if c in header]


def tsv_text_column(path: str, column: Optional[str] = None) -> Optional[str]:
    """The column :func:`read_tsv_texts` would read (None: none fits, or the file cannot be read)."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            header = _header(fh)
    except OSError:
        return None
    names = _column(header, column)
    return names[0] if names and names[0] in header else None


def read_tsv_texts(path: str, column: Optional[str] = None) -> List[Tuple[int, str]]:
    """(1-based line number, text) of each non-empty row of a headed TSV; the column is ``column``
    or the first of ``text``/``caption`` in the header."""
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        header = _header(fh)
        names = _column(header, column)
        if not names or names[0] not in header:
            wanted = column or " or ".join(TSV_TEXT_COLUMNS)
            raise ValueError(f"no {wanted} column in the TSV header ({', '.join(header)})")
        col = header.index(names[0])
        rows = []
        for line_no, line in enumerate(fh, start=2):
            fields = line.rstrip("\r\n").split("\t")
            text = " ".join(fields[col].split()) if col < len(fields) else ""
            if text:
                rows.append((line_no, text))
    if not rows:
        raise ValueError(f"no non-empty {names[0]!r} in any row")
    return rows
