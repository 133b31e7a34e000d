"""Builds ``cpu_fused.c`` with the machine's C compiler on first use and loads it through ctypes.

The library is built for this machine (``-march=native``) into a cache folder keyed by the source, the
compiler's version, the flags and the CPU: ``$ONE_PEACE_KERNEL_CACHE``, else
``$XDG_CACHE_HOME/one_peace/cpu_kernels`` (``~/.cache/...``).  Builds go to a temporary name and are
renamed into place, so ranks that build at once do not read a half-written file.

Flag sets are tried from the fastest down (OpenMP and native instructions, then without each), because
compilers differ (Apple clang has no ``-fopenmp``; some targets reject ``-march=native``).  A loaded
library is checked against torch on a small input before it is used (:func:`load`).  Nothing here
builds at import time.
"""
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from typing import Optional

from . import switches

logger = logging.getLogger(__name__)

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_fused.c")
CACHE_ENV = "ONE_PEACE_KERNEL_CACHE"
# -fno-trapping-math lets the compiler turn the loops' selects into SIMD blends (without it the GELU loop stays
# scalar, 3x slower than torch); -fno-math-errno keeps sqrtf / floorf inline.  Neither changes a result.
_BASE_FLAGS = ["-O3", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math"]
_FLAG_SETS = (["-march=native", "-fopenmp"], ["-fopenmp"], ["-march=native"], [])

_lock = threading.Lock()
_loaded = {}  # "lib" -> ctypes.CDLL, or "error" -> why it could not be built or loaded
_passed = set()  # the checks the loaded library passed
_warned = set()  # (kernels, reason) already logged by without_library


class KernelBuildError(RuntimeError):
    """The C compiler is missing or every flag set failed; the message has the compiler's output."""


def cache_dir() -> str:
    root = os.environ.get(CACHE_ENV)
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                            "one_peace", "cpu_kernels")
    return root


def compiler() -> Optional[str]:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _cpu_identity() -> str:
    # -march=native code must not run on another CPU that shares the cache folder (a home on NFS).
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features"))][:2]
    except OSError:
        lines = []
    return platform.machine() + platform.processor() + "".join(lines)


def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def build(cc: Optional[str] = None) -> str:
    """Path of the built library for this machine, building it if the cache does not hold it."""
    cc = cc or compiler()
    if cc is None or shutil.which(cc) is None:
        raise KernelBuildError(f"no C compiler{'' if cc is None else ' ' + repr(cc)} found "
                               "(set CC, or install gcc or clang)")
    with open(SOURCE, "rb") as f:
        source = f.read()
    errors = []
    version = _compiler_version(cc)
    for extra in _FLAG_SETS:
        flags = _BASE_FLAGS + extra
        key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(flags).encode(),
                                         _cpu_identity().encode()])).hexdigest()[:20]
        target = os.path.join(cache_dir(), f"cpu_fused_{key}.so")
        if os.path.exists(target):
            return target
        try:
            os.makedirs(cache_dir(), exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir())
            os.close(fd)
        except OSError as e:
            raise KernelBuildError(f"cannot write the kernel cache {cache_dir()} (set {CACHE_ENV}): {e}") from e
        try:
            done = subprocess.run([cc, *flags, "-o", tmp, SOURCE, "-lm"], capture_output=True, text=True,
                                  timeout=300)
            if done.returncode == 0:
                os.replace(tmp, target)
                return target
            errors.append(f"{cc} {' '.join(flags)}: {done.stderr.strip()[-2000:]}")
        except (OSError, subprocess.SubprocessError) as e:
            errors.append(f"{cc} {' '.join(flags)}: {e}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise KernelBuildError("could not build " + SOURCE + ":\n" + "\n".join(errors))


# Each kernel's leading pointer arguments; then rows, width, (eps for a forward), threads.
_POINTERS = {"geglu_norm_forward": 7, "geglu_norm_backward": 10, "norm_gelu_forward": 6, "norm_gelu_backward": 9}


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    for name, pointers in _POINTERS.items():
        eps = [ctypes.c_float] if name.endswith("forward") else []
        for dtype in ("f32", "bf16"):
            function = getattr(lib, f"{name}_{dtype}")
            function.argtypes = [ctypes.c_void_p] * pointers + [ctypes.c_int64, ctypes.c_int64, *eps, ctypes.c_int]
            function.restype = None
    lib.adam_step_bf16.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 6 + [ctypes.c_float] * 8 + [ctypes.c_int]
    lib.adam_step_bf16.restype = None
    lib.sum_squares_bf16.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 3 + [ctypes.c_int]
    lib.sum_squares_bf16.restype = None
    return lib


def load(check=None) -> ctypes.CDLL:
    """The loaded library (built once per process); raises ``KernelBuildError`` with the reason.

    ``check(lib)`` runs once per process and check on the loaded library, and raises if the library computes
    something else than torch (a miscompile).  Each group of kernels (``cpu_fused.py``, ``cpu_adam.py``) passes
    its own; a failure of any is remembered like a failed build, for every kernel.
    """
    lib = _loaded.get("lib")
    if lib is not None and (check is None or check in _passed):  # every kernel call asks: no lock then
        return lib
    with _lock:
        if "error" in _loaded:
            raise KernelBuildError(_loaded["error"])
        if "lib" not in _loaded:
            try:
                _loaded["lib"] = _declare(ctypes.CDLL(build()))
            except (KernelBuildError, OSError, AttributeError) as e:
                _loaded["error"] = str(e)
                raise KernelBuildError(str(e)) from e
        lib = _loaded["lib"]
        if check is not None and check not in _passed:
            try:
                check(lib)
            except AssertionError as e:  # a miscompile: none of the library's kernels is trusted
                _loaded.clear()
                _loaded["error"] = str(e)
                raise KernelBuildError(str(e)) from e
            _passed.add(check)
        return lib


def library_problem(check) -> Optional[str]:
    """None when the library is built, loaded and passes ``check``; else why not, for the switch's messages."""
    try:
        load(check)
        return None
    except KernelBuildError as e:
        return f"the library could not be built or loaded: {e}"


def demanded_but(reason: str) -> RuntimeError:
    """The error for a call that ``ONE_PEACE_CPU_FUSED=fused`` demands a kernel for and that cannot take one."""
    return RuntimeError(f"{switches.CPU_FUSED_ENV}=fused (or set_cpu_fused_impl('fused')) but {reason}")


def without_library(reason: str, impl: str, kernels: str) -> bool:
    """A caller's answer where the library is unusable (``reason`` from :func:`library_problem`): raises under the
    switch's ``fused``; otherwise logs one warning per ``kernels`` and reason, and returns False (torch's ops)."""
    if impl == "fused":
        raise demanded_but(reason)
    if (kernels, reason) not in _warned:
        _warned.add((kernels, reason))
        logger.warning("%s off, torch's ops instead: %s", kernels, reason)
    return False


def forget():
    """Drop the loaded state and the warnings given (tests: build again, with another compiler or cache)."""
    with _lock:
        _loaded.clear()
        _passed.clear()
        _warned.clear()
