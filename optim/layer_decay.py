"""Layer-wise learning-rate decay and the no-weight-decay rules of the official fine-tuning.

Plain torch.  Each parameter gets a layer id (official ``utils/layer_decay.py``; names are stripped
of ``encoder_wrapper.`` only):

* ``<m>_adapter.rel_pos_table_list.<j>.*`` -> j + 1 (the per-layer relative-position tables);
* any other ``<m>_adapter.*`` -> 0;
* ``fusion_model.layers.<i>.*`` -> i + 1;
* everything else (final LayerNorms, heads, projections, ``logit_scale``, all ``decoder_wrapper.*``)
  -> L + 1, with L the number of encoder layers.

Its learning rate is scaled by ``layer_decay ** (L + 1 - id)``.  With ``no_bias_decay`` or
``layer_decay != 1``, parameters with ``ndim <= 1``, names ending in ``.bias`` and the model's
``no_weight_decay()`` names get no weight decay.

fairseq's trainer hands the optimizer a flat list of parameters, so :func:`tag_parameters` stores
each parameter's name and layer on the parameter itself, as ``optim_overrides`` -- the attribute
fairseq's FP16 optimizer copies onto its fp32 master copies (data2vec uses it the same way).
"""
import logging
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)

TAG = "one_peace"
_ADAPTER_REL_POS = re.compile(r"^\w+_adapter\.rel_pos_table_list\.(\d+)\.")
_ADAPTER = re.compile(r"^\w+_adapter\.")
_FUSION_LAYER = re.compile(r"^fusion_model\.layers\.(\d+)\.")


@dataclass(frozen=True)
class ParamInfo:
    name: str
    layer_id: int
    num_layers: int
    exclude_from_decay: bool  # a bias, a 1-D tensor or one of the model's no_weight_decay() names


def layer_id(name: str, num_layers: int) -> int:
    if not name.startswith("encoder_wrapper."):
        return num_layers + 1
    rest = name[len("encoder_wrapper."):]
    match = _ADAPTER_REL_POS.match(rest)
    if match:
        return int(match.group(1)) + 1
    if _ADAPTER.match(rest):
        return 0
    match = _FUSION_LAYER.match(rest)
    if match:
        return int(match.group(1)) + 1
    return num_layers + 1


def num_encoder_layers(model: nn.Module) -> int:
    layers = getattr(getattr(getattr(model, "encoder_wrapper", None), "fusion_model", None), "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no encoder_wrapper.fusion_model.layers: "
                         "layer-wise lr decay needs the ONE-PEACE encoder")
    return len(layers)


def param_infos(model: nn.Module) -> Dict[str, ParamInfo]:
    num_layers = num_encoder_layers(model)
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    return {
        name: ParamInfo(name, layer_id(name, num_layers), num_layers,
                        p.ndim <= 1 or name.endswith(".bias") or name in skip)
        for name, p in model.named_parameters()
    }


def tag_parameters(model: nn.Module) -> None:
    """Stores each parameter's :class:`ParamInfo` on it (``p.optim_overrides['one_peace']``)."""
    infos = param_infos(model)
    for name, p in model.named_parameters():
        overrides = dict(getattr(p, "optim_overrides", None) or {})
        overrides[TAG] = infos[name]
        p.optim_overrides = overrides


def info_of(p: torch.Tensor) -> Optional[ParamInfo]:
    return (getattr(p, "optim_overrides", None) or {}).get(TAG)


def lr_scale(info: ParamInfo, layer_decay: float) -> float:
    return layer_decay ** (info.num_layers + 1 - info.layer_id)


def parameter_groups(params: Iterable[torch.Tensor], weight_decay: float, layer_decay: float = 1.0,
                     no_bias_decay: bool = False) -> List[dict]:
    """Optimizer parameter groups (``params``, ``lr_scale``, ``weight_decay``, ``name``) in order of
    first appearance, as the official trainer builds them.  Without layer decay and
    ``no_bias_decay`` every parameter is decayed (fairseq's behaviour).  Parameters without a tag
    (not part of a ONE-PEACE model) are treated as heads: scale 1, decayed unless 1-D."""
    params = [p for p in params if p.requires_grad]
    if layer_decay == 1.0 and not no_bias_decay:
        return [{"params": params, "lr_scale": 1.0, "weight_decay": weight_decay, "name": "all"}]
    groups: Dict[str, dict] = {}
    untagged = 0
    for p in params:
        info = info_of(p)
        if info is None:
            untagged += 1
            key, scale, decayed = "untagged", 1.0, p.ndim > 1
            key += "_decay" if decayed else "_no_decay"
        else:
            scale, decayed = lr_scale(info, layer_decay), not info.exclude_from_decay
            key = f"layer_{info.layer_id}_{'decay' if decayed else 'no_decay'}"
        group = groups.setdefault(key, {"params": [], "lr_scale": scale,
                                        "weight_decay": weight_decay if decayed else 0.0, "name": key})
        group["params"].append(p)
    if untagged:
        logger.warning("layer decay: %d parameters without a ONE-PEACE tag (not built by a ONE-PEACE "
                       "task?) get lr scale 1 and decay unless 1-D", untagged)
    return list(groups.values())
