"""Triton import guard and selection between compiled and interpreted kernels.

``@triton.jit`` decides at *decoration* time whether a kernel is compiled or run by
Triton's CPU interpreter (``TRITON_INTERPRET=1``).  A process that imported the
kernels before the variable was set (pytest collecting several modules, say) would
otherwise be stuck with the wrong kind.  The kernel definitions therefore live in
modules that import nothing but triton, and :func:`kernel_module` executes such a
module once per mode, with the interpreter switched on or off while its decorators
run.  The host code asks for the mode that is requested *at launch time*.
"""
import contextlib
import importlib.util
import os
import threading

try:  # triton is optional: without it every public entry point falls back to torch
    import triton  # noqa: F401

    _HAS_TRITON = True
except Exception:  # ImportError, or a broken install raising something else
    triton = None
    _HAS_TRITON = False

_ENV = "TRITON_INTERPRET"
_lock = threading.Lock()
_modules = {}


def triton_available() -> bool:
    """Whether triton can be imported (kernels may still be unsupported for an input)."""
    return _HAS_TRITON


def interpret_requested() -> bool:
    """Whether Triton's interpreter is requested right now (TRITON_INTERPRET=1)."""
    if not _HAS_TRITON:
        return False
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:  # triton >= 3.4 reads the env var through its knobs
        return bool(knobs.runtime.interpret)
    return os.environ.get(_ENV, "0").lower() in ("1", "true", "on", "yes")


@contextlib.contextmanager
def _interpret_mode(enabled: bool):
    knobs = getattr(triton, "knobs", None)
    had_override = knobs is not None and "interpret" in knobs.runtime.__dict__
    old_override = knobs.runtime.__dict__.get("interpret") if knobs is not None else None
    old_env = os.environ.get(_ENV)
    os.environ[_ENV] = "1" if enabled else "0"
    if knobs is not None:
        knobs.runtime.__dict__.pop("interpret", None)  # let the env var decide
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = old_env
        if had_override:
            knobs.runtime.__dict__["interpret"] = old_override


def kernel_module(name: str, interpret: bool):
    """The kernel-definition module ``name``, decorated for the requested mode."""
    if not _HAS_TRITON:
        raise RuntimeError("triton is not installed")
    key = (name, bool(interpret))
    with _lock:
        module = _modules.get(key)
        if module is None:
            spec = importlib.util.find_spec(name)
            if spec is None or spec.origin is None:
                raise ImportError(f"cannot locate kernel module {name}")
            suffix = "_interpreted" if interpret else "_compiled"
            copy_spec = importlib.util.spec_from_file_location(name + suffix, spec.origin)
            module = importlib.util.module_from_spec(copy_spec)
            with _interpret_mode(interpret):
                copy_spec.loader.exec_module(module)
            _modules[key] = module
    return module


def launch_context(tensor):
    """Device guard for a launch (triton launches on the *current* CUDA device)."""
    if tensor.is_cuda:
        import torch

        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()
