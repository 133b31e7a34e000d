"""Media search over a ONE-PEACE embedding index: ``one-peace-index``, ``one-peace-search``,
``one-peace-serve`` (``docs/SEARCH.md``).

``scan`` finds the files, ``embed`` loads the checkpoint and embeds them, ``store`` keeps the SQLite
metadata, vectors and the faiss indexes, ``indexer`` / ``query`` / ``server`` are the three commands.
"""
