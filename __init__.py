"""ONE-PEACE as a fairseq user-dir plugin (package name ``one_peace``).

The repository root is the package root, in layers (``docs/ARCHITECTURE.md``):

* ``one_peace.models``, ``one_peace.data_utils``, ``one_peace.metrics``: the plain-torch core;
* ``one_peace.hub``: inference (``from one_peace import from_pretrained``), on the core alone;
* ``one_peace.fairseq_glue``, ``one_peace.tasks``, ``one_peace.criterions``, ``one_peace.optim``: the fairseq
  layer (``fairseq-train --user-dir user_src`` imports ``one_peace.user_src.registry``);
* ``one_peace.search`` and the command-line tools on top.
"""

__version__ = "0.1.0"
__all__ = ["from_pretrained", "OnePeaceHubInterface"]


def __getattr__(name):
    # Lazy, so that ``import one_peace.<layer>`` does not load the hub (and torch) first.
    if name in __all__:
        from . import hub

        return getattr(hub, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
