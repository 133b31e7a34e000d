"""A tar member's bytes as a file for the media decoders, which take paths (``shard_dataset.py``).

The file goes to a RAM folder (``/dev/shm``) where there is one.  Where that folder is full -- Docker gives
a container 64 MB of it by default, less than one long video -- the file goes to the system's temporary
folder instead of the sample being skipped as bad.  A worker killed while it decodes cannot remove its file:
the first member file of each process removes the files of processes that no longer run and that are older
than any decode takes (``STALE_SECONDS``; a folder shared between PID namespaces may show a live process of
another namespace as gone, and its files are seconds old).
"""
import contextlib
import errno
import glob
import os
import tempfile
import time
from typing import Iterator, List, Optional

PREFIX = "one_peace_shard_"
STALE_SECONDS = 600
_swept_in: Optional[int] = None  # the process (pid) that has removed stale files already


def scratch_dirs() -> List[Optional[str]]:
    """Where member files go, in order of preference (``None``: the system's temporary folder)."""
    shm = "/dev/shm"
    return ([shm] if os.path.isdir(shm) and os.access(shm, os.W_OK) else []) + [None]


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_stale_files(directory: Optional[str]) -> int:
    """Removes the member files in ``directory`` left by processes that no longer run; returns their count."""
    removed, now = 0, time.time()
    for path in glob.glob(os.path.join(directory or tempfile.gettempdir(), PREFIX + "*")):
        pid = os.path.basename(path)[len(PREFIX):].split("_", 1)[0]
        try:
            if pid.isdigit() and not _running(int(pid)) and now - os.path.getmtime(path) > STALE_SECONDS:
                os.unlink(path)
                removed += 1
        except OSError:
            pass  # removed meanwhile, or not ours to remove
    return removed


def _write(data: bytes, suffix: str) -> str:
    global _swept_in
    dirs = scratch_dirs()
    if _swept_in != os.getpid():
        _swept_in = os.getpid()
        for directory in dirs:
            remove_stale_files(directory)
    for i, directory in enumerate(dirs):
        path = None
        try:  # a full tmpfs can refuse the file itself (no inodes left) or its bytes
            fd, path = tempfile.mkstemp(prefix=f"{PREFIX}{os.getpid()}_", suffix=suffix, dir=directory)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            return path
        except OSError as err:
            if path is not None:
                os.unlink(path)
            if err.errno not in (errno.ENOSPC, errno.EDQUOT) or i == len(dirs) - 1:
                raise
    raise AssertionError("unreachable: the last folder raises")


@contextlib.contextmanager
def member_file(data: bytes, name: str) -> Iterator[str]:
    """``data`` as a file for the media decoders (removed afterwards); errors raised while it is used name
    ``name`` (the tar member) instead of the scratch file."""
    path = _write(data, os.path.splitext(name)[1])
    try:
        try:
            yield path
        except (FileNotFoundError, ValueError, OSError, KeyError) as err:
            message = str(err)
            if path not in message:
                raise
            raise ValueError(message.replace(path, name)) from None
    finally:
        os.unlink(path)
