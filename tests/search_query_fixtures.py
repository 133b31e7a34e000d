"""Fixtures of the query-side search tests (``pytest_plugins = ["search_fixtures", "search_query_fixtures"]``;
the checkpoint comes from the first): one index of ``search_query_helpers.make_library`` per test module, and
a live one-peace-serve over it."""
import contextlib
import io

import pytest
from search_helpers import LiveServer
from search_query_helpers import make_library


@pytest.fixture(scope="module")
def query_index(tmp_path_factory, search_checkpoint, fixture_bpe_dir):
    """(index dir, library dir) of :func:`make_library`, built with the test checkpoint.  While the module
    runs, one-peace-search in this process loads the model once (each call would load it again)."""
    from one_peace.search import searcher
    from one_peace.search.indexer import main

    base = tmp_path_factory.mktemp("query_search")
    library = make_library(base / "library")
    index = base / "index"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(index), str(library), "--checkpoint", search_checkpoint, "--bpe-dir", fixture_bpe_dir,
                     "--json", "--progress", "none"])
    assert code == 0, out.getvalue()
    loaded, load = {}, searcher.load_hub

    def load_once(*args):
        key = repr(args)
        if key not in loaded:
            loaded[key] = load(*args)
        return loaded[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(searcher, "load_hub", load_once)
        yield index, library


@pytest.fixture(scope="module")
def query_server(query_index):
    from one_peace.search.searcher import SearchIndex
    from one_peace.search.server import create_app

    with LiveServer(create_app(SearchIndex(str(query_index[0])), max_upload_bytes=2_000_000)) as server:
        yield server
