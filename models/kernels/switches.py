"""Which implementation the model uses: the switches for the fused kernels.

The Triton kernels have only run under Triton's CPU interpreter and an AOT compile
check, so the model never picks them on its own.  Three independent switches:

* ``ONE_PEACE_ATTENTION`` (or :func:`set_attention_impl`): ``auto`` (default), ``sdpa``,
  ``reference`` or ``fused``.  ``auto`` = ``sdpa``, or ``reference`` for float64 inputs
  and while attention dropout is active; ``fused`` = the Triton attention kernel, with
  the relative-position bias gathered in-kernel (see ``models/attention.py``).
* ``ONE_PEACE_LAYER_NORM`` (or :func:`set_layer_norm_impl`): ``auto`` (default) =
  ``torch`` (``F.layer_norm``), or ``fused`` = the Triton LayerNorm kernel.

* ``ONE_PEACE_CPU_FUSED`` (or :func:`set_cpu_fused_impl`): ``auto`` (default), ``torch`` or ``fused``:
  the C kernels of ``cpu_fused.c`` for elementwise chains on a CPU (GeGLU + sub-LayerNorm) and for the
  bf16 Adam step (``cpu_adam.py``).  They run
  wherever they have been tested (this project's CPUs), so ``auto`` = ``fused`` where they apply and the
  library builds, and ``torch`` with one warning where it does not build.

An explicit ``fused`` is a demand, not a hint: it raises when the kernel cannot run on
the inputs (CPU tensors without ``TRITON_INTERPRET=1``, float64, an unsupported
head_dim), so a run never silently measures or trains something else.

Modules resolve their implementation once (per device type, dtype and, for attention,
whether dropout is active) and cache it.  The environment variables are read when a
cache is filled; every ``set_*`` call and :func:`invalidate_kernel_caches` bump a global
version that makes every module resolve again on its next forward.  Call
:func:`invalidate_kernel_caches` after changing ``ONE_PEACE_ATTENTION``,
``ONE_PEACE_LAYER_NORM``, ``ONE_PEACE_CPU_FUSED`` or ``TRITON_INTERPRET`` inside a running process.
"""
import os
from typing import Optional

ATTENTION_ENV = "ONE_PEACE_ATTENTION"
LAYER_NORM_ENV = "ONE_PEACE_LAYER_NORM"
CPU_FUSED_ENV = "ONE_PEACE_CPU_FUSED"
ATTENTION_IMPLS = ("auto", "reference", "sdpa", "fused")
LAYER_NORM_IMPLS = ("auto", "torch", "fused")
CPU_FUSED_IMPLS = ("auto", "torch", "fused")

# Bumped by every change of a switch; modules compare it with the version of their cache.
version = 0
_forced = {"attention": None, "layer_norm": None, "cpu_fused": None}
_requested = {}  # (kind, version) -> resolved name, so the environment is read once per version


def invalidate_kernel_caches():
    """Make every module resolve its implementation again (re-reads the environment)."""
    global version
    version += 1
    _requested.clear()


def _check(impl: str, allowed, source: str) -> str:
    if impl not in allowed:
        raise ValueError(f"{source} must be one of {allowed}, got {impl!r}")
    return impl


def set_attention_impl(impl: Optional[str]):
    """Force the attention implementation for the process (None = back to the env var / auto)."""
    if impl is not None:
        _check(impl, ATTENTION_IMPLS, "attention impl")
    _forced["attention"] = impl
    invalidate_kernel_caches()


def set_layer_norm_impl(impl: Optional[str]):
    """Force the LayerNorm implementation for the process (None = back to the env var / auto)."""
    if impl is not None:
        _check(impl, LAYER_NORM_IMPLS, "layer norm impl")
    _forced["layer_norm"] = impl
    invalidate_kernel_caches()


def set_cpu_fused_impl(impl: Optional[str]):
    """Force the CPU fused kernels on (``fused``) or off (``torch``) for the process (None = env / auto)."""
    if impl is not None:
        _check(impl, CPU_FUSED_IMPLS, "cpu fused impl")
    _forced["cpu_fused"] = impl
    invalidate_kernel_caches()


def _requested_impl(kind: str, env: str, allowed) -> str:
    key = (kind, version)
    impl = _requested.get(key)
    if impl is None:
        impl = _forced[kind]
        if impl is None:
            impl = _check(os.environ.get(env, "auto").strip().lower() or "auto", allowed, env)
        _requested[key] = impl
    return impl


def requested_attention_impl() -> str:
    """The requested attention implementation: one of ``ATTENTION_IMPLS``."""
    return _requested_impl("attention", ATTENTION_ENV, ATTENTION_IMPLS)


def requested_layer_norm_impl() -> str:
    """The requested LayerNorm implementation: one of ``LAYER_NORM_IMPLS``."""
    return _requested_impl("layer_norm", LAYER_NORM_ENV, LAYER_NORM_IMPLS)


def requested_cpu_fused_impl() -> str:
    """The requested implementation of the CPU elementwise chains: one of ``CPU_FUSED_IMPLS``."""
    return _requested_impl("cpu_fused", CPU_FUSED_ENV, CPU_FUSED_IMPLS)
