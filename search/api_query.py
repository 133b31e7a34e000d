"""The query routes of ``one-peace-serve``: ``POST /api/search`` (compound terms, filters, pages, more
like this) and ``GET /api/duplicates`` (``threshold``, ``modalities`` and the filters as query parameters,
``folder`` repeatable); request parsing shared with nothing else (``server.py`` holds
the app, the page, the files and the security).

``POST /api/search`` takes JSON or a form (multipart for files; in a form, ``terms``, ``folder`` and
``modalities`` may be JSON text).  Keys (all optional but a query):

* ``text`` (a string), a form's ``file`` (one upload), ``like`` (a vector id: more like this), and
  ``terms``: ``[{"text": ...} | {"id": N} | {"upload": FIELD}, with "weight" (> 0) and "minus"]``, an
  upload naming the multipart field that holds it.  All of them add up (``compound.py``).
* ``modalities``, ``k`` / ``limit`` (page size, 1..1000), ``offset`` (0..), ``min_score``;
* filters: ``folder`` (a path or a list), ``since``, ``until``, ``min_size``, ``max_size``,
  ``min_duration``, ``max_duration`` (``filters.py``).
"""
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .compound import Term, TermEmbedder, parse_api_terms
from .duplicates import DEFAULT_THRESHOLD, find_duplicates
from .filters import Filters, make_filters, parse_min_score
from .query import parse_modalities
from .ranking import MAX_DEPTH
from .scan import view_of

MAX_K = 1000
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
THUMB_VIEWS = ("image", "video")  # search views (``Modality.search_view``) shown with a thumbnail / poster
FILTER_KEYS = ("folder", "since", "until", "min_size", "max_size", "min_duration", "max_duration")
KNOWN_KEYS = {"text", "terms", "like", "modalities", "k", "limit", "offset", "min_score", *FILTER_KEYS}


class UploadTooLarge(Exception):
    pass


async def read_limited(request, limit: int) -> bytes:
    """The request body, refused (UploadTooLarge) as soon as it passes ``limit`` bytes: a declared
    Content-Length is checked first, a chunked body while it arrives."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadTooLarge()
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise UploadTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def replayed(request, body: bytes):
    """A Request over an already read body (so the form parser never reads past the limit)."""
    from starlette.requests import Request

    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


def parse_k(value, default: int, name: str = "k", low: int = 1, high: int = MAX_K) -> int:
    """A whole number in ``low..high`` (a JSON number or a form's string), else ValueError naming ``name``."""
    if value is None or value == "":
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number between {low} and {high}, got {value!r}")
    return value


@dataclass
class SearchRequest:
    terms: List[Term]
    modalities: List[str]
    limit: int
    offset: int
    filters: Filters
    min_score: Optional[float]


def _json_field(value, name: str):
    """A form field that may carry JSON (a list); plain text stays text."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            raise ValueError(f"{name} is not valid JSON: {value[:80]!r}") from None
    return value


def parse_search(fields: Dict, uploads: Dict[str, Tuple[str, bytes]], roots: List[str], default_k: int,
                 form: bool) -> SearchRequest:
    """A search request from a JSON object or a form's fields (``uploads``: field -> (name, bytes))."""
    unknown = sorted(set(fields) - KNOWN_KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(KNOWN_KEYS))})")
    if form:
        fields = {k: _json_field(v, k) if k in ("terms", "folder", "modalities") else v for k, v in fields.items()}
    terms = []
    text = fields.get("text")
    if text is not None and not isinstance(text, str):
        raise ValueError("text must be a string")
    if text:
        terms.append(Term("text", text))
    if "file" in uploads:
        terms.append(Term("upload", uploads["file"]))
    if fields.get("like") not in (None, ""):
        terms.append(Term("id", parse_k(fields["like"], 0, "like", 0, 2 ** 63 - 1)))
    if fields.get("terms") not in (None, ""):
        terms += parse_api_terms(fields["terms"], uploads)
    if not terms:
        raise ValueError("give a query: a text, a file, like (a result's id) or terms")
    modalities = fields.get("modalities")
    if isinstance(modalities, list):
        modalities = ",".join(str(m) for m in modalities)
    if modalities is not None and not isinstance(modalities, str):
        raise ValueError(f"modalities must be a list of names or a comma-separated string, got {modalities!r}")
    limit = parse_k(fields.get("limit", fields.get("k")), default_k, "k" if "k" in fields else "limit")
    offset = parse_k(fields.get("offset"), 0, "offset", 0, MAX_DEPTH - limit)
    filters = make_filters(roots, **{k: fields.get(k) for k in FILTER_KEYS})
    return SearchRequest(terms, parse_modalities(modalities), limit, offset, filters,
                         parse_min_score(fields.get("min_score")))


def decorate(hit: Dict) -> Dict:
    """What the page needs to show a hit: its view, the URLs of its file and thumbnail, a short name."""
    hit["url"] = f"/media/{hit['id']}"
    hit["view"] = view_of(hit["modality"])  # the page renders a hit by its view, not its name
    if hit["view"] in THUMB_VIEWS and view_of(hit.get("file_modality") or hit["modality"]) in THUMB_VIEWS:
        hit["thumb_url"] = f"/thumb/{hit['id']}"
    hit["name"] = os.path.basename(hit["path"]) + (f":{hit['row']}" if hit.get("row") else "")
    return hit


class QueryService:
    """Searches and duplicate groups for the routes (``lock``: the server's, around the model and SQLite)."""

    def __init__(self, index, lock, default_k: int):
        self.index, self.lock, self.default_k = index, lock, default_k
        self.embedder = TermEmbedder(index, cache_size=64)  # "more" asks for the same query again

    def search(self, request: SearchRequest) -> Dict:
        with self.lock:
            vector, query = self.embedder.embed(request.terms)
            results, pages = self.index.search_pages(vector, request.modalities, request.limit, request.offset,
                                                     request.filters, request.min_score)
        for hits in results.values():
            for hit in hits:
                decorate(hit)
        out = {"query": query, "results": results, "pages": pages}
        if request.filters.active() or request.min_score is not None:
            out["filters"] = dict(request.filters.to_dict(),
                                  **({} if request.min_score is None else {"min_score": request.min_score}))
        return out

    def duplicates(self, threshold, modalities, filters: Optional[Filters] = None) -> Dict:
        with self.lock:
            out = find_duplicates(self.index, modalities, threshold, filters)
        for groups in out["groups"].values():
            for group in groups:
                for entry in group:
                    decorate(entry)
        return out


def make_routes(service: QueryService, roots: List[str], max_upload_bytes: int, error):
    """The routes of ``/api/search`` and ``/api/duplicates`` (``error(status, message)`` answers an error)."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def search(request):
        try:
            body = await read_limited(request, max_upload_bytes)
        except UploadTooLarge:
            return error(413, f"upload larger than the limit of {max_upload_bytes} bytes (--max-upload-mb)")
        ctype = request.headers.get("content-type", "")
        try:
            uploads = {}
            if ctype.startswith(FORM_TYPES):  # the page's file queries; a plain form of fields works too
                form = await replayed(request, body).form()
                fields = {}
                for key, value in form.multi_items():
                    if isinstance(value, str):
                        fields[key] = value
                    else:
                        uploads[key] = (value.filename or "upload", await value.read())
                fields = {k: v for k, v in fields.items() if k not in uploads}
            else:
                try:
                    fields = json.loads(body or b"{}")
                except ValueError:
                    raise ValueError(f"expected a JSON body ({{\"text\", \"modalities\", \"k\"}}) or a "
                                     f"multipart form (file, modalities, k); got {ctype or 'no Content-Type'} "
                                     "that is not JSON") from None
                if not isinstance(fields, dict):
                    raise ValueError("the JSON body must be an object")
            parsed = parse_search(fields, uploads, roots, service.default_k, form=bool(uploads) or
                                  ctype.startswith(FORM_TYPES))
            result = await run_in_threadpool(service.search, parsed)
        except (ValueError, FileNotFoundError) as exc:
            return error(400, str(exc))
        return JSONResponse(result)

    async def duplicates(request):
        params = request.query_params
        try:
            raw = params.get("threshold")
            try:
                threshold = DEFAULT_THRESHOLD if raw in (None, "") else float(raw)
            except ValueError:
                raise ValueError(f"threshold must be a number, got {raw!r}") from None
            modalities = parse_modalities(params.get("modalities"))
            unknown = sorted(set(params) - {"threshold", "modalities", *FILTER_KEYS})
            if unknown:
                raise ValueError(f"unknown parameter {unknown[0]!r} (known: threshold, modalities, "
                                 f"{', '.join(FILTER_KEYS)})")
            filters = make_filters(roots, folder=params.getlist("folder") or None,
                                   **{k: params.get(k) for k in FILTER_KEYS if k != "folder"})
            result = await run_in_threadpool(service.duplicates, threshold, modalities, filters)
        except ValueError as exc:
            return error(400, str(exc))
        return JSONResponse(dict(result, threshold=threshold))

    return [Route("/api/search", search, methods=["POST"]), Route("/api/duplicates", duplicates)]
