"""Build a model whose weights a checkpoint is about to provide without initialising them.

Random initialisation of the released 4B model takes minutes and the checkpoint overwrites it a
moment later.  While :func:`build_for_loading` builds such a model, every *in-place write to a
parameter* -- what ``reset_parameters`` of torch's layers and our own init code do, through
``torch.nn.init`` or tensor methods -- is *recorded* instead of run, so the parameters stay
allocated but never written, hence not resident in memory.  Each record names the parameter it
writes (and the view of it: shape, stride, offset), so it still applies after the model was
converted (fairseq's trainer casts to fp16/bf16 before loading).  After the checkpoint's tensors
are in place, :meth:`InitRecord.replay` runs the records of the parameters the checkpoint did not
provide (a new classification head, ...), in their original order: those start as an eager build
starts them (same operations, same arguments; with the same seed even the same draws).

How the writes are intercepted: a ``torch.overrides.TorchFunctionMode`` (:class:`_InitRecorder`)
is active while the model is built.  Torch function modes live on a per-thread stack, so only the
building thread is affected -- another thread initialising a model meanwhile runs its init as
usual -- and nothing is patched: ``torch.nn.init`` keeps its functions.  The mode sees the torch
calls of the building thread and records, instead of running, those that write in place (a name
ending in ``_`` other than metadata-only ones like ``requires_grad_``, in-place operators,
``__setitem__``, an ``out=`` argument) into a parameter, a view of one (``t._base``) or its
``.data`` / ``.detach()``; everything else runs, so buffers computed in ``__init__`` (relative
position bucket maps, ...) are real.  What that covers: ``uniform_``, ``normal_``, ``constant_``
and ``kaiming_uniform_`` of ``torch.nn.init`` dispatch to the mode whole; ``ones_`` / ``zeros_``
/ ``xavier_*`` / ``kaiming_normal_`` / ``eye_`` are single tensor writes (``fill_``, ``zero_``,
``uniform_``, ``normal_``, ``torch.eye(out=)``); ``nn.Embedding``'s padding row is
``weight[i].fill_(0)``.  ``trunc_normal_`` (in this torch a rejection sampler: it reads its own
draws), ``orthogonal_``, ``dirac_`` and ``sparse_`` cannot be recorded op by op; they first ask
``tensor.is_meta`` and do nothing for a meta tensor, so when ``torch.nn.init`` code asks that of a
parameter the mode records the call of the outermost ``torch.nn.init`` function on the stack (its
arguments read off its frame) and answers yes.  Replays are bit-identical to an eager build for
torch's layers and all of ours (``tests/test_deferred_init.py``).  Not chosen: building on the
meta device, which would lose buffers computed in ``__init__`` and still need the init calls
recorded to initialise what the checkpoint lacks.

Limits (as with any deferred init): code that *reads* a parameter while building (``copy_`` from
one parameter into another is fine, it is replayed in order) sees its uninitialised memory; random
draws for non-parameters while building shift the random stream relative to an eager build.

When a checkpoint follows:

* :func:`loading_context` -- set by the hub, ``one-peace-evaluate`` and fairseq's
  ``load_model_ensemble_and_task`` (wrapped in ``fairseq_glue/compat.py``): the checkpoint's
  tensors are *adopted* (``load_state_dict(assign=True)``; memory-mapped ones stay mapped) in the
  requested dtype and device;
* :func:`checkpoint_to_be_loaded` -- ``fairseq-train`` with ``--restore-file`` /
  ``--finetune-from-model`` (or an existing ``checkpoint_last.pt``): the tensors are *copied* into
  the model's parameters (the trainer and DDP hold them), and the file's pages are released as it
  goes.  The model carries the file it awaits (``model._load_target``); :func:`awaiting_load`,
  entered around fairseq's ``Trainer.load_checkpoint`` (``fairseq_glue/compat.py``), makes reading
  that file in that call memory-mapped.  No module-level state is kept.

If no checkpoint arrives after all, the first forward initialises everything (and logs it).
"""
import contextlib
import contextvars
import functools
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, List, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

logger = logging.getLogger(__name__)

# In-place methods that change a tensor's metadata or autograd state, not its values: run them.
_METADATA_ONLY = frozenset({
    "requires_grad_", "share_memory_", "detach_", "resize_", "resize_as_", "set_", "as_strided_",
    "squeeze_", "unsqueeze_", "t_", "transpose_", "swapdims_", "swapaxes_", "rename_",
    "sparse_resize_", "sparse_resize_and_clear_",
})
_WRITING_DUNDERS = frozenset({
    "__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__idiv__", "__ifloordiv__",
    "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__imatmul__",
})
_DATA_GETTER = torch.Tensor.data.__get__
_IS_META = torch.Tensor.is_meta.__get__


def _written_slot(func, args, kwargs) -> Union[int, str, None]:
    """Where the tensor a call writes in place sits in its arguments (None: it writes nothing)."""
    if isinstance(kwargs.get("out"), torch.Tensor):
        return "out"
    name = getattr(func, "__name__", "")
    if name.startswith("__"):
        writes = name in _WRITING_DUNDERS
    else:
        writes = name.endswith("_") and not name.startswith("_") and name not in _METADATA_ONLY
    if not writes:
        return None
    if args:
        return 0
    return "tensor" if "tensor" in kwargs else None  # torch.nn.init functions pass it by keyword


def _view_of(tensor: torch.Tensor, param: torch.Tensor) -> tuple:
    return tuple(tensor.shape), tuple(tensor.stride()), tensor.storage_offset() - param.storage_offset()


class _ParamRef(NamedTuple):
    """A parameter (its name once bound to the model) and the view of it a call uses."""

    owner: Any
    view: tuple  # (shape, stride, storage offset relative to the parameter's)

    def get(self, model: Optional[nn.Module] = None) -> torch.Tensor:
        param = model.get_parameter(self.owner) if isinstance(self.owner, str) else self.owner
        if self.view == _view_of(param, param):
            return param
        shape, stride, offset = self.view
        return param.as_strided(shape, stride, param.storage_offset() + offset)

    def named(self, names: dict) -> "_ParamRef":
        name = names.get(id(self.owner))
        return self if name is None else self._replace(owner=name)


def _get(value, model):
    return value.get(model) if isinstance(value, _ParamRef) else value


def _named(value, names):
    return value.named(names) if isinstance(value, _ParamRef) else value


class _Call(NamedTuple):
    target: _ParamRef  # what the call writes
    func: Callable
    slot: Union[int, str]  # where the target goes among args/kwargs
    args: tuple  # parameters among them as _ParamRef too
    kwargs: dict

    def run(self, model: Optional[nn.Module] = None) -> None:
        args = [_get(a, model) for a in self.args]
        kwargs = {k: _get(v, model) for k, v in self.kwargs.items()}
        if isinstance(self.slot, int):
            args.insert(self.slot, self.target.get(model))
        else:
            kwargs[self.slot] = self.target.get(model)
        with torch.no_grad():
            self.func(*args, **kwargs)

    def named(self, names: dict) -> "_Call":
        return _Call(self.target.named(names), self.func, self.slot, tuple(_named(a, names) for a in self.args),
                     {k: _named(v, names) for k, v in self.kwargs.items()})


def _initialiser_call(tensor: torch.Tensor, param: nn.Parameter, frame) -> Optional[_Call]:
    """The call of the outermost ``torch.nn.init`` function on the stack from ``frame`` up, with
    its arguments read off its frame, if ``tensor`` is one of them."""
    found = None
    while frame is not None and frame.f_globals.get("__name__") == "torch.nn.init":
        code = frame.f_code
        func = frame.f_globals.get(code.co_name)
        if getattr(func, "__code__", None) is code:  # a module-level function, not a wrapper's closure
            found = func, frame
        frame = frame.f_back
    if found is None:
        return None
    func, frame = found
    code = frame.f_code
    arguments = {n: frame.f_locals[n] for n in code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]}
    slot = next((n for n, v in arguments.items() if v is tensor), None)
    if slot is None:
        return None
    del arguments[slot]
    return _Call(_ParamRef(param, _view_of(tensor, param)), func, slot, (), arguments)


class _InitRecorder(TorchFunctionMode):
    """Active in the building thread only: records in-place writes to parameters, runs the rest."""

    def __init__(self, record: "InitRecord"):
        super().__init__()
        self.record = record
        self.aliases = WeakIdKeyDictionary()  # .data / .detach() of a parameter -> the parameter

    def owner(self, tensor) -> Optional[nn.Parameter]:
        if not isinstance(tensor, torch.Tensor):
            return None
        if isinstance(tensor, nn.Parameter):
            return tensor
        base = tensor._base
        if isinstance(base, nn.Parameter):
            return base
        return self.aliases.get(tensor if base is None else base)

    def ref(self, value):
        """A parameter (or a view of one) as a _ParamRef; anything else as it is."""
        param = self.owner(value)
        return value if param is None else _ParamRef(param, _view_of(value, param))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func == _IS_META and args and (param := self.owner(args[0])) is not None:
            # torch.nn.init's data-dependent initialisers (trunc_normal_'s rejection sampling,
            # orthogonal_, dirac_, sparse_) first ask whether the tensor is on the meta device and
            # then do nothing: record the initialiser's call and say yes.
            call = _initialiser_call(args[0], param, sys._getframe(1))
            if call is not None:
                self.record.calls.append(call)
                return True
        slot = _written_slot(func, args, kwargs)
        if slot is not None:
            target = args[slot] if isinstance(slot, int) else kwargs[slot]
            ref = self.ref(target)
            if isinstance(ref, _ParamRef):
                rest_args = args[:slot] + args[slot + 1:] if isinstance(slot, int) else args
                rest_kwargs = {k: self.ref(v) for k, v in kwargs.items() if k != slot}
                self.record.calls.append(_Call(ref, func, slot, tuple(self.ref(a) for a in rest_args), rest_kwargs))
                return None if getattr(func, "__name__", "") == "__setitem__" else target
        out = func(*args, **kwargs)
        if (func is torch.Tensor.detach or func == _DATA_GETTER) and args:
            param = self.owner(args[0])
            if param is not None:
                self.aliases[out] = param
        return out


@dataclass
class InitRecord:
    calls: List[_Call] = field(default_factory=list)

    def bind(self, model: nn.Module) -> None:
        """Name the parameters the calls write (and read); holds none of the model's afterwards.
        Calls writing parameters the model does not hold (temporaries, ...) run now, as they would have."""
        names = {id(p): name for name, p in model.named_parameters()}
        bound = []
        for call in self.calls:
            if id(call.target.owner) in names:
                bound.append(call.named(names))
            else:
                call.run()
        self.calls = bound

    def replay(self, model: nn.Module, names=None) -> int:
        """Run the records of ``names`` (all when None) on the model's current parameters."""
        names = None if names is None else set(names)
        count = 0
        for call in self.calls:
            if names is None or call.target.owner in names:
                call.run(model)
                count += 1
        self.calls = [] if names is None else [c for c in self.calls if c.target.owner not in names]
        return count


@contextlib.contextmanager
def record_inits():
    """Within the block, in-place writes to parameters made by this thread are recorded (into the
    :class:`InitRecord` yielded) instead of run; other threads are not affected."""
    record = InitRecord()
    with _InitRecorder(record):
        yield record


@dataclass(frozen=True)
class LoadTarget:
    dtype: Optional[torch.dtype] = None  # None: the model's current dtype
    device: Optional[torch.device] = None  # None: CPU
    files: Tuple[str, ...] = ()  # memory-mapped checkpoint files whose pages may be released
    assign: bool = True  # adopt the checkpoint's tensors (inference) or copy into the parameters


_LOADING: contextvars.ContextVar[Optional[LoadTarget]] = contextvars.ContextVar("one_peace_loading", default=None)
# Files a model built deferred awaits from the call in progress (set by awaiting_load only).
_AWAITED: contextvars.ContextVar[Tuple[str, ...]] = contextvars.ContextVar("one_peace_awaited", default=())


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


@contextlib.contextmanager
def awaiting_load(model: Optional[nn.Module], path: str):
    """Within the block (one call of fairseq's ``Trainer.load_checkpoint``), reading ``path``
    memory-maps it if ``model`` was built deferred and still awaits that file."""
    target = getattr(model, "_load_target", None)
    if target is None or os.path.realpath(path) not in target.files:
        yield
        return
    token = _AWAITED.set(target.files)
    try:
        yield
    finally:
        _AWAITED.reset(token)


def memory_map_for(path: str) -> bool:
    """Whether a checkpoint read now should be memory-mapped (a deferred model awaits it)."""
    return current_load_target() is not None or os.path.realpath(path) in _AWAITED.get()


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
        return finetune if finetune and _readable_checkpoint(finetune) else None
    return restore if _readable_checkpoint(restore) else None


def _readable_checkpoint(path: str) -> bool:
    """A checkpoint file, or a model directory (``config.json`` + safetensors, ``model_dir.py``)."""
    return os.path.isfile(path) or os.path.isfile(os.path.join(path, "config.json"))


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
