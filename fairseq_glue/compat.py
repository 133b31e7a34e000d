"""Compatibility shims between official ONE-PEACE checkpoints and stock fairseq 0.12.

* Checkpoints written by the official (vendored, modified) fairseq may lack
  ``optimizer_history``; stock fairseq's upgrade step then raises ``KeyError:
  'best_loss'``.  We fill an empty history instead.
* The torch.load allow-list for fairseq checkpoints (``weights_only=True`` is the
  default of the torch.load call inside fairseq) is registered here.
* ``load_model_ensemble_and_task`` (what the hub, ``one-peace-evaluate`` and users call to
  rebuild a model from a checkpoint) builds the model without initialising the weights the
  checkpoint provides and memory-maps the file (``models/deferred_init.py``): loading the
  released 4B model takes seconds and one copy of the weights.  ``fairseq-train`` starting from a
  checkpoint (``--finetune-from-model``, ``--restore-file``, ``checkpoint_last.pt``) builds the
  model the same way and copies the mapped tensors into it: ``Trainer.load_checkpoint`` memory-maps
  the file for that one call when its model was built awaiting that file (the model carries it).
* fairseq's trainer catalogues shared parameters by identity, and every ``bias=None`` slot is the
  same ``None``: it logged ~30 "detected shared parameter" lines per start and "re-tied" them.
  Slots holding no parameter are left out of that catalogue.
* DataLoader workers stop when their epoch ends, and a forked copy of a loader iterator leaves them
  alone (``fairseq_glue/loader_workers.py``).
* The epoch length reaches the lr scheduler explicitly (:func:`install_epoch_length_hook`): the trainer
  keeps the length of the training epoch iterator it builds (``get_train_iterator``) and hands it to a
  scheduler that takes one (``set_epoch_length``, ``optim/lr_schedulers.py``'s ``warmup_ratio``) right
  before ``step_begin_epoch``.
* fairseq's ``Adam.step`` (``--optimizer adam``, ``adjust_adam``) runs torch's fused AdamW kernel with
  fairseq's formula and state (``optim/fused_adam.py``): one pass over the weights instead of ten.
  ``--bf16``'s float32 master copies are no longer zeroed before being overwritten, and are synced
  with one foreach copy each way (``optim/master_weights.py``).
* torchrun without GPUs (``_torchrun_without_gpus``): fairseq's torchrun branch divided the rank by the
  GPU count and kept nccl; it now takes the launcher's rank and gloo.  (``one-peace-hydra-train`` installs
  the shims before fairseq sets up distributed training: ``fairseq_glue/hydra_train.py``.)
* ``--ddp-backend fully_sharded`` trains with torch's FSDP2 instead of fairscale (``fairseq_glue/fsdp2.py``,
  installed here).
* ``--fp16`` (flat float32 copy) or ``--amp`` on a CPU (``_checked_run_start``): fairseq built the model
  and then crashed in its fp16 optimizer, or trained in float32 under a warning; refused at start, naming
  the option.
* CPU processes of one run on one machine take a share of its cores each (``cpu_threads.py``, from the same
  ``call_main``): with one thread per core in each, the README's two-process example ran 4x slower.
* Batches whose every row was bad (:func:`install_empty_batch_handling`): fairseq runs its dummy batch
  (an earlier real batch) in their place and, in a single process, logged its outputs into the metrics
  that pick ``checkpoint_best``; their skipped rows were never counted.  Such a batch now stays out of
  the metrics in every world size and its rows are added to ``skipped_samples``.
"""
import contextlib
import functools
import io
import logging
import os
import sys

import torch
from fairseq import checkpoint_utils, metrics
from fairseq import trainer as fairseq_trainer
from fairseq.distributed import utils as distributed_utils
from fairseq.models import distributed_fairseq_model

from ..data_utils.dataset import has_rows, skipped_rows
from ..models.checkpoint import load_checkpoint_file, register_safe_globals
from ..models.deferred_init import awaiting_load, current_load_target, loading_context, memory_map_for
from ..models.model_dir import is_model_dir
from ..models.precision import warn_if_bf16_is_slow_here
from ..models.sharded_checkpoint import is_sharded_checkpoint
from ..optim import fused_adam, master_weights
from . import cpu_threads, fsdp2, loader_workers
from .checkpoint_state import prepare_state

logger = logging.getLogger(__name__)


def _tolerant_upgrade(original):
    @functools.wraps(original)
    def upgrade(state):
        if "optimizer_history" not in state and "best_loss" not in state:
            # A weights-only checkpoint: record "no training history" in fairseq's format.
            state["optimizer_history"] = [{"criterion_name": None, "optimizer_name": None,
                                           "lr_scheduler_state": {}, "num_updates": 0}]
        state.setdefault("extra_state", {})
        return original(state)

    upgrade.one_peace_patched = True
    return upgrade


def _deferred_loading(original):
    @functools.wraps(original)
    def load_model_ensemble_and_task(filenames, *args, **kwargs):
        context = loading_context(files=filenames) if current_load_target() is None else contextlib.nullcontext()
        with context:
            return original(filenames, *args, **kwargs)

    load_model_ensemble_and_task.one_peace_patched = True
    return load_model_ensemble_and_task


def _mapped_loading(original):
    @functools.wraps(original)
    def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
        # nothing built to receive it lazily: fairseq's own loading (a model directory has no pickle for it)
        if not memory_map_for(path) and not is_model_dir(path):
            return original(path, arg_overrides, load_on_all_ranks)
        logger.info("reading %s memory-mapped: a model built without initialising its weights awaits it", path)
        return prepare_state(load_checkpoint_file(path, mmap=True), arg_overrides)

    load_checkpoint_to_cpu.one_peace_patched = True
    return load_checkpoint_to_cpu


def _awaited_loading(original):
    @functools.wraps(original)
    def load_checkpoint(self, filename, *args, **kwargs):
        # Scoped to this call: memory-map the file only if the trainer's own model awaits it.
        with awaiting_load(getattr(self, "_model", None), filename), _model_dir_as_file(filename):
            return original(self, filename, *args, **kwargs)

    load_checkpoint.one_peace_patched = True
    return load_checkpoint


def _broadcast_unpickled_freely(original):
    """fairseq's object broadcast, with ``weights_only=False`` where the receiving ranks unpickle.

    Rank 0 read the checkpoint through the safe loader (or the user allowed pickles) and sends the
    state, its tensors split off, to the other ranks of this job; fairseq's ``torch.load`` of those
    bytes with torch's ``weights_only`` default refuses the saved config, so every rank but 0 crashed
    when a multi-process run resumed."""
    @functools.wraps(original)
    def _broadcast_object_slow(obj, src_rank, group, dist_device):
        if distributed_utils.get_rank(group) == src_rank:
            return original(obj, src_rank, group, dist_device)
        length = torch.LongTensor([0]).to(dist_device)
        distributed_utils.broadcast(length, src=src_rank, group=group)
        buffer = torch.ByteTensor(int(length.item())).to(dist_device)
        distributed_utils.broadcast(buffer, src=src_rank, group=group)
        return torch.load(io.BytesIO(buffer.cpu().numpy()), map_location="cpu", weights_only=False)

    _broadcast_object_slow.one_peace_patched = True
    return _broadcast_object_slow


def _torchrun_without_gpus(original):
    """fairseq's torchrun branch (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` set) takes the
    device as the rank modulo the GPU count and keeps the nccl default: without GPUs it raised
    ZeroDivisionError, so CPU runs under torchrun needed four overrides.  Without GPUs it now takes the
    launcher's rank and world size and gloo; with GPUs it is fairseq's own."""
    @functools.wraps(original)
    def _infer_torch_distributed_launch_init(cfg):
        if torch.cuda.device_count() > 0:
            return original(cfg)
        cfg.distributed_init_method = "env://"
        cfg.distributed_world_size = int(os.environ["WORLD_SIZE"])
        cfg.distributed_rank = int(os.environ["RANK"])
        cfg.device_id = 0
        cfg.distributed_no_spawn = True  # torchrun made the processes
        if cfg.distributed_backend == "nccl":
            logger.info("torchrun without GPUs: distributed backend gloo (fairseq's default nccl needs GPUs)")
            cfg.distributed_backend = "gloo"

    _infer_torch_distributed_launch_init.one_peace_patched = True
    return _infer_torch_distributed_launch_init


def _ddp_for_one_peace(ddp_class):
    """fairseq's ``pytorch_ddp`` (``c10d``; its default ``--ddp-backend``) builds torch's DDP.

    * A ONE-PEACE step leaves the adapters and FFNs of the modalities it does not see without gradients,
      which DDP refuses one step in ("Expected to have finished reduction..."): the run stops at start
      instead, naming the backends that work.  (``--find-unused-parameters`` is left to DDP: pretraining
      still fails there, its criteria running the model's parts several times per backward.)
    * fairseq hands DDP a GPU index (``device_ids=[0]``), which DDP refuses for a module on the CPU: CPU
      processes get DDP without device ids."""
    def DistributedDataParallel(module, device_ids=None, output_device=None, find_unused_parameters=False,
                                **kwargs):
        if not find_unused_parameters and type(module).__module__.startswith("one_peace.") \
                and hasattr(module, "encoder_wrapper"):
            raise ValueError(
                "--ddp-backend pytorch_ddp (fairseq's default; distributed_training.ddp_backend): each ONE-PEACE "
                "step leaves the adapters and FFNs of the modalities it does not see unused, which torch's DDP "
                "refuses; use --ddp-backend legacy_ddp (the official recipe's) or fully_sharded")
        if all(p.device.type == "cpu" for p in module.parameters()):
            device_ids = output_device = None
        return ddp_class(module, device_ids=device_ids, output_device=output_device,
                         find_unused_parameters=find_unused_parameters, **kwargs)

    DistributedDataParallel.one_peace_patched = True
    return DistributedDataParallel


@contextlib.contextmanager
def _model_dir_as_file(path):
    """fairseq's ``Trainer.load_checkpoint`` asks ``PathManager.isfile`` and starts from scratch,
    saying only "no existing checkpoint", when it is false: a model directory (``--finetune-from-model
    DIR``, ``--restore-file DIR``) or a sharded checkpoint directory (FSDP2, ``fairseq_glue/fsdp2.py``)
    counts as the checkpoint file it stands for, within that call."""
    if not (isinstance(path, str) and (is_model_dir(path) or is_sharded_checkpoint(path))):
        yield
        return
    path_manager = fairseq_trainer.PathManager
    original = path_manager.isfile
    path_manager.isfile = staticmethod(lambda p: p == path or original(p))
    try:
        yield
    finally:
        path_manager.isfile = original


def _real_shared_params(original):
    @functools.wraps(original)
    def catalog_shared_params(module, memo=None, prefix=""):
        groups = original(module, memo, prefix)
        if memo is not None or not groups:  # recursive calls return nothing; the first returns the groups
            return groups
        return [group for group in groups if _parameter_at(module, group[0]) is not None]

    catalog_shared_params.one_peace_patched = True
    return catalog_shared_params


def _parameter_at(module, path: str):
    owner, _, name = path.rpartition(".")
    return module.get_submodule(owner)._parameters.get(name) if owner else module._parameters.get(name)


def install():
    loader_workers.install()
    if not getattr(fairseq_trainer._catalog_shared_params, "one_peace_patched", False):
        fairseq_trainer._catalog_shared_params = _real_shared_params(fairseq_trainer._catalog_shared_params)
    if not getattr(checkpoint_utils._upgrade_state_dict, "one_peace_patched", False):
        checkpoint_utils._upgrade_state_dict = _tolerant_upgrade(checkpoint_utils._upgrade_state_dict)
    if not getattr(checkpoint_utils.load_model_ensemble_and_task, "one_peace_patched", False):
        checkpoint_utils.load_model_ensemble_and_task = _deferred_loading(
            checkpoint_utils.load_model_ensemble_and_task)
    if not getattr(checkpoint_utils.load_checkpoint_to_cpu, "one_peace_patched", False):
        checkpoint_utils.load_checkpoint_to_cpu = _mapped_loading(checkpoint_utils.load_checkpoint_to_cpu)
    if not getattr(fairseq_trainer.Trainer.load_checkpoint, "one_peace_patched", False):
        fairseq_trainer.Trainer.load_checkpoint = _awaited_loading(fairseq_trainer.Trainer.load_checkpoint)
    if not getattr(distributed_utils._broadcast_object_slow, "one_peace_patched", False):
        distributed_utils._broadcast_object_slow = _broadcast_unpickled_freely(distributed_utils._broadcast_object_slow)
    if not getattr(distributed_fairseq_model.DistributedDataParallel, "one_peace_patched", False):
        distributed_fairseq_model.DistributedDataParallel = _ddp_for_one_peace(
            distributed_fairseq_model.DistributedDataParallel)
    if not getattr(distributed_utils._infer_torch_distributed_launch_init, "one_peace_patched", False):
        distributed_utils._infer_torch_distributed_launch_init = _torchrun_without_gpus(
            distributed_utils._infer_torch_distributed_launch_init)
    if not getattr(distributed_utils.call_main, "one_peace_patched", False):
        distributed_utils.call_main = _checked_run_start(distributed_utils.call_main)
    train_cli = sys.modules.get("fairseq_cli.train")  # fairseq-train is running: its flags were just parsed
    if train_cli is not None and not getattr(train_cli.convert_namespace_to_omegaconf, "one_peace_patched", False):
        train_cli.convert_namespace_to_omegaconf = _bf16_is_not_tpu(train_cli.convert_namespace_to_omegaconf)
    register_safe_globals()


def _bf16_is_not_tpu(original):
    """fairseq 0.12's argparse sets ``tpu`` whenever ``--bf16`` (or ``--memory-efficient-bf16``) is given,
    so ``fairseq-train --bf16`` on a CPU or GPU crashed looking for an XLA device: TPU mode only when
    ``--tpu`` is on the command line.  (The yaml front end never coupled them.)"""
    @functools.wraps(original)
    def convert_namespace_to_omegaconf(args):
        if getattr(args, "tpu", False) and getattr(args, "bf16", False) and "--tpu" not in sys.argv:
            args.tpu = False
        if getattr(args, "bf16", False) and not getattr(args, "tpu", False) and cpu_threads.trains_on_cpu(args):
            warn_if_bf16_is_slow_here("fairseq-train --bf16")
        return original(args)

    convert_namespace_to_omegaconf.one_peace_patched = True
    return convert_namespace_to_omegaconf


def _checked_run_start(original):
    """Where both front ends (``fairseq-train``, ``fairseq-hydra-train``) hand over the parsed config
    (``call_main``), before anything is built: precisions a CPU cannot run are refused, and CPU processes
    sharing a machine take their share of its cores (``cpu_threads.py``).

    fairseq's ``--fp16`` keeps its flat float32 copy of the weights on the current CUDA device: with ``--cpu``
    or without a GPU, ``fairseq-train --fp16`` built the model and then crashed in fairseq's fp16 optimizer
    ("Torch not compiled with CUDA enabled").  Refused before anything is built, naming the option and the
    variants that run on a CPU (``--memory-efficient-fp16``, ``--fp16-no-flatten-grads``: no flat copy; the
    layer-decay tests train with them on the CPU).  ``--amp`` is CUDA autocast, which torch turns off on a CPU:
    it trained in float32 under a warning; refused the same way."""
    @functools.wraps(original)
    def call_main(cfg, main, **kwargs):
        common = cfg.common
        on_cpu = cpu_threads.trains_on_cpu(common)
        where = "--cpu is set" if common.cpu else "torch sees no CUDA device"
        if on_cpu and common.fp16 and not common.memory_efficient_fp16 and not common.fp16_no_flatten_grads:
            raise ValueError(f"--fp16 (common.fp16) keeps fairseq's flat float32 copy of the weights on a CUDA GPU, "
                             f"and {where}; on a CPU train with --bf16, or add --memory-efficient-fp16 or "
                             "--fp16-no-flatten-grads")
        if on_cpu and common.amp:
            raise ValueError(f"--amp (common.amp) is fairseq's CUDA autocast, and {where}: torch would turn it off "
                             "and train in float32; on a CPU train with --bf16 or --memory-efficient-bf16")
        cpu_threads.share_cores(cfg)  # several CPU processes on this machine: a share of the cores each
        return original(cfg, main, **kwargs)

    call_main.one_peace_patched = True
    return call_main


def _remember_epoch_length(original):
    @functools.wraps(original)
    def get_train_iterator(self, *args, **kwargs):
        batch_iterator = original(self, *args, **kwargs)
        self.one_peace_epoch_length = len(batch_iterator)  # batches per worker in this epoch
        return batch_iterator

    get_train_iterator.one_peace_patched = True
    return get_train_iterator


def _pass_epoch_length(original):
    @functools.wraps(original)
    def lr_step_begin_epoch(self, epoch):
        length = getattr(self, "one_peace_epoch_length", None)
        set_length = getattr(self.lr_scheduler, "set_epoch_length", None)
        if length is not None and callable(set_length):
            set_length(length)
        return original(self, epoch)

    lr_step_begin_epoch.one_peace_patched = True
    return lr_step_begin_epoch


def install_epoch_length_hook():
    """``Trainer.get_train_iterator`` keeps its iterator's length; ``Trainer.lr_step_begin_epoch`` passes
    it to the lr scheduler (``set_epoch_length``) before the scheduler's ``step_begin_epoch``."""
    trainer_class = fairseq_trainer.Trainer
    if not getattr(trainer_class.get_train_iterator, "one_peace_patched", False):
        trainer_class.get_train_iterator = _remember_epoch_length(trainer_class.get_train_iterator)
    if not getattr(trainer_class.lr_step_begin_epoch, "one_peace_patched", False):
        trainer_class.lr_step_begin_epoch = _pass_epoch_length(trainer_class.lr_step_begin_epoch)


# ---- batches without a usable row ---------------------------------------------------------------
# fairseq's trainer runs its dummy batch in place of an empty one, so that every worker runs the same
# forward/backward passes and collectives.  It leaves the dummy's outputs out only when several workers
# sum their stats, and only when the *last* pass of an update is the dummy.  With one process nothing
# needs keeping in step: an empty batch is skipped (no pass, no update).  With several, the dummy passes
# come first in the update (so fairseq never drops a real pass's outputs), ``BaseTask.train_step`` zeroes
# their sample size and logs, and two counts travel with the step's summed stats: the skipped rows (every
# worker logs the total) and the real batches (none on any worker: the step logs no metric at all).
@contextlib.contextmanager
def _step(trainer, real_batches: int, skipped: int):
    outer = getattr(trainer, "one_peace_step", None)  # valid_step calls itself again after an OOM
    trainer.one_peace_step = step = {"real": real_batches, "skipped": skipped, "rowless": False}
    try:
        yield
    finally:
        trainer.one_peace_step = outer
        if step["skipped"]:  # still here if the stats were not summed across workers
            metrics.log_scalar_sum("skipped_samples", step["skipped"])


def _skipping_train_step(original):
    @functools.wraps(original)
    def train_step(self, samples, raise_oom=False):
        real = [s for s in samples if has_rows(s)]
        with _step(self, len(real), sum(skipped_rows(s) for s in samples)):
            if len(real) == len(samples):
                return original(self, samples, raise_oom)
            if self.data_parallel_world_size == 1:
                return original(self, real, raise_oom) if real else None  # None: no update, as after an OOM
            if real and not has_rows(self._dummy_batch):  # still "DUMMY": a real batch of this step stands in
                self.reset_dummy_batch(real[0])
            return original(self, [{}] * (len(samples) - len(real)) + real, raise_oom)

    train_step.one_peace_patched = True
    return train_step


def _skipping_valid_step(original):
    @functools.wraps(original)
    def valid_step(self, sample, raise_oom=False):
        # in fairseq's "valid" aggregator too (fairseq's valid_step logs there), like the step's own metrics
        with metrics.aggregate("valid"), _step(self, int(has_rows(sample)), skipped_rows(sample)):
            if has_rows(sample):
                return original(self, sample, raise_oom)
            # fairseq_cli's validate() does not read the returned stats
            return {} if self.data_parallel_world_size == 1 else original(self, {}, raise_oom)

    valid_step.one_peace_patched = True
    return valid_step


def _counts_summed_with_stats(original):
    @functools.wraps(original)
    def _aggregate_logging_outputs(self, logging_outputs, *extra_stats_to_sum, ignore=False):
        step = getattr(self, "one_peace_step", None) or {"real": 1, "skipped": 0, "rowless": False}
        # Every worker adds both counts, so the summed stats have the same keys on all of them.
        logging_outputs, extra = original(self, logging_outputs, *extra_stats_to_sum, step["skipped"],
                                          step["real"], ignore=ignore)
        skipped, real = float(extra[-2]), float(extra[-1])
        if skipped:
            metrics.log_scalar_sum("skipped_samples", skipped)
        step["skipped"], step["rowless"] = 0, real == 0
        return logging_outputs, list(extra[:-2])

    _aggregate_logging_outputs.one_peace_patched = True
    return _aggregate_logging_outputs


def _rowless_steps_unlogged(original):
    @functools.wraps(original)
    def _reduce_and_log_stats(self, logging_outputs, sample_size, grad_norm=None):
        step = getattr(self, "one_peace_step", None)
        if step and step["rowless"]:  # every worker ran the dummy: no batch of zero rows in the averages
            return {}
        return original(self, logging_outputs, sample_size, grad_norm)

    _reduce_and_log_stats.one_peace_patched = True
    return _reduce_and_log_stats


def _real_dummy_batch(original):
    @functools.wraps(original)
    def reset_dummy_batch(self, batch):
        if isinstance(batch, dict) and not has_rows(batch):  # an iterator's first batch had no usable row
            batch = self._dummy_batch if has_rows(self._dummy_batch) else "DUMMY"  # "DUMMY": the next real one
        return original(self, batch)

    reset_dummy_batch.one_peace_patched = True
    return reset_dummy_batch


def install_empty_batch_handling():
    """Empty batches (``data_utils/dataset.py:empty_batch``) stay out of the metrics and are counted."""
    trainer_class = fairseq_trainer.Trainer
    for name, wrap in (("train_step", _skipping_train_step), ("valid_step", _skipping_valid_step),
                       ("_aggregate_logging_outputs", _counts_summed_with_stats),
                       ("_reduce_and_log_stats", _rowless_steps_unlogged), ("reset_dummy_batch", _real_dummy_batch)):
        if not getattr(getattr(trainer_class, name), "one_peace_patched", False):
            setattr(trainer_class, name, wrap(getattr(trainer_class, name)))


install()
install_epoch_length_hook()
install_empty_batch_handling()
fsdp2.install()  # --ddp-backend fully_sharded: FSDP2 instead of fairscale
fused_adam.install()  # fairseq's Adam update in one fused kernel (optim/fused_adam.py)
master_weights.install()  # --bf16's float32 master copies without redundant passes (optim/master_weights.py)
