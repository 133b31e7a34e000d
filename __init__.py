"""ONE-PEACE as a fairseq user-dir plugin (package name ``one_peace``).

The repository root is the package root: ``one_peace.models`` is ``models/``,
``one_peace.tasks`` is ``tasks/`` and so on.  The model core (``models/``) is
plain PyTorch and imports without fairseq; registration with fairseq happens in
``one_peace.registry`` (imported by the user dir ``user_src/``).
"""

__version__ = "0.1.0"
