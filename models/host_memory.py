"""Freed host memory kept for reuse by glibc's allocator, so training steps stop page-faulting.

torch allocates CPU tensors with ``malloc`` and has no caching allocator on the host.  glibc serves blocks
above its mmap threshold (128 KiB, rising to the size of blocks freed, at most 32 MiB) with a fresh ``mmap``
each and unmaps them on ``free``, and it gives the top of the heap back to the kernel whenever more than
its trim threshold (twice the mmap threshold) is free there.  The end of a training step frees most of the
step's activations and gradients at once, so the next step faults them in and the kernel zeroes them page
by page, every step: in a run of ``bench/pretrain.py`` (base, stage 1) 5 million minor faults and 13-15% of
the process's CPU time in the kernel.

:func:`keep_freed_host_memory` makes the heap serve every block (no ``mmap`` per block: ``M_MMAP_MAX`` 0)
and sets the trim threshold to 2 GiB, so freed memory stays in the heap for the next step, like the CUDA
caching allocator.  Blocks above glibc's 32 MiB mmap ceiling matter too: the dense gradient of the text
embedding table ([50264, 768], 77-154 MB) is allocated and zeroed afresh every step.  Measured at base size
(``docs/BENCHMARKS.md``, issue #28): the mmap ceiling alone made stage-1 steps 1.11-1.32x faster; serving the
large blocks from the heap too took the page faults per step from up to 26,000 (stage 1, fp32) and 190,000
(stage 2, fp32) to a few thousand, for another 1.00-1.09x, at about the same peak RSS.  The process keeps its
peak heap until it exits, which is what a training or indexing job does anyway; a block larger than a thread
arena's heap still comes from ``mmap`` (glibc falls back to it).

Applied by the fairseq tasks (``fairseq-train``, evaluation) and ``one-peace-index``, not by importing the
hub.  It leaves the allocator alone off glibc, when ``ONE_PEACE_MALLOC=system``, and when the user tuned
glibc's malloc already (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_TOP_PAD_``, ``glibc.malloc.*`` in ``GLIBC_TUNABLES``).
"""
import ctypes
import logging
import os
import platform

logger = logging.getLogger(__name__)

ENV = "ONE_PEACE_MALLOC"
CHOICES = ("keep", "system")
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # <malloc.h>
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def requested() -> str:
    """``ONE_PEACE_MALLOC``: keep (the default) or system; anything else is an error naming the variable."""
    value = os.environ.get(ENV, "keep").strip().lower() or "keep"
    if value not in CHOICES:
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected one of {', '.join(CHOICES)}")
    return value


def user_tuned_malloc() -> bool:
    return any(name in os.environ for name in USER_SETTINGS) or "glibc.malloc." in os.environ.get(
        "GLIBC_TUNABLES", "")


def keep_freed_host_memory() -> bool:
    """Makes glibc serve every block from its heap and keep freed ones there for reuse (see the module).
    Returns whether the settings are in force; calling it again sets the same values."""
    if requested() != "keep" or user_tuned_malloc() or platform.system() != "Linux" \
            or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError) as exc:  # a libc without mallopt: leave it as it is
        logger.debug("mallopt unavailable: %s", exc)
        return False
