"""The shared fusion encoder: pre-LN transformer layers with one FFN per modality.

Self-attention (and both pre-LNs and layer scales) are shared by every modality; each
token goes through the feed-forward network of its own modality.  Vision-language and
audio-language inputs are fused by running attention over the concatenation
``[text ; image|audio]`` with a block-diagonal relative-position bias (cross-modal
entries are 0) and -inf on padded keys.
"""
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .adapters.base import AdapterOutput
from .attention import MultiheadSelfAttention
from .components import DropPath, make_layer_norm, modality_ffn

MODALITIES = ("text", "image", "audio")


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
        for modality in MODALITIES:
            ffn = None
            if modality in modalities:
                ffn = modality_ffn(dim, cfg.ffn_embed_dim, cfg.activation_dropout, cfg.scale_fc)
            setattr(self, f"{modality}_ffn", ffn)
        if cfg.use_layer_scale:
            self.gamma_1 = nn.Parameter(cfg.layer_scale_init_value * torch.ones(dim))
            self.gamma_2 = nn.Parameter(cfg.layer_scale_init_value * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def residual(self, residual, x, gamma):
        x = self.dropout(x)
        if gamma is not None:
            x = gamma * x
        return residual + self.drop_path(x)

    def forward(self, x, segments: List[tuple], attn_bias=None, key_padding_mask=None):
        """x: (B, S, D); segments: [(modality, length), ...] in sequence order."""
        h = self.self_attn(self.self_attn_layer_norm(x), attn_bias, key_padding_mask)
        if self.attn_ln is not None:
            h = self.attn_ln(h)
        x = self.residual(x, h, self.gamma_1)
        h = self.final_layer_norm(x)
        if len(segments) == 1:
            h = getattr(self, f"{segments[0][0]}_ffn")(h)
        else:
            parts = h.split([length for _, length in segments], dim=1)
            h = torch.cat([getattr(self, f"{m}_ffn")(p) for (m, _), p in zip(segments, parts)], dim=1)
        return self.residual(x, h, self.gamma_2)


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
        for modality in MODALITIES:
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

    def forward(self, inputs: List[AdapterOutput], modalities: List[str]):
        """Returns one (B, S_m, D) tensor per input, after the modality's final LayerNorm."""
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
        shared_bias = None
        single_table = all(inp.adapter.num_tables <= 1 for inp in inputs)
        if single_table:
            shared_bias = self.layer_bias(inputs, 0, x.size(1))
        for idx, layer in enumerate(self.layers):
            if self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop:
                continue
            bias = shared_bias if single_table else self.layer_bias(inputs, idx, x.size(1))
            if self.checkpoint_activations and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, segments, bias, key_padding_mask, use_reentrant=False)
            else:
                x = layer(x, segments, bias, key_padding_mask)
        outputs = x.split([length for _, length in segments], dim=1)
        return [getattr(self, f"{m}_layer_norm")(out) for (m, _), out in zip(segments, outputs)]
