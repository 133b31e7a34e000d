"""Fused Triton kernels: attention core (dense or bucketed bias) and LayerNorm; fused C kernels for the CPU.

The Triton kernels are opt-in: the model uses them when asked to (``ONE_PEACE_ATTENTION=fused``,
``ONE_PEACE_LAYER_NORM=fused``, or ``set_attention_impl`` / ``set_layer_norm_impl``;
see ``switches.py``).  Importable without triton: :func:`triton_available` is then
False, ``FusedLayerNorm`` runs plain torch and ``fused_attention_supported`` returns
False.  ``python -m one_peace.models.kernels_self_check`` checks them on a GPU.  The CPU kernels
(``cpu_fused.py``: GeGLU + sub-LayerNorm; ``cpu_adam.py``: the bf16 Adam step) are on by default wherever a C compiler builds them
(``ONE_PEACE_CPU_FUSED=torch`` turns them off).  See
docs/KERNELS.md.
"""
from ._triton_utils import triton_available
from .attention import (
    fused_attention,
    fused_attention_bucketed,
    fused_attention_supported,
    fused_attention_unsupported_reason,
)
from .layer_norm import FusedLayerNorm, fused_layer_norm, layer_norm_unsupported_reason
from .switches import (
    invalidate_kernel_caches,
    requested_attention_impl,
    requested_cpu_fused_impl,
    requested_layer_norm_impl,
    set_attention_impl,
    set_cpu_fused_impl,
    set_layer_norm_impl,
)

__all__ = [
    "triton_available",
    "fused_attention",
    "fused_attention_supported",
    "fused_attention_unsupported_reason",
    "fused_attention_bucketed",
    "FusedLayerNorm",
    "fused_layer_norm",
    "layer_norm_unsupported_reason",
    "set_attention_impl",
    "set_layer_norm_impl",
    "requested_attention_impl",
    "requested_layer_norm_impl",
    "invalidate_kernel_caches",
    "set_cpu_fused_impl",
    "requested_cpu_fused_impl",
]
