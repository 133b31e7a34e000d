"""``--ddp-backend fully_sharded`` trains with PyTorch's FSDP2 (``models/fsdp2.py``) instead of fairscale.

fairseq 0.12 implements that backend with fairscale (unmaintained, not installed): its ``fsdp_wrap``,
``DistributedFairseqModel`` and ``Trainer`` import it.  Installed by ``fairseq_glue/compat.py``:

* ``fsdp_enable_wrap`` / ``fsdp_wrap`` (``fairseq_cli.train`` builds the model inside them) leave the model
  as built; the ``Trainer`` shards it when it is created, where the precision options are known: one
  FSDP unit per fusion layer, bf16 compute with ``common.bf16`` (fp32 sharded parameters and optimizer
  state, fp32 gradient reduction), else fp32.  One process gets a one-rank process group.
* The ``Trainer`` runs on a view of the config that says ``c10d`` without fairseq's bf16: its FSDP
  branches are fairscale's and its bf16 optimizers keep the fp32 copy FSDP2 already is.  The saved
  ``cfg`` is the real one.  ``DistributedFairseqModel`` returns a sharded model as it is (FSDP2 reduces
  the gradients); the gradient norm is taken over the shards (``clip_grad_norm``).
* Checkpoints are sharded directories under fairseq's names (``models/sharded_checkpoint.py``), written
  by every rank; fairseq's copies to the other names and its removal of old checkpoints handle
  directories (rank 0) within ``checkpoint_utils.save_checkpoint``.
* Loading: every rank reads the checkpoint (no broadcast).  A sharded directory is loaded shard by shard
  into an FSDP2 run of the same model and whole (consolidated) into any other, or into another model (stage 2
  from stage 1: the model's upgrade drops the image branch and resets the logit scale); a ``.pt`` (a DDP
  run, a released model) goes through the usual key checks and each rank keeps its slice of the weights and
  the Adam state.
"""
import contextlib
import contextvars
import copy
import functools
import logging
import os
import shutil
from argparse import Namespace
from dataclasses import dataclass

import torch
import torch.distributed as dist
from fairseq import checkpoint_utils
from fairseq import distributed as fairseq_distributed
from fairseq import models as fairseq_models
from fairseq import trainer as fairseq_trainer
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from omegaconf import OmegaConf, open_dict

from ..models import sharded_checkpoint as sharded
from ..models.deferred_init import finish_loading
from ..models.fsdp2 import device_mesh, is_sharded, shard_model
from .checkpoint_state import prepare_state
from .cpu_threads import trains_on_cpu

logger = logging.getLogger(__name__)

BACKEND = "fully_sharded"
_SHARDED_LOAD: contextvars.ContextVar[bool] = contextvars.ContextVar("one_peace_sharded_load", default=False)


@dataclass(frozen=True)
class ShardedSource:
    """Stands for the model or optimizer entry of a sharded checkpoint: read shard by shard when loaded."""
    path: str


def uses_fsdp2(cfg) -> bool:
    return cfg.distributed_training.ddp_backend == BACKEND


def is_fsdp2_trainer(trainer) -> bool:
    return getattr(trainer, "one_peace_fsdp2", False)


def check_options(cfg) -> None:
    """What FSDP2 here does not do, refused before anything is built."""
    refused = {
        "common.fp16 / common.amp": cfg.common.fp16 or cfg.common.amp,
        "distributed_training.zero_sharding": cfg.distributed_training.zero_sharding != "none",
        "distributed_training.cpu_offload": cfg.distributed_training.cpu_offload,
        "optimization.use_bmuf": cfg.optimization.use_bmuf,
        "ema.store_ema": cfg.ema.store_ema,
    }
    bad = [name for name, value in refused.items() if value]
    if bad:
        raise ValueError(f"--ddp-backend {BACKEND} (FSDP2) does not combine with {', '.join(bad)}: it shards the "
                         "optimizer state itself and computes in bf16 (common.bf16) or fp32")


def _trainer_view(cfg):
    view = copy.deepcopy(cfg)
    with open_dict(view):
        view.distributed_training.ddp_backend = "c10d"
        view.common.bf16 = False
        view.common.memory_efficient_bf16 = False
        view.checkpoint.load_checkpoint_on_all_dp_ranks = True
        if view.optimizer.get("use_distributed_fused_adam", False):
            # the yamls' ZeRO-1 flag: FSDP2 already shards the Adam state (with the parameters)
            logger.info("FSDP2: optimizer.use_distributed_fused_adam is implied (the state is sharded)")
            view.optimizer.use_distributed_fused_adam = False
    return view


def _ensure_process_group(device_type: str) -> None:
    if not dist.is_initialized():  # one process: FSDP2 still needs a group (of one)
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def _sharding_init(original):
    @functools.wraps(original)
    def __init__(self, cfg, task, model, criterion, quantizer=None):
        if isinstance(cfg, Namespace):
            cfg = convert_namespace_to_omegaconf(cfg)
        if not uses_fsdp2(cfg):
            return original(self, cfg, task, model, criterion, quantizer)
        check_options(cfg)
        device_type = "cpu" if trains_on_cpu(cfg.common) else "cuda"
        _ensure_process_group(device_type)
        if getattr(model, "_deferred_init", None) is not None:
            # Built awaiting a checkpoint: sharding copies the weights, so they are initialised first.
            model._deferred_init.replay(model)
            finish_loading(model)
        compute = torch.bfloat16 if cfg.common.bf16 else None
        shard_model(model, device_mesh(device_type), param_dtype=compute, reduce_dtype=torch.float32)
        _load_sharded_or_full(model)
        logger.info("FSDP2: %s sharded over %d ranks (one unit per fusion layer), compute in %s, fp32 reduction",
                    type(model).__name__, dist.get_world_size(), "bf16" if compute else "fp32")
        original(self, _trainer_view(cfg), task, model, criterion, quantizer)
        self.one_peace_fsdp2 = True
        self.one_peace_cfg = cfg

    __init__.one_peace_fsdp2 = True
    return __init__


def _load_sharded_or_full(model) -> None:
    """The sharded model's ``load_state_dict`` also takes a :class:`ShardedSource`."""
    original = model.load_state_dict

    def load_state_dict(state_dict, strict=True, model_cfg=None, args=None, **torch_options):
        if isinstance(state_dict, ShardedSource):
            if sharded.model_keys(state_dict.path) == set(model.state_dict()):
                return sharded.load(state_dict.path, model)
            # Another model's checkpoint (stage 2 from stage 1 drops the image branch and may reset the logit
            # scale): read whole, through the model's own upgrade and key checks; each rank keeps its slice.
            state_dict = sharded.consolidate(state_dict.path)["model"]
        if torch_options:  # torch's set_model_state_dict (assign=...): sharded tensors, nn.Module's load
            return torch.nn.Module.load_state_dict(model, state_dict, strict=strict, **torch_options)
        return original(state_dict, strict=strict, model_cfg=model_cfg, args=args)

    model.load_state_dict = load_state_dict


def group_names(model, optimizer):
    names = {id(p): name for name, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def _sharded_optimizer_loading(trainer, fairseq_optimizer) -> None:
    """The optimizer's ``load_state_dict`` takes a :class:`ShardedSource` or a full index-keyed state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    def load_state_dict(state_dict, optimizer_overrides=None):
        optimizer = fairseq_optimizer.optimizer
        if isinstance(state_dict, ShardedSource):
            sharded.load(state_dict.path, trainer.model, optimizer, weights=False)
        else:
            named = sharded.named_optimizer_state(state_dict, group_names(trainer.model, optimizer))
            set_optimizer_state_dict(trainer.model, optimizer, named, options=StateDictOptions(full_state_dict=True))
        for group in optimizer.param_groups:
            group.update(optimizer_overrides or {})

    fairseq_optimizer.load_state_dict = load_state_dict


def _optimizer_for_shards(original):
    @functools.wraps(original)
    def _build_optimizer(self):
        original(self)
        if is_fsdp2_trainer(self):
            _sharded_optimizer_loading(self, self._optimizer)

    _build_optimizer.one_peace_fsdp2 = True
    return _build_optimizer


def _sharded_models_stay(original):
    @functools.wraps(original)
    def DistributedFairseqModel(args, model, process_group, device):  # noqa: N802 - fairseq's name
        return model if is_sharded(model) else original(args, model, process_group, device)

    DistributedFairseqModel.one_peace_fsdp2 = True
    return DistributedFairseqModel


def _norm_over_shards(original):
    @functools.wraps(original)
    def clip_grad_norm(self, clip_norm):
        if not is_fsdp2_trainer(self):
            return original(self, clip_norm)
        from torch.distributed.tensor import DTensor

        params = [p for p in self.optimizer.params if p.grad is not None]
        # sharded gradients, and the whole ones of the parameters kept on every rank (logit_scale)
        groups = [g for g in ([p for p in params if isinstance(p.grad, DTensor)],
                              [p for p in params if not isinstance(p.grad, DTensor)]) if g]
        norms = []
        for group in groups:
            norm = torch.nn.utils.get_total_norm([p.grad for p in group], 2.0)
            norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)  # over every rank's shard
        norm = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
        if clip_norm > 0:
            for group in groups:  # fairseq's factor: clip / (norm + 1e-6), at most 1
                torch.nn.utils.clip_grads_with_norm_(group, clip_norm, norm)
        return norm

    clip_grad_norm.one_peace_fsdp2 = True
    return clip_grad_norm


def _sharded_save(original):
    @functools.wraps(original)
    def save_checkpoint(self, filename, extra_state):
        if not is_fsdp2_trainer(self):
            if sharded.is_sharded_checkpoint(filename) and self.should_save_checkpoint_on_current_rank:
                # a DDP run resumed from FSDP2 writes its .pt where the directory was (kept aside until then)
                os.rename(filename, filename + sharded.PREVIOUS)
                saved = original(self, filename, extra_state)
                shutil.rmtree(filename + sharded.PREVIOUS)
                return saved
            return original(self, filename, extra_state)
        logger.info("Saving sharded checkpoint to %s", os.path.abspath(filename))
        meta = self.state_dict()
        meta.pop("model")
        meta.pop("last_optimizer_state", None)
        meta["cfg"] = OmegaConf.to_container(self.one_peace_cfg, resolve=True, enum_to_str=True)
        meta["extra_state"].update(extra_state)
        optimizer = None if self.cfg.checkpoint.no_save_optimizer_state else self.optimizer.optimizer
        sharded.save(filename, self.model, optimizer, meta)
        logger.info("Finished saving checkpoint to %s", os.path.abspath(filename))
        return os.path.abspath(filename)

    save_checkpoint.one_peace_fsdp2 = True
    return save_checkpoint


def _every_rank_saves(original):
    @functools.wraps(original.fget)
    def should_save_checkpoint_on_current_rank(self):
        return True if is_fsdp2_trainer(self) else original.fget(self)

    should_save_checkpoint_on_current_rank.one_peace_fsdp2 = True
    return property(should_save_checkpoint_on_current_rank)


def _sharded_loading(original):
    @functools.wraps(original)
    def load_checkpoint(self, filename, *args, **kwargs):
        token = _SHARDED_LOAD.set(is_fsdp2_trainer(self))
        try:
            return original(self, filename, *args, **kwargs)
        finally:
            _SHARDED_LOAD.reset(token)

    load_checkpoint.one_peace_fsdp2 = True
    return load_checkpoint


def _state_of(path, arg_overrides, entries):
    """What fairseq's ``load_checkpoint_to_cpu`` returns, for a sharded directory: ``entries`` over its meta."""
    state = dict(sharded.read_meta(path))
    state.update(entries)
    return prepare_state(state, arg_overrides)


def _directory_reading(original):
    @functools.wraps(original)
    def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
        if not sharded.is_sharded_checkpoint(path):
            return original(path, arg_overrides, load_on_all_ranks)
        if _SHARDED_LOAD.get():  # an FSDP2 run: each rank reads its shards when the model/optimizer load
            entries = {"model": ShardedSource(path)}
            if sharded.has_optimizer_state(path):
                entries["last_optimizer_state"] = ShardedSource(path)
            return _state_of(path, arg_overrides, entries)
        full = sharded.consolidate(path, optimizer=True)  # DDP or one process: the whole checkpoint
        return _state_of(path, arg_overrides, {k: full[k] for k in ("model", "last_optimizer_state") if k in full})

    load_checkpoint_to_cpu.one_peace_fsdp2 = True
    return load_checkpoint_to_cpu


def _recovering(original):
    @functools.wraps(original)
    def load_checkpoint(cfg, trainer, **passthrough_args):
        sharded.recover(os.path.join(cfg.save_dir, "checkpoint_last.pt"))
        return original(cfg, trainer, **passthrough_args)

    load_checkpoint.one_peace_fsdp2 = True
    return load_checkpoint


class _DirectoryCopies:
    """fairseq's ``PathManager`` for ``checkpoint_utils.save_checkpoint``: ``copy`` of a sharded directory
    (rank 0: hard links into ``<dst>.partial``, then swapped in; other ranks: nothing)."""

    def __init__(self, path_manager, rank):
        self._path_manager, self._rank = path_manager, rank

    def __getattr__(self, name):
        return getattr(self._path_manager, name)

    def copy(self, src, dst, overwrite=False):
        if not sharded.is_sharded_checkpoint(src):
            return self._path_manager.copy(src, dst, overwrite=overwrite)
        if self._rank == 0:
            sharded.copy(src, dst)
        return True


class _DirectoryRemoval:
    """``os`` for ``checkpoint_utils.save_checkpoint``: ``remove`` of a sharded directory (rank 0) removes it."""

    def __init__(self, rank):
        self._rank = rank

    def __getattr__(self, name):
        return getattr(os, name)

    def remove(self, path):
        if not sharded.is_sharded_checkpoint(path):
            return os.remove(path)
        if self._rank == 0:
            shutil.rmtree(path)


def _directory_checkpoints(original):
    @functools.wraps(original)
    def save_checkpoint(cfg, trainer, epoch_itr, val_loss):
        if not is_fsdp2_trainer(trainer):
            return original(cfg, trainer, epoch_itr, val_loss)
        rank = trainer.data_parallel_rank
        saved = checkpoint_utils.PathManager, checkpoint_utils.os
        checkpoint_utils.PathManager, checkpoint_utils.os = _DirectoryCopies(saved[0], rank), _DirectoryRemoval(rank)
        try:
            result = original(cfg, trainer, epoch_itr, val_loss)
        finally:
            checkpoint_utils.PathManager, checkpoint_utils.os = saved
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()  # the copies exist on every rank's return
        return result

    save_checkpoint.one_peace_fsdp2 = True
    return save_checkpoint


@contextlib.contextmanager
def _nothing_to_enable(cfg):
    yield


def _unwrapped(module, min_num_params=None, **kwargs):
    return module  # sharded when the Trainer is built (fairseq_glue/fsdp2.py)


def _install_wrap_functions():
    import sys

    originals = (fairseq_distributed.fsdp_enable_wrap, fairseq_distributed.fsdp_wrap)
    for module in (fairseq_distributed, sys.modules.get("fairseq_cli.train"), sys.modules.get("__main__")):
        if module is None:
            continue
        if getattr(module, "fsdp_enable_wrap", None) in originals or module is fairseq_distributed:
            module.fsdp_enable_wrap, module.fsdp_wrap = _nothing_to_enable, _unwrapped


def install():
    trainer_class = fairseq_trainer.Trainer
    if getattr(trainer_class.__init__, "one_peace_fsdp2", False):
        return
    _install_wrap_functions()
    trainer_class.__init__ = _sharding_init(trainer_class.__init__)
    trainer_class._build_optimizer = _optimizer_for_shards(trainer_class._build_optimizer)
    trainer_class.clip_grad_norm = _norm_over_shards(trainer_class.clip_grad_norm)
    trainer_class.save_checkpoint = _sharded_save(trainer_class.save_checkpoint)
    trainer_class.load_checkpoint = _sharded_loading(trainer_class.load_checkpoint)
    trainer_class.should_save_checkpoint_on_current_rank = _every_rank_saves(
        trainer_class.should_save_checkpoint_on_current_rank)
    fairseq_models.DistributedFairseqModel = _sharded_models_stay(fairseq_models.DistributedFairseqModel)
    checkpoint_utils.load_checkpoint_to_cpu = _directory_reading(checkpoint_utils.load_checkpoint_to_cpu)
    checkpoint_utils.save_checkpoint = _directory_checkpoints(checkpoint_utils.save_checkpoint)
    checkpoint_utils.load_checkpoint = _recovering(checkpoint_utils.load_checkpoint)
