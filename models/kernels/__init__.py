"""Fused Triton kernels: attention core, LayerNorm, residual + layer-scale add.

Importable without triton: :func:`triton_available` is then False, ``FusedLayerNorm``
and ``fused_residual_gamma_add`` run plain torch, and ``fused_attention_supported``
returns False.  See docs/KERNELS.md.
"""
from ._triton_utils import triton_available
from .attention import fused_attention, fused_attention_bucketed, fused_attention_supported
from .layer_norm import FusedLayerNorm, fused_layer_norm, fused_residual_gamma_add

__all__ = [
    "triton_available",
    "fused_attention",
    "fused_attention_supported",
    "fused_attention_bucketed",
    "FusedLayerNorm",
    "fused_layer_norm",
    "fused_residual_gamma_add",
]
