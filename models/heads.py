"""Task heads: retrieval projections and the classification head."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .components import make_layer_norm, trunc_normal_


def retrieval_embedding(proj: nn.Linear, features: torch.Tensor) -> torch.Tensor:
    """CLS token (after the modality's final LN) -> Linear -> L2 normalisation."""
    return F.normalize(proj(features[:, 0]), dim=-1)


class MultiheadAttentionPooling(nn.Module):
    """Pools a token sequence with one learned query per head.

    The query is used as is: no query projection and no 1/sqrt(d) scaling (official).
    """

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.q = nn.Parameter(torch.zeros(1, 1, num_heads, self.head_dim))
        trunc_normal_(self.q)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x, padding_mask=None):
        bsz, length, dim = x.shape
        k = self.k_proj(x).view(bsz, length, self.num_heads, self.head_dim)
        v = self.v_proj(x).view(bsz, length, self.num_heads, self.head_dim)
        scores = torch.einsum("bqhd,bkhd->bhqk", self.q.expand(bsz, -1, -1, -1).to(x.dtype), k)
        if padding_mask is not None and padding_mask.any():
            scores = scores.masked_fill(padding_mask[:, None, None, :], float("-inf"))
        softmax_dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
        probs = torch.softmax(scores.to(softmax_dtype), dim=-1).to(x.dtype)
        pooled = torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(bsz, dim)
        return self.out_proj(pooled)


class ClassifyHead(nn.Module):
    """Attention pooling (or CLS) -> LayerNorm -> optional pooler -> 2-layer classifier."""

    def __init__(self, embed_dim, num_heads, num_classes, attn_pooling=False, use_pooler=False,
                 pooler_dropout=0.0, head_scale_ratio=1, use_two_images=False):
        super().__init__()
        self.attn_pooling = attn_pooling
        self.attn_pooling_func = MultiheadAttentionPooling(embed_dim, num_heads) if attn_pooling else None
        self.norm = make_layer_norm(embed_dim)
        self.pooler = None
        if use_pooler:
            self.pooler = nn.Sequential(nn.Dropout(pooler_dropout), nn.Linear(embed_dim, embed_dim),
                                        nn.Tanh(), nn.Dropout(pooler_dropout))
        in_dim = embed_dim * (2 if use_two_images else 1)
        inner = embed_dim * head_scale_ratio
        self.classifier = nn.Sequential(
            nn.Linear(in_dim, inner), make_layer_norm(inner), nn.GELU(), nn.Linear(inner, num_classes)
        )

    def pool(self, features, padding_mask):
        if self.attn_pooling:
            # CLS is excluded from attention pooling.
            x = self.norm(self.attn_pooling_func(features[:, 1:], padding_mask[:, 1:]))
        else:
            x = features[:, 0]
        return self.pooler(x) if self.pooler is not None else x

    def forward(self, features, padding_mask, features_2=None, padding_mask_2=None):
        x = self.pool(features, padding_mask)
        if features_2 is not None:
            x = torch.cat([x, self.pool(features_2, padding_mask_2)], dim=-1)
        return self.classifier(x)
