"""Freed host memory is reused, not faulted in again (models/host_memory.py, issue #28): a job that allocates
and frees the same blocks step after step stops paying a page fault per page per step."""
import os
import platform
import subprocess
import sys

import pytest

from one_peace.models import host_memory

# A training step in small: activations of 8 x 16 MiB and one 80 MiB block (above glibc's 32 MiB mmap ceiling, like
# the text embedding's dense gradient) allocated, touched and all freed at the end, 10 times after 5 steps that let
# the heap settle.  Prints whether the settings are in force, then the page faults of the 10 steps, once through
# malloc itself (nothing else allocates in between: glibc's own behaviour, deterministic) and once as torch tensors
# (torch's small allocations in between can shield glibc's defaults from trimming).
PROBE = """
import ctypes, resource, torch
from one_peace.models.host_memory import keep_freed_host_memory
print(keep_freed_host_memory())
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
SIZES = [16 << 20] * 8 + [80 << 20]

def malloc_step():
    blocks = [libc.malloc(size) for size in SIZES]
    for block, size in zip(blocks, SIZES):
        ctypes.memset(block, 1, size)
    for block in blocks:
        libc.free(ctypes.c_void_p(block))

def torch_step():
    activations = [torch.empty(size // 4).fill_(1.0) for size in SIZES]
    del activations

for step in (malloc_step, torch_step):
    for _ in range(5):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults_of_10_steps(**env):
    clean = {k: v for k, v in os.environ.items() if k not in ("ONE_PEACE_MALLOC", "GLIBC_TUNABLES")
             and not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    pages = 10 * (8 * (16 << 20) + (80 << 20)) // os.sysconf("SC_PAGE_SIZE")
    applied, malloc_kept, torch_kept = faults_of_10_steps()
    assert applied
    assert malloc_kept < pages // 20 and torch_kept < pages // 20
    left_alone, malloc_system, _ = faults_of_10_steps(ONE_PEACE_MALLOC="system")
    assert not left_alone
    assert malloc_system > pages // 2  # glibc gives the freed heap back at the end of each step: it faults in again
    # a user's own malloc tuning is left as it is
    assert faults_of_10_steps(MALLOC_MMAP_THRESHOLD_="131072")[0] is False


def test_a_bad_choice_names_the_variable(monkeypatch):
    monkeypatch.setenv("ONE_PEACE_MALLOC", "jemalloc")
    with pytest.raises(ValueError, match="ONE_PEACE_MALLOC='jemalloc': expected one of keep, system"):
        host_memory.requested()
