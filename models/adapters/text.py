"""Text adapter: token embeddings + CLS + learned absolute positions + T5 rel-pos buckets."""
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..components import trunc_normal_
from ..relative_position import make_token_bucket_position, token_bucket_count
from .base import AdapterOutput, ModalityAdapter, gather_bucket, gather_tokens, preserve_positions, require_input

TEXT_POSITIONS = 514  # fixed table size, independent of the config


@dataclass
class TextAdapterConfig:
    bucket_size: int = 256
    layernorm_embedding: bool = False
    add_type_embedding: bool = False
    shrink_alpha: float = 1.0
    dropout: float = 0.0
    use_attn_bias: bool = False


class TextAdapter(ModalityAdapter):
    NO_WEIGHT_DECAY = ("cls_embedding", "embed_positions.weight")

    def __init__(self, cfg, embed_dim, attention_heads, num_tables=1, max_positions=1024, vocab_size=None,
                 pad_idx=1):
        super().__init__(cfg, embed_dim, attention_heads, token_bucket_count(cfg.bucket_size), num_tables)
        self.pad_idx = pad_idx
        self.embed_tokens = None
        if vocab_size is not None:  # the pretraining decoder has no token table
            self.embed_tokens = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_idx)
            trunc_normal_(self.embed_tokens.weight)
            nn.init.zeros_(self.embed_tokens.weight[pad_idx])
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, embed_dim))
        trunc_normal_(self.cls_embedding)
        self.embed_positions = nn.Embedding(TEXT_POSITIONS, embed_dim)
        trunc_normal_(self.embed_positions.weight)
        if self.use_attn_bias:
            self.register_buffer("rp_bucket", make_token_bucket_position(cfg.bucket_size, max_positions))

    def padding_mask(self, src_tokens):
        cls_pad = src_tokens.new_zeros(src_tokens.size(0), 1, dtype=torch.bool)
        return torch.cat([cls_pad, src_tokens.eq(self.pad_idx)], dim=1)

    def lookup_tokens(self, src_tokens) -> torch.Tensor:
        """Token ids (B, L) -> their embeddings (B, L, D), before CLS, positions and masking."""
        if self.embed_tokens is None:
            raise RuntimeError("this text adapter has no token table (decoder adapter)")
        if src_tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"src_tokens must be an integer tensor, got {src_tokens.dtype}")
        return self.embed_tokens(src_tokens)

    def forward(self, inputs, preserve_ids=None):
        """``inputs``: ``src_tokens`` (B, L) and optionally ``token_embeddings``: the output of
        :meth:`lookup_tokens` for these tokens, when the caller runs several views of one batch (the
        pretraining criterion does): one lookup, whose backward builds the table-sized gradient once."""
        src_tokens = require_input(inputs, "src_tokens", "text")
        bsz, num_tokens = src_tokens.shape
        length = num_tokens + 1
        if length > TEXT_POSITIONS:
            raise ValueError(f"text of {num_tokens} tokens exceeds the {TEXT_POSITIONS - 1} positions")
        tokens = inputs.get("token_embeddings")
        if tokens is None:
            tokens = self.lookup_tokens(src_tokens)
        elif tokens.shape != (bsz, num_tokens, self.embed_dim):
            raise ValueError(f"token_embeddings must be (B, L, D) = {(bsz, num_tokens, self.embed_dim)} for "
                             f"src_tokens of shape {tuple(src_tokens.shape)}, got {tuple(tokens.shape)}")
        x = torch.cat([self.cls_embedding.expand(bsz, -1, -1), tokens], dim=1)
        x = x + self.embed_positions.weight[:length].unsqueeze(0)
        full_padding_mask = padding_mask = self.padding_mask(src_tokens)
        bucket = self.rp_bucket[:length, :length] if self.use_attn_bias else None
        if preserve_ids is not None:
            index, padding_mask = preserve_positions(preserve_ids)
            x = gather_tokens(x, index)
            bucket = gather_bucket(bucket, index) if bucket is not None else None
        return AdapterOutput(self.finish_embedding(x), padding_mask, bucket, self, full_padding_mask)

    def forward_decoder(self, embeds, preserve_ids, mask_token, full_padding_mask):
        """Full-length decoder input from the kept encoder tokens (no rel-pos bias)."""
        length = full_padding_mask.size(1)
        x = self.scatter_decoder_input(embeds, preserve_ids, mask_token, length)
        x = x + self.embed_positions.weight[:length].unsqueeze(0)
        return AdapterOutput(self.finish_embedding(x), full_padding_mask, None, self)
