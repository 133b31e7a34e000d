"""``one-peace-serve``: a small web page and JSON API over an index.

    one-peace-serve INDEX_DIR [--port 8765] [--host 127.0.0.1] [--max-upload-mb 50]

Routes: ``GET /`` the page; ``GET /api/info`` (counts, the modalities with their search views);
``POST /api/search`` (JSON ``{"text", "terms", "like", "modalities", "k", "offset", filters...}`` or a
multipart form with ``file`` and the same fields) and ``GET /api/duplicates`` (``api_query.py``);
``GET /media/{id}`` and ``GET /thumb/{id}`` (modalities with an image or video view).

Security: bound to loopback unless ``--host`` says otherwise; requests must name an allowed Host
(the loopback names, ``--host`` and any ``--allowed-host``: a DNS-rebinding page cannot reach the server); files are addressed by
vector id only, never by path, and served only if recorded in the index and really (symlinks
resolved) under one of its roots; uploads past the limit get 413 and go to a temporary folder that
is removed after the query.
"""
import argparse
import asyncio
import io
import logging
import mimetypes
import os
import sys
import threading
from collections import OrderedDict

from ..models.modalities import modality_names
from .api_query import MAX_K, THUMB_VIEWS, QueryService, make_routes, parse_k  # noqa: F401 - parse_k: the API's
from .cli_checks import check_port, check_upload_mb
from .duplicates import DEFAULT_THRESHOLD
from .scan import display_order, query_extensions, under_root, view_of
from .searcher import SearchIndex

logger = logging.getLogger("one_peace.search.server")
DEFAULT_MAX_UPLOAD_MB = 50.0
THUMB_SIZE = 256
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
MAX_ID = 2 ** 63 - 1  # SQLite's integers: a larger id is no vector (and would overflow the query)
_SAFE_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=300"}


def host_names(host: str, extra=None) -> list:
    """Host header names accepted: the loopback names, the bound ``--host`` and every ``--allowed-host``."""
    names = []
    for name in LOOPBACK_NAMES + [host] + list(extra or []):
        if name not in names:
            names.append(name)
    return names


class Service:
    """What the routes share: the index, one lock for the model and SQLite, the thumbnail cache."""

    def __init__(self, index: SearchIndex, max_upload_bytes: int, default_k: int = 12):
        self.index, self.max_upload_bytes, self.default_k = index, max_upload_bytes, default_k
        self.lock = threading.Lock()
        self.roots = [os.path.realpath(r) for r in index.store.roots()]
        self._thumbs: OrderedDict[tuple, bytes] = OrderedDict()
        self.query = QueryService(index, self.lock, default_k)

    def info(self):
        with self.lock:
            counts = self.index.store.counts()
        model = self.index.model
        # Modalities and their views from the registry (read now: one registered after start-up counts too);
        # "modalities" are the indexed ones, in the page's order.
        shown = display_order(set(counts) | set(modality_names()))
        return {"index": self.index.dir, "counts": counts, "modalities": display_order(counts),
                "views": {m: view_of(m) for m in shown},
                "query_modalities": sorted(set(model["modalities"]) | {"text"}),
                "model": {"checkpoint": os.path.basename(model["checkpoint"]), "model_type": model["model_type"],
                          "dtype": model["dtype"], "dim": model["dim"]},
                "max_upload_bytes": self.max_upload_bytes,
                "accept": query_extensions(), "duplicate_threshold": DEFAULT_THRESHOLD}

    def servable(self, vid: int):
        """The record of vector ``vid`` if its file may be served, else None (-> 404) or "outside" (-> 403)."""
        if not 0 <= vid <= MAX_ID:
            return None
        with self.lock:
            record = self.index.store.lookup([vid]).get(vid)
        if record is None or not os.path.isfile(record["path"]):
            return None
        if not under_root(os.path.realpath(record["path"]), self.roots):
            return "outside"  # e.g. a symlink under a root pointing elsewhere
        return record

    def thumbnail(self, record) -> bytes:

        key = (record["id"], record["size"], record["mtime_ns"])
        if key in self._thumbs:
            self._thumbs.move_to_end(key)
            return self._thumbs[key]
        if view_of(record.get("file_modality") or record["modality"]) == "video":  # the poster: the first frame
            from ..data_utils.video import load_video

            image = load_video(record["path"], 1)[0]
        else:
            from ..data_utils.image import load_image

            image = load_image(record["path"])
        image.thumbnail((THUMB_SIZE, THUMB_SIZE))
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="JPEG", quality=85)
        self._thumbs[key] = buf.getvalue()
        while len(self._thumbs) > 512:
            self._thumbs.popitem(last=False)
        return self._thumbs[key]


def create_app(index: SearchIndex, max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2 ** 20),
               allowed_hosts=None):
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    from .page import PAGE

    service = Service(index, max_upload_bytes)

    def error(status: int, message: str):
        return JSONResponse({"error": message}, status_code=status)

    async def page(request):
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                                                      "style-src 'unsafe-inline'; img-src 'self' blob:; "
                                                                      "media-src 'self' blob:"})

    async def info(request):
        return JSONResponse(await run_in_threadpool(service.info))

    async def media(request):
        record = await run_in_threadpool(service.servable, request.path_params["vid"])
        if record is None:
            return error(404, "no such file in the index")
        if record == "outside":
            return error(403, "the file lies outside the index's roots")
        ctype = "text/plain; charset=utf-8" if view_of(record["modality"]) == "text" else \
            mimetypes.guess_type(record["path"])[0] or "application/octet-stream"
        return FileResponse(record["path"], media_type=ctype, headers=_SAFE_HEADERS)

    async def thumb(request):
        record = await run_in_threadpool(service.servable, request.path_params["vid"])
        if record is None or record != "outside" and view_of(record["modality"]) not in THUMB_VIEWS:
            return error(404, "no such image or video in the index")
        if record == "outside":
            return error(403, "the file lies outside the index's roots")
        try:
            data = await run_in_threadpool(service.thumbnail, record)
        except (ValueError, OSError) as exc:
            return error(404, f"cannot make a thumbnail: {exc}")
        return Response(data, media_type="image/jpeg", headers=_SAFE_HEADERS)

    routes = [Route("/", page), Route("/api/info", info),
              *make_routes(service.query, service.roots, max_upload_bytes, error),
              Route("/media/{vid:int}", media), Route("/thumb/{vid:int}", thumb)]
    hosts = allowed_hosts or LOOPBACK_NAMES
    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="one-peace-serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("index", help="index directory built by one-peace-index")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default loopback; anything else shares your files with the network)")
    parser.add_argument("--port", type=int, default=8765, help="1..65535 (default 8765)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help=f"largest query upload, above 0 (default {DEFAULT_MAX_UPLOAD_MB:g} MB; larger: 413)")
    parser.add_argument("--allowed-host", action="append",
                        help="a Host header name to accept besides the loopback names and --host (adds to them; "
                             "repeatable)")
    parser.add_argument("--checkpoint", help="the index's checkpoint at a new location")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--bpe-dir", default=None)
    return parser


def serve(app, host: str, port: int) -> None:
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning")
    asyncio.run(uvicorn.Server(config).serve())


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_port(args.port)
        check_upload_mb(args.max_upload_mb)
        index = SearchIndex(args.index, checkpoint=args.checkpoint, device=args.device, dtype=args.dtype,
                            bpe_dir=args.bpe_dir)
        index.hub  # noqa: B018 - load the model now: the first query should not wait for it
    except (ValueError, FileNotFoundError) as exc:
        print(f"one-peace-serve: error: {exc}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s: anyone who can reach it can query the index and read its files", args.host)
    app = create_app(index, max(1, int(args.max_upload_mb * 2 ** 20)), host_names(args.host, args.allowed_host))
    print(f"one-peace-serve: http://{args.host}:{args.port}/ ({index.dir})", file=sys.stderr, flush=True)
    serve(app, args.host, args.port)
    return 0


def cli_main():
    sys.exit(main())


if __name__ == "__main__":
    cli_main()
