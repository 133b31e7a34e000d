"""Multi-head self-attention of the fusion encoder and its attention core.

The core computes ``softmax(q k^T + bias) v`` with ``q`` already scaled, an additive
per-head bias and a key padding mask.  ``attention_core`` is the single seam that
picks an implementation:

* ``reference``: explicit matmuls with the softmax in float32 (float64 stays float64);
  the official numerics, also used whenever attention dropout is active.
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with the same bias.
* ``fused``: the Triton kernel of ``one_peace.models.kernels`` (CUDA, fp16/bf16).

``auto`` (default) takes ``fused`` when the kernel supports the inputs, else ``sdpa``
(``reference`` for float64).  Force one with the environment variable
``ONE_PEACE_ATTENTION`` or ``set_attention_impl``.
"""
import os
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .components import make_layer_norm

_IMPLS = ("auto", "reference", "sdpa", "fused")
_forced_impl: Optional[str] = None


def set_attention_impl(impl: Optional[str]):
    """Force an implementation for the process (None = back to env var / auto)."""
    global _forced_impl
    if impl is not None and impl not in _IMPLS:
        raise ValueError(f"attention impl must be one of {_IMPLS}, got {impl!r}")
    _forced_impl = impl


def requested_attention_impl() -> str:
    impl = _forced_impl or os.environ.get("ONE_PEACE_ATTENTION", "auto")
    if impl not in _IMPLS:
        raise ValueError(f"ONE_PEACE_ATTENTION must be one of {_IMPLS}, got {impl!r}")
    return impl


def _fused_supported(q: torch.Tensor) -> bool:
    try:
        from .kernels import fused_attention_supported
    except ImportError:
        return False
    return fused_attention_supported(q)


def select_attention_impl(q: torch.Tensor, dropout_p: float = 0.0) -> str:
    impl = requested_attention_impl()
    if impl == "auto":
        if dropout_p > 0.0 or q.dtype == torch.float64:
            return "reference"
        return "fused" if _fused_supported(q) else "sdpa"
    if impl == "fused" and not _fused_supported(q):
        raise RuntimeError(
            "ONE_PEACE_ATTENTION=fused but the Triton kernel does not support these inputs "
            f"(device={q.device}, dtype={q.dtype}, head_dim={q.shape[-1]})"
        )
    return impl


def merge_bias_and_padding(bias, key_padding_mask, batch, heads, length, dtype, device):
    """Additive float mask: bias with -inf on padded key columns (None if neither)."""
    if key_padding_mask is None or not key_padding_mask.any():
        return bias
    if bias is None:
        bias = torch.zeros(1, 1, length, length, dtype=dtype, device=device)
    return bias.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))


def reference_attention(q, k, v, bias=None, key_padding_mask=None, dropout_p=0.0):
    scores = torch.matmul(q, k.transpose(-2, -1))
    if bias is not None:
        scores = scores + bias
    if key_padding_mask is not None and key_padding_mask.any():
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    # The official code forces a float32 softmax; float64 inputs keep float64.
    softmax_dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    probs = torch.softmax(scores.to(softmax_dtype), dim=-1).to(q.dtype)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return torch.matmul(probs, v)


def attention_core(q, k, v, bias=None, key_padding_mask=None, dropout_p: float = 0.0):
    """q, k, v: (B, H, S, Dh), q pre-scaled; bias: (B|1, H, S, S); mask: (B, S) True = pad."""
    impl = select_attention_impl(q, dropout_p)
    if impl == "fused":
        from .kernels import fused_attention

        return fused_attention(q, k, v, bias=bias, key_padding_mask=key_padding_mask)
    if impl == "sdpa" and dropout_p == 0.0:
        b, h, s, _ = q.shape
        mask = merge_bias_and_padding(bias, key_padding_mask, b, h, s, q.dtype, q.device)
        if mask is not None:
            mask = mask.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, scale=1.0)
    return reference_attention(q, k, v, bias, key_padding_mask, dropout_p)


class MultiheadSelfAttention(nn.Module):
    """Shared self-attention with Magneto sub-LN before the output projection.

    ``q_proj`` has a bias that is added before the ``head_dim**-0.5`` scaling;
    ``k_proj`` has no bias (official layout).
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, magneto_scale_attn=False, scale_heads=False):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim ** -0.5
        self.dropout = dropout
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.c_attn = nn.Parameter(torch.ones(num_heads)) if scale_heads else None
        self.ln = make_layer_norm(embed_dim) if magneto_scale_attn else None
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x, attn_bias=None, key_padding_mask=None):
        """x: (B, S, D); attn_bias: (B|1, H, S, S) or None; key_padding_mask: (B, S)."""
        bsz, seq_len, _ = x.shape
        shape = (bsz, seq_len, self.num_heads, self.head_dim)
        q = (self.q_proj(x) * self.scaling).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        if attn_bias is not None and attn_bias.dtype != q.dtype:
            attn_bias = attn_bias.to(q.dtype)
        dropout_p = self.dropout if self.training else 0.0
        out = attention_core(q, k, v, attn_bias, key_padding_mask, dropout_p)  # B, H, S, Dh
        if self.c_attn is not None:
            out = out * self.c_attn.view(1, -1, 1, 1)
        out = out.transpose(1, 2).reshape(bsz, seq_len, self.embed_dim)
        if self.ln is not None:
            out = self.ln(out)
        return self.out_proj(out)
