"""Clean errors on the command line: a user's mistake (a missing file, a bad TSV row, a checkpoint of the
wrong kind) raised by our code is printed as one ``error:`` message, not a traceback users read as a crash.

``install()`` is called by ``user_src/registry.py`` when the process is one of the command-line tools; set
``ONE_PEACE_TRACEBACK=1`` for the full traceback.  Exceptions raised outside this package (fairseq,
torch) and every other exception type keep Python's traceback.
"""
import os
import sys
import traceback

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
TOOLS = ("fairseq-train", "fairseq-hydra-train", "one-peace-hydra-train", "one-peace-evaluate",
         "one-peace-index", "one-peace-search", "one-peace-serve", "one-peace-convert", "one-peace-export")
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, TypeError)


def raised_by_us(tb) -> bool:
    """The innermost frame is in this package (not in a library we called)."""
    frames = traceback.extract_tb(tb)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(PACKAGE_DIR + os.sep)


def _hook(exc_type, exc, tb):
    if issubclass(exc_type, USER_ERRORS) and raised_by_us(tb) and not os.environ.get("ONE_PEACE_TRACEBACK"):
        tool = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "one_peace"
        print(f"{tool}: error: {exc}\n(ONE_PEACE_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        return
    sys.__excepthook__(exc_type, exc, tb)


def install(force: bool = False) -> None:
    if force or (sys.argv and os.path.basename(sys.argv[0]) in TOOLS):
        sys.excepthook = _hook
