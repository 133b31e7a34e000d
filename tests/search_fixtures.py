"""Fixtures of the search tests (``pytest_plugins = ["search_fixtures"]``): the checkpoint, an index
of the shared media plus a generated collection, and a real one-peace-serve on a free loopback port."""
import contextlib
import io
import json

import pytest
from helpers import MEDIA, require
from search_helpers import UPLOAD_LIMIT, LiveServer, make_collection, write_checkpoint


@pytest.fixture(scope="module")
def search_checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("search_ckpt") / "retrieval.pt")


@pytest.fixture(scope="module")
def built_index(tmp_path_factory, search_checkpoint, fixture_bpe_dir):
    """(index dir, collection dir, first summary) over the shared media + the generated collection."""
    from one_peace.search.indexer import main

    base = tmp_path_factory.mktemp("search")
    collection = make_collection(base / "collection", base / "outside")
    index = base / "index"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(index), str(require(MEDIA)), str(collection), "--checkpoint", search_checkpoint,
                     "--bpe-dir", fixture_bpe_dir, "--batch-size", "3", "--json", "--progress", "none"])
    assert code == 0, out.getvalue()
    return index, collection, json.loads(out.getvalue())


@pytest.fixture(scope="module")
def live_server(built_index):
    from one_peace.search.searcher import SearchIndex
    from one_peace.search.server import create_app

    index, _, _ = built_index
    with LiveServer(create_app(SearchIndex(str(index)), max_upload_bytes=UPLOAD_LIMIT)) as server:
        yield server
