"""fairseq user dir: ``fairseq-train --user-dir user_src ...`` (from the repository root).

fairseq imports this folder as a top-level module named ``user_src``; all registration
goes through the installed package ``one_peace`` so that importing both (the user dir
and the package) never registers anything twice.
"""
from one_peace.user_src import registry  # noqa: F401
