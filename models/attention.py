"""Multi-head self-attention of the fusion encoder and its attention core.

The core computes ``softmax(q k^T + bias) v`` with ``q`` already scaled, an additive
per-head bias and a key padding mask.  The bias is either a dense (B|1, H, S, S) tensor
or a :class:`BucketedBias` -- a (num_buckets, H) relative-position table and an (S, S)
or (B, S, S) bucket map -- which the fused kernel gathers in-kernel (the other paths
build the dense bias from it).  Implementations:

* ``reference``: explicit matmuls with the softmax computed in float32 (float64 stays float64);
  the official numerics, also used whenever attention dropout is active.
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with the same bias.
* ``fused``: the Triton kernels of ``one_peace.models.kernels`` (CUDA fp16/bf16; any
  float dtype on CPU under ``TRITON_INTERPRET=1``).  **Opt-in only**: they have not been
  validated on a GPU by default -- run ``python -m one_peace.models.kernels_self_check``
  on yours first.

``auto`` (default) = ``sdpa``, or ``reference`` for float64, active dropout, and bf16 training
on a CPU where the explicit path measures faster (:func:`explicit_trains_faster`); it never
picks ``fused``.  Choose with the environment variable ``ONE_PEACE_ATTENTION`` (auto,
reference, sdpa, fused) or :func:`set_attention_impl`; an explicit ``fused`` raises when
the kernel cannot run on the inputs.  ``MultiheadSelfAttention`` resolves the
implementation once per (device type, dtype, dropout active) and caches it; a change of
the switch (``set_attention_impl``, ``invalidate_kernel_caches``) invalidates every
cache.  With ``fused`` requested the fusion encoder passes :class:`BucketedBias` instead
of materialising the S x S bias.  See ``models/kernels/switches.py`` and docs/KERNELS.md.
"""
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .components import make_layer_norm
from .kernels import switches as _switches
from .kernels.switches import invalidate_kernel_caches, requested_attention_impl, set_attention_impl  # noqa: F401


class BucketedBias(NamedTuple):
    """``bias[b, h, i, j] = table[index[(b,) i, j], h]`` without building it.

    table: (num_buckets, H) float; index: (S, S) or (B, S, S) integer bucket ids.
    """

    table: torch.Tensor
    index: torch.Tensor

    def dense(self) -> torch.Tensor:
        """The (1|B, H, S, S) bias (an embedding lookup, as the adapters' dense path)."""
        bias = F.embedding(self.index, self.table)  # (.., S, S, H)
        return bias.permute(2, 0, 1).unsqueeze(0) if self.index.dim() == 2 else bias.permute(0, 3, 1, 2)


def bucketed_bias_preferred() -> bool:
    """Whether callers should pass :class:`BucketedBias` rather than a dense bias (``fused`` requested)."""
    return requested_attention_impl() == "fused"


def _fused_unsupported_reason(q: torch.Tensor) -> Optional[str]:
    try:
        from .kernels import fused_attention_unsupported_reason
    except ImportError as exc:
        return f"the kernels package cannot be imported ({exc})"
    return fused_attention_unsupported_reason(q)


# bf16 training on a CPU: below this many tokens the explicit path is faster than SDPA even without a
# bias to train (``bench/attention_cpu.py``; docs/BENCHMARKS.md).
EXPLICIT_BF16_TRAINING_MAX_LENGTH = 320


def explicit_trains_faster(q: torch.Tensor, bias=None) -> bool:
    """On a CPU with autograd on, where the explicit path trains faster than SDPA (``bench/attention_cpu.py``).
    A trained bias (a relative-position table): SDPA can only get its gradient from its math fallback, which
    casts bf16 up to float32 and back and in float32 adds masking passes; the explicit path takes 0.5-0.8x its
    time in bf16 and 0.77-0.91x in float32 at 65-769 tokens.  bf16 without a trained bias: SDPA's CPU kernels
    compute in float32, and the explicit path (bf16 matmuls) is faster up to ~320 tokens."""
    if q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float32) or not torch.is_grad_enabled():
        return False
    if torch.is_tensor(bias) and bias.requires_grad:
        return True
    return q.dtype == torch.bfloat16 and q.requires_grad and q.size(-2) <= EXPLICIT_BF16_TRAINING_MAX_LENGTH


def select_attention_impl(q: torch.Tensor, dropout_p: float = 0.0, bias=None) -> str:
    """The implementation (reference, sdpa or fused) for inputs like ``q`` (and ``bias``)."""
    impl = requested_attention_impl()
    if dropout_p > 0.0:
        return "reference"  # only the explicit path has the official attention dropout
    if impl == "auto":
        return "reference" if q.dtype == torch.float64 or explicit_trains_faster(q, bias) else "sdpa"
    if impl == "fused":
        reason = _fused_unsupported_reason(q)
        if reason is not None:
            raise RuntimeError(f"{_switches.ATTENTION_ENV}=fused (or set_attention_impl('fused')) but the Triton "
                               f"kernel cannot run on these inputs: {reason}")
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
    # The official code forces a float32 softmax (float64 stays float64).  torch's bf16/fp16 softmax
    # kernels already compute in float32 and round once, so the scores keep their dtype: the same
    # probabilities without casting the (B, H, S, S) scores up and back (docs/ARCHITECTURE.md, differences).
    probs = torch.softmax(scores, dim=-1).to(q.dtype)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return torch.matmul(probs, v)


def _dense_bias(bias, dtype):
    if isinstance(bias, BucketedBias):
        bias = bias.dense()
    if bias is not None and bias.dtype != dtype:
        bias = bias.to(dtype)
    return bias


# bf16 on a CPU: per-head matrices of at most this many values (tokens x head dim) are multiplied in float32.
# oneDNN's bf16 batched matmul pays a fixed cost per matrix that outweighs the product at these sizes: the tiny
# preset's heads (5-65 x 16) train 1.05-1.55x faster through float32 and the base preset's text (30 x 64) 1.13x;
# from 65 x 64 on, bf16 is 1.4-1.5x faster (``python bench/attention_cpu.py --small``, docs/BENCHMARKS.md).
SMALL_HEADS_FLOAT32_MAX = 2048


def _reference_impl(q, k, v, bias, key_padding_mask, dropout_p):
    if q.dtype == torch.bfloat16 and q.device.type == "cpu" \
            and q.size(-2) * q.size(-1) <= SMALL_HEADS_FLOAT32_MAX:
        out = reference_attention(q.float(), k.float(), v.float(), _dense_bias(bias, torch.float32), key_padding_mask,
                                  dropout_p)
        return out.to(q.dtype)
    return reference_attention(q, k, v, _dense_bias(bias, q.dtype), key_padding_mask, dropout_p)


def _sdpa_impl(q, k, v, bias, key_padding_mask, dropout_p):
    if dropout_p > 0.0:
        return _reference_impl(q, k, v, bias, key_padding_mask, dropout_p)
    b, h, s, _ = q.shape
    mask = merge_bias_and_padding(_dense_bias(bias, q.dtype), key_padding_mask, b, h, s, q.dtype, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, scale=1.0)


def _fused_impl(q, k, v, bias, key_padding_mask, dropout_p):
    from .kernels import fused_attention, fused_attention_bucketed

    if dropout_p > 0.0:  # the kernels have no dropout
        return _reference_impl(q, k, v, bias, key_padding_mask, dropout_p)
    if isinstance(bias, BucketedBias):
        table = bias.table if bias.table.dtype == q.dtype else bias.table.to(q.dtype)
        return fused_attention_bucketed(q, k, v, table, bias.index, key_padding_mask=key_padding_mask)
    return fused_attention(q, k, v, bias=_dense_bias(bias, q.dtype), key_padding_mask=key_padding_mask)


_IMPL_FNS = {"reference": _reference_impl, "sdpa": _sdpa_impl, "fused": _fused_impl}

AttentionFn = Callable[..., torch.Tensor]


def resolve_attention(q: torch.Tensor, dropout_p: float = 0.0, bias=None) -> AttentionFn:
    """``fn(q, k, v, bias, key_padding_mask, dropout_p)`` of the implementation for inputs like ``q``."""
    return _IMPL_FNS[select_attention_impl(q, dropout_p, bias)]


def attention_core(q, k, v, bias=None, key_padding_mask=None, dropout_p: float = 0.0):
    """q, k, v: (B, H, S, Dh), q pre-scaled; bias: None, (B|1, H, S, S) or a :class:`BucketedBias`;
    key_padding_mask: (B, S), True = pad.  Resolves the implementation on every call
    (``MultiheadSelfAttention`` caches it instead)."""
    return resolve_attention(q, dropout_p, bias)(q, k, v, bias, key_padding_mask, dropout_p)


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
        # (switch version, device type, dtype, dropout active, explicit_trains_faster, implementation)
        self._attn_cache = None

    def _attention_fn(self, q: torch.Tensor, dropout_p: float, bias) -> AttentionFn:
        cached, dropout_on, explicit = self._attn_cache, dropout_p > 0.0, explicit_trains_faster(q, bias)
        if cached is not None and cached[0] == _switches.version and cached[1] == q.device.type \
                and cached[2] is q.dtype and cached[3] == dropout_on and cached[4] == explicit:
            return cached[5]
        fn = resolve_attention(q, dropout_p, bias)
        self._attn_cache = (_switches.version, q.device.type, q.dtype, dropout_on, explicit, fn)
        return fn

    def project(self, x):
        """q (scaled), k, v of tokens ``x`` (..., D), each (..., D)."""
        return self.q_proj(x) * self.scaling, self.k_proj(x), self.v_proj(x)

    def attend(self, q, k, v, attn_bias=None, key_padding_mask=None):
        """(B, S, D) projections -> the heads' outputs as a (B, S, H, Dh) view (not contiguous)."""
        bsz, seq_len, _ = q.shape
        shape = (bsz, seq_len, self.num_heads, self.head_dim)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        dropout_p = self.dropout if self.training else 0.0
        out = self._attention_fn(q, dropout_p, attn_bias)(q, k, v, attn_bias, key_padding_mask, dropout_p)  # B,H,S,Dh
        if self.c_attn is not None:
            out = out * self.c_attn.view(1, -1, 1, 1)
        return out.transpose(1, 2)

    def finish(self, out):
        """Sub-LN and the output projection of the heads' outputs (..., D)."""
        if self.ln is not None:
            out = self.ln(out)
        return self.out_proj(out)

    def forward(self, x, attn_bias=None, key_padding_mask=None):
        """x: (B, S, D); attn_bias: None, (B|1, H, S, S) or a :class:`BucketedBias`; key_padding_mask: (B, S)."""
        out = self.attend(*self.project(x), attn_bias, key_padding_mask)
        return self.finish(out.reshape(x.shape[0], x.shape[1], self.embed_dim))
