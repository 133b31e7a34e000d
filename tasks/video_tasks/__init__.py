"""Video tasks (``docs/VIDEO.md``)."""
