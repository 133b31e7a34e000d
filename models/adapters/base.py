"""What every modality adapter shares: relative-position tables and token gathering.

An adapter turns raw input into a (B, S, D) token sequence, a (B, S) padding mask and
a bucket-index map from which each layer's relative-position bias is looked up.
For the masked ("student") forward of pretraining, the adapter keeps only the
positions listed in ``preserve_ids`` (CLS included; ``-1`` pads the batch).

Every adapter has the same interface (the modality registry relies on it):

* ``__init__(cfg, embed_dim, attention_heads, num_tables=1, max_positions=1024, vocab_size=None,
  pad_idx=1)`` -- ``cfg`` is the modality's adapter config; unused arguments are ignored.
* ``forward(inputs, preserve_ids=None) -> AdapterOutput`` -- ``inputs`` is the ``net_input``
  dict; the adapter reads its own keys (``Modality.input_keys``).
* ``forward_decoder(embeds, preserve_ids, mask_token, full_padding_mask) -> AdapterOutput`` --
  the student path's decoder input: mask tokens at full length, the kept encoder tokens back
  at their positions; ``full_padding_mask`` is the encoder output's ``full_padding_mask``.
* ``NO_WEIGHT_DECAY``: parameter names (relative to the adapter) excluded from weight decay.
"""
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

from ..components import make_layer_norm, trunc_normal_


class AdapterOutput(NamedTuple):
    # A tuple (tokens first) so module hooks that look for the first tensor of an output --
    # torch's backward hooks, fairseq's NaN detector -- understand it.
    x: torch.Tensor  # (B, S, D)
    padding_mask: torch.Tensor  # (B, S) bool, True = pad
    bucket: Optional[torch.Tensor]  # (S, S) or (B, S, S) bucket ids, None without rel-pos bias
    adapter: "ModalityAdapter"
    # Padding mask of the whole (unmasked) sequence; differs from padding_mask for a student view
    # (None: the same as padding_mask).
    full_padding_mask: Optional[torch.Tensor] = None

    @property
    def whole_sequence_mask(self) -> torch.Tensor:
        return self.padding_mask if self.full_padding_mask is None else self.full_padding_mask

    def rel_bias(self, layer_idx: int) -> Optional[torch.Tensor]:
        """(1|B, H, S, S) additive bias of the given layer (None without rel-pos bias)."""
        if self.bucket is None:
            return None
        return self.adapter.rel_bias_from_bucket(self.bucket, layer_idx)


def preserve_positions(preserve_ids: torch.Tensor):
    """Gather indices for ``preserve_ids`` and the padding mask of its -1 slots.

    -1 slots are pointed at index ``P - 1`` (an arbitrary valid position) so the
    gather stays in range; they are marked as padding.
    """
    padding_mask = preserve_ids.eq(-1)
    index = preserve_ids.masked_fill(padding_mask, preserve_ids.size(1) - 1)
    return index, padding_mask


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, index[:, :, None].expand(-1, -1, x.size(-1)))


def gather_bucket(bucket: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows and columns of an (S, S) bucket map at per-sample positions -> (B, P, P)."""
    rows = bucket[index]  # B, P, S
    return rows.gather(2, index[:, None, :].expand(-1, index.size(1), -1))


class MissingInputError(ValueError):
    """A required ``net_input`` key is absent (``key`` names it)."""

    def __init__(self, message: str, key: str):
        super().__init__(message)
        self.key = key


def require_input(inputs, key: str, modality: str):
    value = inputs.get(key) if inputs is not None else None
    if value is None:
        raise MissingInputError(f"the {modality} adapter needs {key!r} in its inputs", key)
    return value


class ModalityAdapter(nn.Module):
    """Base class: owns ``rel_pos_table_list`` and the shared embedding post-processing."""

    NO_WEIGHT_DECAY = ("cls_embedding",)

    def __init__(self, cfg, embed_dim: int, attention_heads: int, num_buckets: Optional[int],
                 num_tables: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = attention_heads
        self.use_attn_bias = bool(cfg.use_attn_bias)
        self.shrink_alpha = float(cfg.shrink_alpha)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layernorm_embedding = make_layer_norm(embed_dim) if cfg.layernorm_embedding else None
        self.type_embedding = None
        if cfg.add_type_embedding:
            self.type_embedding = nn.Parameter(torch.zeros(1, 1, embed_dim))
            trunc_normal_(self.type_embedding)
        if self.use_attn_bias:
            self.rel_pos_table_list = nn.ModuleList(
                [nn.Embedding(num_buckets, attention_heads) for _ in range(num_tables)]
            )
            for table in self.rel_pos_table_list:
                nn.init.zeros_(table.weight)
        else:
            self.rel_pos_table_list = None

    @property
    def num_tables(self) -> int:
        return 0 if self.rel_pos_table_list is None else len(self.rel_pos_table_list)

    def rel_bias_from_bucket(self, bucket: torch.Tensor, layer_idx: int) -> torch.Tensor:
        # One table is shared by every layer; with one table per layer, layer i uses table i.
        table = self.rel_pos_table_list[layer_idx if self.num_tables > 1 else 0]
        bias = table(bucket)  # (.., S, S, H)
        if bucket.dim() == 2:
            return bias.permute(2, 0, 1).unsqueeze(0)
        return bias.permute(0, 3, 1, 2)

    def length_groups(self, inputs) -> List[Tuple[Optional[torch.Tensor], dict]]:
        """``[(row indices or None for all, net_input of those rows)]``: groups of rows that run together
        with no row seeing another's padding.  One group by default: padding is masked everywhere."""
        return [(None, inputs)]

    def finish_embedding(self, x: torch.Tensor) -> torch.Tensor:
        if self.type_embedding is not None:
            x = x + self.type_embedding
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        if self.shrink_alpha != 1.0:
            # Scales the gradient reaching the embeddings without changing the values.
            x = x * self.shrink_alpha + x.detach() * (1 - self.shrink_alpha)
        return self.dropout(x)

    def scatter_decoder_input(self, embeds, preserve_ids, mask_token, length):
        """Decoder input: mask token everywhere, encoder outputs back at their positions."""
        bsz = embeds.size(0)
        x = mask_token.to(embeds.dtype).expand(bsz, length, -1).contiguous()
        keep = preserve_ids.ne(-1)
        batch_idx = torch.arange(bsz, device=embeds.device)[:, None].expand_as(preserve_ids)
        x = x.index_put((batch_idx[keep], preserve_ids[keep]), embeds[keep])
        return x
