"""Compound queries: several terms (texts, files, vectors of the index), each with a weight, some
subtracted; one parser and one combination for ``one-peace-search``, the API and the page.

The query vector is the weighted sum of the terms' L2-normalised embeddings, the subtracted ones
with a negative weight, L2-normalised again (``docs/SEARCH.md``, "Compound queries").

Spelling on the command line (``--text``, ``--file``, ``--minus``, ``--like``):

* ``WEIGHT:REST`` gives a weight only when WEIGHT is a plain positive number (``2:a dog``,
  ``0.5:bark.wav``); ``note: hi`` or ``C:\\x`` keep their colon.  ``1:2:30 pm`` is the text
  ``2:30 pm``.  A ``--file`` value naming an existing file is that file, colon or not.
* ``--minus`` takes ``text:...`` or ``file:...``; without either, a value naming an existing file is
  that file, a value that looks like a missing file (a known extension or a path separator) is an
  error, anything else is a text.
"""
import hashlib
import os
import re
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .scan import TSV_EXTENSION, modality_of, query_extensions

KINDS = ("text", "file", "id", "upload")
_WEIGHT = re.compile(r"^\s*((?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*:(.*)$", re.S)
MAX_TERMS = 16


@dataclass(frozen=True)
class Term:
    """One part of a query: ``kind`` text (a string), file (a path), id (a vector of the index) or
    upload (``(file name, bytes)`` sent to the server); ``weight`` below 0 subtracts it."""
    kind: str
    value: Union[str, int, Tuple[str, bytes]]
    weight: float = 1.0


def check_weight(weight, where: str) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not np.isfinite(weight) or weight <= 0:
        raise ValueError(f"{where}: a weight must be a number above 0, got {weight!r} (subtract a term with "
                         "--minus, or \"minus\": true in the API)")
    return float(weight)


def split_weight(spec: str, where: str) -> Tuple[float, str]:
    """(weight, rest) of ``WEIGHT:REST``; (1, spec) when the prefix is not a plain number."""
    match = _WEIGHT.match(spec)
    if not match:
        return 1.0, spec
    return check_weight(float(match.group(1)), f"{where} {spec!r}"), match.group(2)


def _file_term(spec: str, weight: float, option: str) -> Term:
    path = os.path.abspath(os.path.expanduser(spec))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{option}: query file not found: {path}")
    return Term("file", path, weight)


def _looks_like_path(value: str) -> bool:
    return os.sep in value or modality_of(value) is not None or value.lower().endswith(TSV_EXTENSION)


def parse_cli_terms(texts: Sequence[str] = (), files: Sequence[str] = (), minus: Sequence[str] = (),
                    like: Sequence[str] = ()) -> List[Term]:
    """The terms of ``--text`` / ``--file`` / ``--like`` (added) and ``--minus`` (subtracted)."""
    terms = []
    for spec in texts:
        weight, text = split_weight(spec, "--text")
        terms.append(Term("text", _nonempty(text, f"--text {spec!r}"), weight))
    for spec in files:
        weight, path = (1.0, spec) if os.path.isfile(os.path.expanduser(spec)) else split_weight(spec, "--file")
        terms.append(_file_term(path, weight, "--file"))
    for spec in like:
        weight, vid = split_weight(spec, "--like")
        if not vid.strip().isdigit():
            raise ValueError(f"--like {spec!r}: give a vector id (the \"id\" of a result), optionally WEIGHT:ID")
        terms.append(Term("id", int(vid), weight))
    for spec in minus:
        terms.append(parse_minus(spec))
    if len(terms) > MAX_TERMS:
        raise ValueError(f"a query has at most {MAX_TERMS} terms, got {len(terms)}")
    return terms


def parse_minus(spec: str) -> Term:
    """A ``--minus`` value: ``[WEIGHT:](text:TEXT | file:PATH | PATH | TEXT)``, subtracted."""
    weight, rest = (1.0, spec) if os.path.isfile(os.path.expanduser(spec)) else split_weight(spec, "--minus")
    if rest.startswith("text:"):
        return Term("text", _nonempty(rest[5:], f"--minus {spec!r}"), -weight)
    if rest.startswith("file:"):
        return _file_term(rest[5:], -weight, "--minus")
    if os.path.isfile(os.path.expanduser(rest)):
        return Term("file", os.path.abspath(os.path.expanduser(rest)), -weight)
    if _looks_like_path(rest):
        raise FileNotFoundError(f"--minus {spec!r}: no such file {os.path.abspath(os.path.expanduser(rest))} "
                                f"(write text:{rest} to subtract it as a text)")
    return Term("text", _nonempty(rest, f"--minus {spec!r}"), -weight)


def _nonempty(text: str, where: str) -> str:
    if not text.strip():
        raise ValueError(f"{where}: empty text")
    return text


def parse_api_terms(items, uploads: Dict[str, Tuple[str, bytes]]) -> List[Term]:
    """The API's ``terms``: ``[{"text": ...} | {"id": N} | {"upload": FIELD}, "weight": W > 0, "minus": bool]``;
    ``uploads`` maps a multipart field name to (file name, bytes)."""
    if not isinstance(items, list):
        raise ValueError("terms must be a list of {\"text\"|\"id\"|\"upload\", \"weight\", \"minus\"} objects")
    if len(items) > MAX_TERMS:
        raise ValueError(f"a query has at most {MAX_TERMS} terms, got {len(items)}")
    terms = []
    for i, item in enumerate(items):
        where = f"terms[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be an object, got {item!r}")
        unknown = set(item) - {"text", "id", "upload", "weight", "minus"}
        kinds = [k for k in ("text", "id", "upload") if k in item]
        if unknown or len(kinds) != 1:
            raise ValueError(f"{where} needs exactly one of text, id, upload (with weight, minus), got "
                             f"{sorted(item)}")
        weight = check_weight(item.get("weight", 1.0), where)
        minus = item.get("minus", False)
        if not isinstance(minus, bool):
            raise ValueError(f"{where}: minus must be true or false, got {minus!r}")
        sign = -1.0 if minus else 1.0
        kind, value = kinds[0], item[kinds[0]]
        if kind == "text":
            if not isinstance(value, str):
                raise ValueError(f"{where}: text must be a string")
            terms.append(Term("text", _nonempty(value, where), sign * weight))
        elif kind == "id":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{where}: id must be a vector id (a whole number), got {value!r}")
            terms.append(Term("id", value, sign * weight))
        else:
            if value not in uploads:
                raise ValueError(f"{where}: no uploaded file in the form field {value!r}")
            terms.append(Term("upload", uploads[value], sign * weight))
    return terms


def combine(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The normalised weighted sum of the L2-normalised ``vectors``; an error when no weight is positive
    or when the terms cancel out."""
    if not vectors:
        raise ValueError("give a query: a text or a file")
    if not any(w > 0 for w in weights):
        raise ValueError("a query needs at least one term to look for (a text, a file or a stored vector): "
                         "subtracted terms (--minus, \"minus\": true) only subtract")
    total = np.zeros_like(np.asarray(vectors[0], np.float64))
    for vector, weight in zip(vectors, weights):
        vector = np.asarray(vector, np.float64)
        total += weight * vector / max(np.linalg.norm(vector), 1e-12)
    norm = np.linalg.norm(total)
    if norm < 1e-4 * sum(abs(w) for w in weights):
        raise ValueError("the query terms cancel out (their weighted sum is a zero vector): change a weight or "
                         "drop a --minus term")
    return (total / norm).astype(np.float32)


class TermEmbedder:
    """Embeds terms with an opened index (``searcher.SearchIndex``); remembers the last texts and
    uploads (by content), so that the next page of a query does not run the model again."""

    def __init__(self, index, cache_size: int = 0):
        self.index, self.cache_size = index, cache_size
        self._cache: OrderedDict[tuple, tuple] = OrderedDict()

    def embed(self, terms: Sequence[Term]) -> Tuple[np.ndarray, Dict]:
        """(query vector, description) of ``terms``."""
        vectors, described = [], []
        for term in terms:
            vector, about = self._one(term)
            vectors.append(vector)
            described.append(dict(about, weight=term.weight))
        return combine(vectors, [t.weight for t in terms]), describe(described)

    def _one(self, term: Term) -> Tuple[np.ndarray, Dict]:
        if term.kind == "id":
            return self._vector_of(term.value)
        if term.kind == "upload":
            name, data = term.value
            key = ("upload", hashlib.sha256(data).hexdigest(), os.path.splitext(name)[1].lower())
        else:
            key = (term.kind, term.value)
            if term.kind == "file":  # a file edited since is another query
                st = os.stat(term.value)
                key += (st.st_size, st.st_mtime_ns)
        if key in self._cache:
            self._cache.move_to_end(key)
            vector, about = self._cache[key]
        else:
            vector, about = self._compute(term)
            if self.cache_size:
                self._cache[key] = (vector, about)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        if term.kind == "upload":
            about = dict(about, file=os.path.basename(term.value[0]))
        return vector, about

    def _compute(self, term: Term) -> Tuple[np.ndarray, Dict]:
        if term.kind == "text":
            return self.index.embed_text(term.value), {"text": term.value}
        if term.kind == "file":
            vector, modality = self.index.embed_file(term.value)
            return vector, {"file": term.value, "modality": modality}
        name, data = term.value
        ext = os.path.splitext(name)[1].lower()
        if modality_of(name) is None or ext == TSV_EXTENSION:
            raise ValueError(f"cannot tell the modality of {name!r} from its extension "
                             f"({' '.join(query_extensions())})")
        with tempfile.TemporaryDirectory(prefix="one-peace-query-") as tmp:
            path = os.path.join(tmp, "query" + ext)  # the client's name is never a path here
            with open(path, "wb") as fh:
                fh.write(data)
            vector, modality = self.index.embed_file(path)
        return vector, {"modality": modality}

    def _vector_of(self, vid: int) -> Tuple[np.ndarray, Dict]:
        record = self.index.store.lookup([vid]).get(vid) if 0 <= vid < 2 ** 63 else None
        if record is None:
            raise ValueError(f"no vector with id {vid} in the index {self.index.dir}")
        about = {"id": vid, "path": record["path"], "modality": record["modality"]}
        if record.get("row") is not None:
            about["row"] = record["row"]
        return self.index.store.vector_of(vid, self.index.dim), about


def describe(terms: List[Dict]) -> Dict:
    """The ``query`` of an answer: one term of weight 1 as before (``{"text"}``, ``{"file", "modality"}``,
    ``{"id", "path", "modality"}``), several as ``{"terms": [... "weight" (negative: subtracted)]}``."""
    if len(terms) == 1 and terms[0]["weight"] == 1.0:
        return {k: v for k, v in terms[0].items() if k != "weight"}
    return {"terms": terms}


def query_line(query: Dict) -> str:
    """``2 × text 'a dog' + audio file bark.wav − text 'day'`` for the CLI's text output."""
    terms = query.get("terms") or [dict(query, weight=1.0)]
    parts = []
    for i, term in enumerate(terms):
        weight = term["weight"]
        sign = ("− " if weight < 0 else "+ ") if i else ("− " if weight < 0 else "")
        factor = "" if abs(weight) == 1 else f"{abs(weight):g} × "
        parts.append(sign + factor + term_name(term))
    return " ".join(parts)


def term_name(term: Dict) -> str:
    if "text" in term:
        return f"text {term['text']!r}"
    if "id" in term:
        return f"like #{term['id']} ({term['path']}{'' if term.get('row') is None else ':' + str(term['row'])})"
    return f"{term['modality']} file {term.get('file', '(upload)')}"


def single_query_terms(text: Optional[str], upload: Optional[Tuple[str, bytes]]) -> List[Term]:
    """The API's plain form: one text or one uploaded file."""
    if upload is not None:
        return [Term("upload", upload)]
    return [Term("text", text)] if text else []
