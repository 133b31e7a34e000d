"""Finding what to index: files under the roots, their modality by extension, the texts of a TSV."""
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

EXTENSIONS: Dict[str, Tuple[str, ...]] = {
    "image": (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"),
    # what libsndfile reads (data_utils/audio.py goes through soundfile)
    "audio": (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif"),
    "video": (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg"),
    "text": (".txt", ".tsv"),
}
_BY_EXT = {ext: modality for modality, exts in EXTENSIONS.items() for ext in exts}
TSV_TEXT_COLUMNS = ("text", "caption")
TEXT_MAX_BYTES = 1 << 20  # a .txt is one document; only its start matters (70 tokens are embedded)


@dataclass(frozen=True)
class Source:
    """One file found under a root (a ``.tsv`` of texts is one source with many items)."""
    path: str  # absolute, normalised (not resolved: a symlinked file keeps its name in the index)
    modality: str
    size: int
    mtime_ns: int


def modality_of(path: str) -> Optional[str]:
    return _BY_EXT.get(os.path.splitext(path)[1].lower())


def normalise_root(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def under_root(path: str, roots: Sequence[str]) -> bool:
    """``path`` lies under one of ``roots`` (plain path prefix on whole components)."""
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def scan(roots: Sequence[str], modalities: Optional[Sequence[str]] = None) -> Tuple[List[Source], List[str]]:
    """Every indexable file under ``roots`` (folders or single files), sorted by path, and the roots
    that do not exist.  Hidden files and folders are skipped; symlinked folders are not followed
    (no cycles), symlinked files are."""
    found: Dict[str, Source] = {}
    missing = []
    for root in roots:
        if not os.path.exists(root):
            missing.append(root)
            continue
        for path in _walk(root):
            modality = modality_of(path)
            if modality is None or (modalities and modality not in modalities):
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue  # vanished or dangling link between listing and stat
            found[path] = Source(path, modality, st.st_size, st.st_mtime_ns)
    return [found[p] for p in sorted(found)], missing


def _walk(root: str) -> Iterator[str]:
    if os.path.isfile(root):
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and os.path.isfile(os.path.join(dirpath, name)):
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


def read_tsv_texts(path: str, column: Optional[str] = None) -> List[Tuple[int, str]]:
    """(1-based line number, text) of each non-empty row of a headed TSV; the column is ``column``
    or the first of ``text``/``caption`` in the header."""
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        header = [name.strip() for name in fh.readline().rstrip("\r\n").split("\t")]
        names = [column] if column else [c for c in TSV_TEXT_COLUMNS if c in header]
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
