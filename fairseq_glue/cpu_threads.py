"""Torch threads for CPU training processes that share one machine.

Each process of a CPU run starts with one torch thread per core.  Two ``fairseq-train --distributed-no-spawn``
processes on a 2-core machine (the README's example) then run four threads on two cores, and their barriers
wait on each other: the README's 20 updates took 4x longer than with one thread each.  torchrun avoids this
by setting ``OMP_NUM_THREADS=1``; a manual launch did not.  So a process of a CPU run whose processes on this
machine are known -- ``LOCAL_WORLD_SIZE`` (torchrun), ``SLURM_NTASKS_PER_NODE``, or a loopback
``--distributed-init-method`` (all ranks here) -- takes its share of the cores it may run on.
``OMP_NUM_THREADS``, when set, is the user's choice and is kept.
"""
import ipaddress
import logging
import os
from typing import Optional
from urllib.parse import urlparse

import torch

logger = logging.getLogger(__name__)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def processes_on_this_machine(cfg) -> Optional[int]:
    """How many processes of this run share this machine, where that is known; else None."""
    for variable in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = os.environ.get(variable, "")
        if value.isdigit():  # SLURM writes "2(x3)" for unequal nodes: not used
            return int(value)
    method = cfg.distributed_training.distributed_init_method or ""
    host = urlparse(method).hostname if method.startswith("tcp://") else None
    if host and _loopback(host):
        return cfg.distributed_training.distributed_world_size
    return None


def trains_on_cpu(common) -> bool:
    """fairseq's rule: a run trains on the CPU with ``--cpu`` (``common.cpu``) or when torch sees no CUDA device
    (``common``: the config's ``common`` group, or fairseq-train's parsed flags)."""
    return bool(getattr(common, "cpu", False)) or not torch.cuda.is_available()


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def share_cores(cfg) -> Optional[int]:
    """Sets this process's torch threads to its share of the cores in a CPU run of several processes on this
    machine; returns the new count, or None where nothing was changed."""
    if cfg.distributed_training.distributed_world_size <= 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    if not trains_on_cpu(cfg.common):
        return None
    local = processes_on_this_machine(cfg)
    if not local or local <= 1:
        return None
    threads = max(1, usable_cores() // local)
    if threads >= torch.get_num_threads():
        return None
    torch.set_num_threads(threads)
    logger.info("%d training processes on this machine: %d torch thread(s) each (set OMP_NUM_THREADS to choose)",
                local, threads)
    return threads
