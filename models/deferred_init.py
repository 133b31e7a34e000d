"""Build a model whose weights a checkpoint is about to provide without initialising them.

Random initialisation of the released 4B model takes minutes and the checkpoint overwrites it a
moment later.  Inside :func:`record_inits` every ``torch.nn.init`` function (what ``reset_parameters``
of torch's layers and our own init code call) is *recorded* instead of run, so the parameters stay
uninitialised -- allocated but never written, hence not resident in memory.  Each record names the
parameter (or buffer) it initialises, so it still applies after the model was converted (fairseq's
trainer casts to fp16/bf16 before loading).  After the checkpoint's tensors are in place,
:meth:`InitRecord.replay` runs the records of the tensors the checkpoint did not provide (a new
classification head, ...), in their original order: those start as an eager build starts them (same
functions, same arguments; the random draws differ, as between any two eager builds).

When a checkpoint follows:

* :func:`loading_context` -- set by the hub, ``one-peace-evaluate`` and fairseq's
  ``load_model_ensemble_and_task`` (patched in ``fairseq_glue/compat.py``): the checkpoint's tensors are
  *adopted* (``load_state_dict(assign=True)``; memory-mapped ones stay mapped) in the requested
  dtype and device;
* :func:`checkpoint_to_be_loaded` -- ``fairseq-train`` with ``--restore-file`` /
  ``--finetune-from-model`` (or an existing ``checkpoint_last.pt``): the tensors are *copied* into the
  model's parameters (the trainer and DDP hold them), and the file's pages are released as it goes.

If no checkpoint arrives after all, the first forward initialises everything (and logs it).
"""
import contextlib
import contextvars
import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

# The in-place initialisers of torch.nn.init (the ones torch's layers and our code call).
_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                   "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
                   "sparse_")


@dataclass
class InitRecord:
    calls: List[tuple] = field(default_factory=list)

    def bind(self, model: nn.Module) -> None:
        """Name the tensor each call initialises (a parameter/buffer or a view of one); calls on
        temporaries are dropped.  Holds no tensor afterwards."""
        owners = {t.untyped_storage().data_ptr(): name
                  for name, t in list(model.named_parameters()) + list(model.named_buffers())}
        bound = []
        for fn, args, kwargs in self.calls:
            target = args[0] if args else kwargs.pop("tensor")
            name = owners.get(target.untyped_storage().data_ptr())
            if name is not None:
                view = (tuple(target.shape), tuple(target.stride()), target.storage_offset())
                bound.append((name, view, fn, args[1:], kwargs))
        self.calls = bound

    def replay(self, model: nn.Module, names=None) -> int:
        """Run the records of ``names`` (all when None) on the model's current tensors."""
        names = None if names is None else set(names)
        count = 0
        with torch.no_grad():
            for name, (shape, stride, offset), fn, rest, kwargs in self.calls:
                if names is not None and name not in names:
                    continue
                module_name, _, attr = name.rpartition(".")
                current = getattr(model.get_submodule(module_name), attr)
                target = current.data if current.is_contiguous() else current
                fn(target.as_strided(shape, stride, offset), *rest, **kwargs)
                count += 1
        self.calls = [] if names is None else [c for c in self.calls if c[0] not in names]
        return count


@contextlib.contextmanager
def record_inits():
    """Within the block, ``torch.nn.init`` functions record their calls instead of running them."""
    record = InitRecord()
    originals = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS if hasattr(nn.init, name)}

    def recorder(fn):
        def record_call(*args, **kwargs):
            record.calls.append((fn, args, kwargs))
            return args[0] if args else kwargs.get("tensor")
        return record_call

    for name, fn in originals.items():
        setattr(nn.init, name, recorder(fn))
    try:
        yield record
    finally:
        for name, fn in originals.items():
            setattr(nn.init, name, fn)


@dataclass(frozen=True)
class LoadTarget:
    dtype: Optional[torch.dtype] = None  # None: the model's current dtype
    device: Optional[torch.device] = None  # None: CPU
    files: Tuple[str, ...] = ()  # memory-mapped checkpoint files whose pages may be released
    assign: bool = True  # adopt the checkpoint's tensors (inference) or copy into the parameters


_LOADING: contextvars.ContextVar[Optional[LoadTarget]] = contextvars.ContextVar("one_peace_loading", default=None)
_TRAINING_LOADS = set()  # realpaths fairseq-train is about to load into a model built deferred


def _realpaths(files) -> Tuple[str, ...]:
    return tuple(os.path.realpath(f) for f in ([files] if isinstance(files, str) else files))


@contextlib.contextmanager
def loading_context(dtype: Optional[torch.dtype] = None, device=None, files=()):
    """Models built inside will be filled from a checkpoint: build them with deferred init, and
    adopt loaded floating-point tensors in ``dtype`` on ``device``.  ``files``: the checkpoint
    files (memory-mapped), whose pages are released once a tensor has been converted."""
    token = _LOADING.set(LoadTarget(dtype, torch.device(device) if device is not None else None, _realpaths(files)))
    try:
        yield
    finally:
        _LOADING.reset(token)


def current_load_target() -> Optional[LoadTarget]:
    return _LOADING.get()


def memory_map_for(path: str) -> bool:
    """Whether a checkpoint read now should be memory-mapped (a deferred model awaits it)."""
    return current_load_target() is not None or os.path.realpath(path) in _TRAINING_LOADS


def checkpoint_to_be_loaded(model_cfg) -> Optional[str]:
    """The checkpoint ``fairseq-train`` will load into the model it is building, if any.

    fairseq hands ``build_model`` the ``model`` node of the whole config; its parent holds the
    ``checkpoint`` options, read as fairseq's ``load_checkpoint`` reads them.
    """
    parent = getattr(model_cfg, "_get_parent", lambda: None)()
    ck = parent.get("checkpoint") if parent is not None and hasattr(parent, "get") else None
    if ck is None:
        return None
    restore = ck.get("restore_file") or "checkpoint_last.pt"
    if restore == "checkpoint_last.pt":
        last = os.path.join(ck.get("save_dir") or "checkpoints", "checkpoint_last.pt")
        if os.path.isfile(last):
            return last
        finetune = ck.get("finetune_from_model")
        return finetune if finetune and os.path.isfile(finetune) else None
    return restore if os.path.isfile(restore) else None


def build_for_loading(build: Callable[[], nn.Module], model_cfg=None) -> nn.Module:
    """``build()`` with deferred init when a checkpoint follows (see the module doc);
    ``ONE_PEACE_DEFERRED_INIT=0`` turns it off (eager initialisation, then a copy)."""
    if os.environ.get("ONE_PEACE_DEFERRED_INIT", "1") == "0":
        return build()
    target = current_load_target()
    if target is None:
        path = checkpoint_to_be_loaded(model_cfg) if model_cfg is not None else None
        if path is None:
            return build()
        target = LoadTarget(files=_realpaths(path), assign=False)
        _TRAINING_LOADS.update(target.files)
        logger.info("weights come from %s: built without initialising them", path)
    with record_inits() as record:
        model = build()
    record.bind(model)
    model._deferred_init = record
    model._load_target = target
    # On every module: named methods (encode_text, ...) run submodules without model.forward.
    hook = functools.partial(_initialise_if_never_loaded, model)
    model._deferred_hooks = [m.register_forward_pre_hook(hook) for m in model.modules()]
    return model


def _initialise_if_never_loaded(model, module, args):
    logger.warning("%s was built to be loaded from a checkpoint, but none was loaded before its first "
                   "forward: initialising every weight now", type(model).__name__)
    model._deferred_init.replay(model)
    finish_loading(model)


def finish_loading(model) -> None:
    for handle in model._deferred_hooks:
        handle.remove()
    _TRAINING_LOADS.difference_update(model._load_target.files)
    del model._deferred_init, model._load_target, model._deferred_hooks


def load_deferred(model: nn.Module, state_dict, fresh) -> None:
    """Fill a model built by :func:`build_for_loading` from a checked state dict; ``fresh``: the
    keys the checkpoint lacks (already filled with the model's own, uninitialised, tensors)."""
    target = model._load_target
    model._deferred_init.replay(model, fresh)
    mapped = MappedPages(target.files)
    if target.assign:
        built = next(model.parameters()).dtype
        adopted = {k: place(v, target, built, mapped) for k, v in state_dict.items()}
        nn.Module.load_state_dict(model, adopted, strict=True, assign=True)
    else:  # copy into the parameters the trainer (and DDP) already hold, releasing the file's pages
        with torch.no_grad():
            for key, current in model.state_dict(keep_vars=True).items():
                if key not in fresh:
                    current.data.copy_(state_dict[key])
                    mapped.release(state_dict[key])
    finish_loading(model)


def place(tensor: torch.Tensor, target: LoadTarget, fallback_dtype: torch.dtype,
          mapped: Optional["MappedPages"] = None) -> torch.Tensor:
    """A checkpoint tensor in the target dtype (floating point only) and device; no copy when it
    already is (a memory-mapped bf16 tensor loaded as bf16 stays mapped).  When a copy was made,
    the source's pages of a memory-mapped checkpoint are released (``mapped``), so converting the
    whole model never holds the file and the converted weights in memory together."""
    dtype = (target.dtype or fallback_dtype) if tensor.is_floating_point() else tensor.dtype
    out = tensor.to(device=target.device or tensor.device, dtype=dtype)
    if mapped is not None and out.untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr():
        mapped.release(tensor)
    return out


class MappedPages:
    """Drops the resident pages of tensors that live in a memory-mapped checkpoint file (Linux).

    Only address ranges that ``/proc/self/maps`` shows as mappings of the named files are touched:
    ``MADV_DONTNEED`` on a private file mapping just lets the pages be read from the file again.
    """

    MADV_DONTNEED = 4

    def __init__(self, files):
        self.ranges = []
        self.libc = None
        if not files or not os.path.exists("/proc/self/maps"):
            return
        try:
            import ctypes

            self.libc = ctypes.CDLL(None, use_errno=True)
            with open("/proc/self/maps") as fh:
                for line in fh:
                    parts = line.split(maxsplit=5)
                    if len(parts) == 6 and parts[5].strip() in files:
                        start, end = (int(x, 16) for x in parts[0].split("-"))
                        self.ranges.append((start, end))
        except OSError:
            self.ranges = []
        self.page = os.sysconf("SC_PAGE_SIZE")

    def release(self, tensor: torch.Tensor) -> None:
        if not self.ranges or tensor.device.type != "cpu":
            return
        start = tensor.data_ptr()
        end = start + tensor.numel() * tensor.element_size()
        if not any(lo <= start and end <= hi for lo, hi in self.ranges):
            return
        first = -(-start // self.page) * self.page  # whole pages inside the tensor only
        last = end // self.page * self.page
        if last > first:
            import ctypes

            self.libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), self.MADV_DONTNEED)
