"""The shared fusion encoder: pre-LN transformer layers with one FFN per modality.

Self-attention (and both pre-LNs and layer scales) are shared by every modality; each
token goes through the feed-forward network of its own modality.  Vision-language and
audio-language inputs are fused by running attention over the concatenation
``[text ; image|audio]`` with a block-diagonal relative-position bias (cross-modal
entries are 0) and -inf on padded keys.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .adapters.base import AdapterOutput
from .attention import BucketedBias, MultiheadSelfAttention, bucketed_bias_preferred
from .components import DropPath, make_layer_norm, modality_ffn
from .modalities import modality_names
from .packed_passes import PackedLayout, pack


class TransformerEncoderLayer(nn.Module):
    def __init__(self, cfg, drop_path_rate: float, modalities: Sequence[str]):
        super().__init__()
        dim = cfg.embed_dim
        self.self_attn = MultiheadSelfAttention(
            dim, cfg.attention_heads, dropout=cfg.attention_dropout,
            magneto_scale_attn=cfg.magneto_scale_attn, scale_heads=cfg.scale_heads,
        )
        self.self_attn_layer_norm = make_layer_norm(dim)
        self.attn_ln = make_layer_norm(dim) if cfg.scale_attn else None
        self.final_layer_norm = make_layer_norm(dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.drop_path = DropPath(drop_path_rate)
        for modality in modality_names():
            ffn = None
            if modality in modalities:
                ffn = modality_ffn(dim, cfg.ffn_embed_dim, cfg.activation_dropout, cfg.scale_fc)
            setattr(self, f"{modality}_ffn", ffn)
        if cfg.use_layer_scale:
            self.gamma_1 = nn.Parameter(cfg.layer_scale_init_value * torch.ones(dim))
            self.gamma_2 = nn.Parameter(cfg.layer_scale_init_value * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def residual(self, residual, x, gamma, layout: Optional[PackedLayout] = None):
        """``layout``: x holds packed passes' rows, and stochastic depth drops each pass's samples, all their rows
        (both segments of a fused pass) alike."""
        x = self.dropout(x)
        if gamma is not None:
            x = gamma * x
        if layout is None or not self.drop_path.active():
            return residual + self.drop_path(x)
        return residual + x * layout.per_row([self.drop_path.sample_scale(p.batch, x) for p in layout.passes])[:, None]

    def forward(self, x, segments, attn_bias=None, key_padding_mask=None):
        """x: (B, S, D); segments: [(modality, length), ...] in sequence order.

        Packed passes (:mod:`.packed_passes`): x is (N, D), ``segments`` a :class:`PackedLayout` and
        ``attn_bias`` the passes' biases.  (One entry point, so FSDP2's and checkpointing's hooks see it.)"""
        if isinstance(segments, PackedLayout):
            return self._forward_packed(x, segments, attn_bias)
        h = self.self_attn(self.self_attn_layer_norm(x), attn_bias, key_padding_mask)
        if self.attn_ln is not None:
            h = self.attn_ln(h)
        x = self.residual(x, h, self.gamma_1)
        h = self.final_layer_norm(x)
        if len(segments) == 1:
            h = getattr(self, f"{segments[0][0]}_ffn")(h)
        else:
            # Each segment's rows as one (B * n, D) matrix: with weights that need no gradient (stage 2's frozen
            # text tower, the hub), a linear on the (B, n, D) slice, not contiguous, ran as a batched matmul over
            # B copies of the weight (3.7% of a base stage-2 step).
            parts = h.split([length for _, length in segments], dim=1)
            h = torch.cat([getattr(self, f"{m}_ffn")(p.reshape(-1, p.size(-1))).view(p.shape)
                           for (m, _), p in zip(segments, parts)], dim=1)
        return self.residual(x, h, self.gamma_2)

    def _forward_packed(self, x, layout: PackedLayout, biases):
        attn = self.self_attn
        q, k, v = attn.project(self.self_attn_layer_norm(x))
        heads = [attn.attend(*qkv, bias, p.key_padding_mask)
                 for p, bias, *qkv in zip(layout.passes, biases, *map(layout.unpack, (q, k, v)))]
        h = attn.finish(layout.repack(heads).view(layout.rows, -1))
        if self.attn_ln is not None:
            h = self.attn_ln(h)
        x = self.residual(x, h, self.gamma_1, layout)
        h = self.final_layer_norm(x)
        parts = [getattr(self, f"{m}_ffn")(block) for (m, _, _), block in zip(layout.blocks, layout.split_blocks(h))]
        return self.residual(x, parts[0] if len(parts) == 1 else torch.cat(parts), self.gamma_2, layout)


class FusionEncoder(nn.Module):
    """``fusion_model``: the layer stack plus one final LayerNorm per modality."""

    def __init__(self, cfg, modalities: Sequence[str]):
        super().__init__()
        self.modalities = tuple(modalities)
        num_layers = cfg.layers
        # Linearly increasing stochastic depth (python floats: works on the meta device).
        rates = [cfg.drop_path_rate * i / (num_layers - 1) if num_layers > 1 else 0.0 for i in range(num_layers)]
        self.layers = nn.ModuleList([TransformerEncoderLayer(cfg, rates[i], modalities) for i in range(num_layers)])
        self.layerdrop = float(cfg.layerdrop)
        self.checkpoint_activations = bool(cfg.checkpoint_activations)
        self.register_buffer("version", torch.Tensor([3]))
        for modality in modality_names():
            norm = make_layer_norm(cfg.embed_dim) if modality in modalities else None
            setattr(self, f"{modality}_layer_norm", norm)

    def layer_bias(self, inputs: List[AdapterOutput], layer_idx: int, length: int) -> Optional[torch.Tensor]:
        biases = [inp.rel_bias(layer_idx) for inp in inputs]
        if all(b is None for b in biases):
            return None
        if len(inputs) == 1:
            return biases[0]
        # Block-diagonal bias over the concatenation; cross-modal blocks stay 0.
        ref = next(b for b in biases if b is not None)
        bsz = max(b.size(0) for b in biases if b is not None)
        bias = ref.new_zeros(bsz, ref.size(1), length, length)
        start = 0
        for inp, b in zip(inputs, biases):
            end = start + inp.x.size(1)
            if b is not None:
                bias[:, :, start:end, start:end] = b
            start = end
        return bias

    def bucket_layout(self, inputs: List[AdapterOutput], length: int):
        """The bucket map of the whole sequence for :class:`BucketedBias` (``fused`` attention).

        Returns ``(index, adapters, zero_row)`` -- index: (1|B, S, S) int32; adapters: the
        adapters whose tables index addresses, in table order -- or None without rel-pos
        bias.  One input: its own bucket map.  Several: the distinct adapters' tables are
        concatenated plus one zero row (``zero_row``), and the index is block-diagonal with
        cross-modal entries (and the blocks of inputs without buckets) on the zero row:
        :meth:`bucketed_bias` then equals :meth:`layer_bias`, never materialised.
        """
        if all(inp.bucket is None for inp in inputs):
            return None
        if len(inputs) == 1:
            bucket = inputs[0].bucket
            index = bucket if bucket.dim() == 3 else bucket[None]
            return index.to(torch.int32).contiguous(), [inputs[0].adapter], False
        adapters, offsets, rows = [], {}, 0
        for inp in inputs:
            if inp.bucket is not None and id(inp.adapter) not in offsets:
                offsets[id(inp.adapter)] = rows  # inputs of one adapter (video frames) share its table
                adapters.append(inp.adapter)
                rows += inp.adapter.rel_pos_table_list[0].num_embeddings
        buckets = [inp.bucket for inp in inputs if inp.bucket is not None]
        bsz = max(b.size(0) if b.dim() == 3 else 1 for b in buckets)
        index = torch.full((bsz, length, length), rows, dtype=torch.int32, device=buckets[0].device)
        start = 0
        for inp in inputs:
            end = start + inp.x.size(1)
            if inp.bucket is not None:
                index[:, start:end, start:end] = inp.bucket + offsets[id(inp.adapter)]
            start = end
        return index, adapters, True

    @staticmethod
    def bucketed_bias(layout, layer_idx: int) -> Optional[BucketedBias]:
        """Layer ``layer_idx``'s :class:`BucketedBias` for a :meth:`bucket_layout`."""
        if layout is None:
            return None
        index, adapters, zero_row = layout
        # Table choice as ModalityAdapter.rel_bias_from_bucket: one shared table, or one per layer.
        tables = [a.rel_pos_table_list[layer_idx if a.num_tables > 1 else 0].weight for a in adapters]
        if zero_row:
            tables.append(tables[0].new_zeros(1, tables[0].size(1)))
        return BucketedBias(tables[0] if len(tables) == 1 else torch.cat(tables), index)

    def forward(self, inputs: List[AdapterOutput], modalities: List[str], return_layers=None,
                norm_layers: bool = False):
        """Returns one (B, S_m, D) tensor per input, after the modality's final LayerNorm.

        With ``return_layers`` (layer indices, negative from the end; an int ``n`` = the last ``n``;
        ``"all"``) it returns, for each chosen layer in order, the list of per-input outputs of that
        layer (``norm_layers``: through the modality's final LayerNorm).
        """
        wanted = self.layer_indices(return_layers) if return_layers is not None else ()
        collected = []
        x, segments, key_padding_mask, bias_of = self._prepare(inputs, modalities)
        for idx, layer in enumerate(self.layers):
            if self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop:
                continue
            x = self._run_layer(layer, x, segments, bias_of(idx), key_padding_mask)
            if idx in wanted:
                collected.append(self.split_segments(x, segments, norm_layers))
        if return_layers is not None:
            return collected
        return self.split_segments(x, segments, norm=True)

    def _prepare(self, inputs: List[AdapterOutput], modalities: List[str]):
        """One pass's (x (B, S, D), segments, key padding mask, layer index -> attention bias)."""
        x = torch.cat([inp.x for inp in inputs], dim=1) if len(inputs) > 1 else inputs[0].x
        padding_mask = torch.cat([inp.padding_mask for inp in inputs], dim=1)
        segments = [(m, inp.x.size(1)) for m, inp in zip(modalities, inputs)]
        has_pad = bool(padding_mask.any())
        if has_pad:
            x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
        # Padding is enforced only through the bias: without rel-pos bias (the pretraining
        # decoder) padded keys are attended, as in the official model.
        uses_bias = any(inp.bucket is not None for inp in inputs)
        key_padding_mask = padding_mask if (has_pad and uses_bias) else None
        # With fused attention requested: a (table, bucket map) pair per layer, gathered in
        # the kernel; otherwise the dense (B|1, H, S, S) bias.
        layout = self.bucket_layout(inputs, x.size(1)) if (uses_bias and bucketed_bias_preferred()) else None

        def bias_of(layer_idx):
            if layout is not None:
                return self.bucketed_bias(layout, layer_idx)
            return self.layer_bias(inputs, layer_idx, x.size(1))

        if all(inp.adapter.num_tables <= 1 for inp in inputs):
            shared_bias = bias_of(0)
            if torch.is_tensor(shared_bias):
                # the table lookup is a permuted view: laid out once here, not copied by every layer's SDPA
                shared_bias = shared_bias.contiguous()
            return x, segments, key_padding_mask, lambda layer_idx: shared_bias
        return x, segments, key_padding_mask, bias_of

    def _run_layer(self, layer, *args):
        if self.checkpoint_activations and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def packs_passes(self) -> bool:
        """Whether :meth:`forward_passes` packs: not with layerdrop in training, which skips layers per pass."""
        return not (self.training and self.layerdrop > 0)

    def forward_passes(self, passes: List[Tuple[List[AdapterOutput], List[str]]]) -> List[List[torch.Tensor]]:
        """:meth:`forward` of several passes (``(inputs, modalities)`` each), run packed
        (:mod:`.packed_passes`) where :meth:`packs_passes`, one after another otherwise."""
        if len(passes) < 2 or not self.packs_passes():
            return [self(inputs, list(modalities)) for inputs, modalities in passes]
        x, layout = pack([self._prepare(inputs, list(modalities)) for inputs, modalities in passes])
        for idx, layer in enumerate(self.layers):
            x = self._run_layer(layer, x, layout, [p.bias(idx) for p in layout.passes])
        return layout.split({m: getattr(self, f"{m}_layer_norm")(block)
                             for (m, _, _), block in zip(layout.blocks, layout.split_blocks(x))})

    def split_segments(self, x, segments, norm: bool):
        outputs = x.split([length for _, length in segments], dim=1)
        if not norm:
            return list(outputs)
        return [getattr(self, f"{m}_layer_norm")(out) for (m, _), out in zip(segments, outputs)]

    def layer_indices(self, indices) -> List[int]:
        """Sorted non-negative layer indices from an int (last n), a sequence or ``"all"``."""
        num = len(self.layers)
        if indices == "all":
            return list(range(num))
        if isinstance(indices, int):
            if not 0 < indices <= num:
                raise ValueError(f"return the last n layers with 0 < n <= {num}, got {indices}")
            return list(range(num - indices, num))
        out = []
        for i in indices:
            if not -num <= i < num:
                raise ValueError(f"layer index {i} out of range for {num} layers")
            out.append(i % num)
        return sorted(set(out))
