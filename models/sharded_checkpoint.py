"""Sharded checkpoints (``torch.distributed.checkpoint``, DCP) of FSDP2 training, and reading them back whole.

A sharded checkpoint is a directory, named as fairseq names its files (``checkpoint_last.pt/``, ...):

    .metadata            DCP's index of every tensor and its shards
    __<rank>_0.distcp    each rank's shards of the model (``model.<name>``) and the optimizer state
                         (``optim.state.<name>.exp_avg``, ``optim.param_groups``), keyed by parameter name
    fairseq_state.pt     everything else of fairseq's checkpoint dict (cfg, optimizer_history, extra_state ...)

Saving is atomic: every rank writes into ``<dir>.partial``, then rank 0 moves the old directory to
``<dir>.previous``, the new one into place and removes the old one.  A kill before the last rename leaves
the previous checkpoint in place; one between the two renames leaves it under ``<dir>.previous``, which
:func:`recover` (called before fairseq looks for ``checkpoint_last.pt``) puts back.

:func:`consolidate` reads a directory into the dict a ``.pt`` holds (``{"cfg", "model", ...}``, full
tensors; ``last_optimizer_state`` in torch's index-keyed layout on request) with no process group, so the
hub, ``one-peace-evaluate`` and a DDP run read it as any checkpoint.
``python -m one_peace.models.sharded_checkpoint DIR OUT.pt`` writes that dict as one ``.pt`` file.
"""
import argparse
import os
import shutil
import sys
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

META_FILE = "fairseq_state.pt"
DCP_METADATA = ".metadata"
PARTIAL, PREVIOUS = ".partial", ".previous"


def is_sharded_checkpoint(path) -> bool:
    path = os.fspath(path)
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, DCP_METADATA))


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _complete(path: str) -> bool:
    return is_sharded_checkpoint(path) and os.path.isfile(os.path.join(path, META_FILE))


def _swap_in(new: str, target: str) -> None:
    """Replace ``target`` by the complete directory ``new`` (two renames; see the module doc)."""
    previous = target + PREVIOUS
    _remove(previous)
    if os.path.lexists(target):  # a directory, or the .pt of a DDP run resumed by FSDP2
        os.rename(target, previous)
    os.rename(new, target)
    _remove(previous)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def recover(path: str) -> bool:
    """Put back ``<path>.previous`` if a save was killed between its renames (rank 0 only; all ranks call)."""
    restored = False
    if _rank() == 0 and not os.path.lexists(path) and _complete(path + PREVIOUS):
        os.rename(path + PREVIOUS, path)
        restored = True
    _barrier()
    return restored


def _state_dicts(model, optimizer):
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optim": optim_state}


def save(directory: str, model, optimizer=None, meta: Optional[dict] = None) -> None:
    """Collective: every rank calls it.  ``optimizer``: the torch optimizer (None: weights only)."""
    import torch.distributed.checkpoint as dcp

    directory = os.path.abspath(directory)
    partial = directory + PARTIAL
    if _rank() == 0:
        _remove(partial)  # left by a killed save
    _barrier()
    dcp.save(_state_dicts(model, optimizer), checkpoint_id=partial)
    if _rank() == 0:
        torch.save(meta or {}, os.path.join(partial, META_FILE))
        _swap_in(partial, directory)
    _barrier()


def load(directory: str, model, optimizer=None, weights: bool = True) -> None:
    """Collective: the shards of ``directory`` into the (sharded or not) model and/or optimizer, any world size
    (DCP reshards).  ``weights=False``: the optimizer state only (the weights were loaded before)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    _require(directory)
    if optimizer is not None and not has_optimizer_state(directory):
        raise ValueError(f"{directory} holds no optimizer state (saved with no_save_optimizer_state); "
                         "reset the optimizer (--reset-optimizer) to start from its weights")
    state = _state_dicts(model, optimizer) if weights else {"optim": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=directory)
    if weights:
        set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optim"])


def copy(src: str, dst: str) -> None:
    """``dst`` becomes a copy of the checkpoint directory ``src`` (hard links: the files are never rewritten;
    a copy where links fail), swapped in as a save is."""
    partial = dst + PARTIAL
    _remove(partial)

    def link_or_copy(source, target):
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)

    shutil.copytree(src, partial, copy_function=link_or_copy)
    _swap_in(partial, dst)


def _require(directory: str) -> None:
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"sharded checkpoint not found: {directory}")
    if not is_sharded_checkpoint(directory):
        raise ValueError(f"{directory} has no {DCP_METADATA}: not a sharded (torch.distributed.checkpoint) "
                         "checkpoint, or its save did not finish")
    if not os.path.isfile(os.path.join(directory, META_FILE)):
        raise ValueError(f"{directory} has no {META_FILE}: not a ONE-PEACE sharded checkpoint")


def has_optimizer_state(directory: str) -> bool:
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(directory).read_metadata()
    return any(key.startswith("optim.") for key in metadata.state_dict_metadata)


def model_keys(directory: str) -> set:
    """The names of the model's tensors in the checkpoint (``model.<name>`` in DCP's index, prefix removed)."""
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(directory).read_metadata()
    return {key[len("model."):] for key in metadata.state_dict_metadata if key.startswith("model.")}


def read_meta(directory: str) -> dict:
    from .pickle_allowlist import register_safe_globals

    _require(directory)
    register_safe_globals()
    path = os.path.join(directory, META_FILE)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"cannot read {path}: {str(err).splitlines()[0]}") from err


def _read_full(directory: str, keys: set) -> dict:
    """Full tensors of ``keys`` (top-level entries), read in this process alone (no process group)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    # As DCP's own consolidation (format_utils.dcp_to_torch_save) reads: the planner builds the dict from the
    # metadata; no_dist even where a process group exists (a DDP run reads on rank 0 alone).
    state: dict = {}
    _load_state_dict(state, storage_reader=FileSystemReader(directory), planner=_EmptyStateDictLoadPlanner(keys=keys),
                     no_dist=True)
    return state


def indexed_optimizer_state(state: dict) -> dict:
    """Name-keyed optimizer state (``get_optimizer_state_dict``) -> torch's index-keyed ``state_dict()``:
    parameters numbered in the order of the groups, as ``Optimizer.state_dict`` numbers them."""
    index: Dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        ids = [index.setdefault(name, len(index)) for name in group["params"]]
        groups.append({**group, "params": ids})
    return {"state": {index[name]: value for name, value in state["state"].items()}, "param_groups": groups}


def named_optimizer_state(state: dict, group_names: List[List[str]], source: str = "checkpoint") -> dict:
    """Index-keyed optimizer state -> name-keyed, given the parameter names of each group of the optimizer
    that will load it (the groups must match, as torch's ``load_state_dict`` requires)."""
    saved = state["param_groups"]
    sizes = [len(g["params"]) for g in saved]
    if sizes != [len(names) for names in group_names]:
        raise ValueError(f"{source}: the optimizer state has groups of {sizes} parameters, this optimizer "
                         f"{[len(n) for n in group_names]}; reset the optimizer (--reset-optimizer)")
    names = {i: name for group, group_names_ in zip(saved, group_names) for i, name in zip(group["params"],
                                                                                          group_names_)}
    return {"state": {names[i]: value for i, value in state["state"].items()},
            "param_groups": [{**g, "params": list(n)} for g, n in zip(saved, group_names)]}


def consolidate(directory: str, optimizer: bool = False) -> dict:
    """The checkpoint dict a ``.pt`` would hold: ``fairseq_state.pt`` + ``model`` (+ ``last_optimizer_state``)."""
    state = dict(read_meta(directory))
    keys = {"model"}
    if optimizer and has_optimizer_state(directory):
        keys.add("optim")
    full = _read_full(directory, keys)
    state["model"] = full["model"]
    if "optim" in full:
        state["last_optimizer_state"] = indexed_optimizer_state(full["optim"])
    return state


def export(directory: str, out: str, optimizer: bool = False) -> dict:
    """Write ``directory`` as one ``.pt`` (written beside ``out``, then renamed onto it)."""
    state = consolidate(directory, optimizer=optimizer)
    tmp = out + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, out)
    return state


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m one_peace.models.sharded_checkpoint",
        description="Export a sharded (FSDP2 / torch.distributed.checkpoint) checkpoint directory to one .pt "
                    "file, the layout of the official checkpoints")
    parser.add_argument("checkpoint", help="sharded checkpoint directory (checkpoint_last.pt/ of an FSDP2 run)")
    parser.add_argument("out", help="the .pt file to write")
    parser.add_argument("--with-optimizer", action="store_true",
                        help="keep the optimizer state (last_optimizer_state), to resume with another backend")
    args = parser.parse_args(argv)
    try:
        state = export(args.checkpoint, args.out, optimizer=args.with_optimizer)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"wrote {args.out}: {len(state['model'])} tensors"
          + (", optimizer state" if "last_optimizer_state" in state else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
