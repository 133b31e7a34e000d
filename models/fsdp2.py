"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for the ONE-PEACE models, in plain torch.

One FSDP unit per fusion layer (encoder and, for pretraining, decoder) and one for the rest (adapters,
heads, projections, final LayerNorms, logit scale): a layer's weights are all-gathered just before it runs
and freed after, its gradients reduce-scattered as soon as its backward is done.  Parameters, gradients
and the optimizer state (created from the parameters) are each split over the ranks (dim 0, padded).

``param_dtype=torch.bfloat16`` computes in bf16 on fp32 sharded parameters (the optimizer updates fp32);
gradients are reduced in ``reduce_dtype`` (fp32).  Frozen parameters (stage-2 pretraining) are sharded
and gathered like the others and get no gradient.  Activation checkpointing inside the fusion encoder
(``use_reentrant=False``) re-runs a layer's forward, and so its all-gather, in backward.

Three things ``fully_shard`` does not do and the trainer relies on are done here: the attributes stored on
parameters (``optim_overrides``: the layer-decay tags) move to the sharded parameters; ``load_state_dict``
accepts full (unsharded) tensors, each rank keeping its own slice; and 0-d parameters (``logit_scale``),
which ``fully_shard`` refuses, stay whole on every rank with their gradient averaged over the ranks.
"""
from typing import Dict, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn


def fusion_layers(model: nn.Module) -> Iterator[nn.Module]:
    """The fusion layers of the encoder and (pretraining models) the decoder: one FSDP unit each."""
    for wrapper in ("encoder_wrapper", "decoder_wrapper"):
        fusion = getattr(getattr(model, wrapper, None), "fusion_model", None)
        if fusion is not None:
            yield from fusion.layers


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def device_mesh(device_type: str = "cpu"):
    """The 1-D mesh over every rank of the default process group."""
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_initialized():
        raise ValueError("FSDP2 needs an initialised torch.distributed process group (torchrun, or fairseq's "
                         "distributed options)")
    return init_device_mesh(device_type, (dist.get_world_size(),))


def shard_model(model: nn.Module, mesh=None, param_dtype: Optional[torch.dtype] = None,
                reduce_dtype: Optional[torch.dtype] = torch.float32, reshard_after_forward: bool = True) -> nn.Module:
    """Shard ``model`` in place (its class becomes an FSDP subclass; names of parameters are unchanged)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if is_sharded(model):
        raise ValueError(f"{type(model).__name__} is already sharded")
    mesh = mesh if mesh is not None else device_mesh()
    attributes = {name: dict(vars(p)) for name, p in model.named_parameters() if vars(p)}
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    # fully_shard refuses 0-d parameters (logit_scale): kept whole on every rank, gradients averaged here.
    scalars = {p for p in model.parameters() if p.ndim == 0}
    for layer in fusion_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward,
                ignored_params=scalars)
    # Every rank reduces every trainable parameter, used or not (collectives stay matched when ranks' batches
    # use different branches), and an unused one gets a zero gradient, as fairseq's legacy_ddp gives it.
    model.set_reduce_scatter_unused_params(True)
    for p in scalars:
        p.data = p.data.to(mesh.device_type)
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(_average_over_ranks)
    for name, p in model.named_parameters():
        p.__dict__.update(attributes.get(name, {}))
    model._register_load_state_dict_pre_hook(_distribute_full_tensors, with_module=True)
    return model


def _average_over_ranks(param) -> None:
    # Linear, so right after each backward of an update: ranks hold the same sum before the next one.
    dist.all_reduce(param.grad)  # gloo has no AVG
    param.grad.div_(dist.get_world_size())


def _distribute_full_tensors(module, state_dict, prefix, *args):
    """``load_state_dict`` with full tensors (a ``.pt`` checkpoint, every rank holding it): each rank keeps
    its slice.  Sharded (DTensor) values pass as they are."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for name, param in module.named_parameters():
        key = prefix + name
        value = state_dict.get(key)
        if isinstance(param, DTensor) and isinstance(value, torch.Tensor) and not isinstance(value, DTensor):
            if tuple(value.shape) != tuple(param.shape):
                continue  # load_state_dict reports the shape mismatch with the key
            state_dict[key] = distribute_tensor(value.detach().to(param.device, param.dtype), param.device_mesh,
                                                param.placements, src_data_rank=None)


def local_bytes(tensor: torch.Tensor) -> int:
    """Bytes this rank holds for ``tensor`` (its shard for a DTensor)."""
    from torch.distributed.tensor import DTensor

    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def training_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, int]:
    """Bytes of parameters, gradients and optimizer state this rank holds (shards counted locally)."""
    params = list(model.parameters())
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return {"params": sum(local_bytes(p) for p in params),
            "grads": sum(local_bytes(p.grad) for p in params if p.grad is not None),
            "optimizer": sum(local_bytes(v) for v in state)}
