"""Audio adapter: wav2vec2-style conv feature extractor + conv positional embedding."""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...data_utils.feature_spec import OFFICIAL_FEATURE_ENCODER_SPEC as DEFAULT_FEATURE_ENCODER_SPEC
from ...data_utils.feature_spec import conv_output_frames, parse_feature_encoder_spec, samples_for_frames
from ..components import SamePad, TransposeLast, cpu_fused, make_layer_norm, trunc_normal_
from ..relative_position import make_token_bucket_position, token_bucket_count
from .base import AdapterOutput, ModalityAdapter, gather_bucket, gather_tokens, preserve_positions, require_input

FIXED_AUDIO_POSITIONS = 1026


@dataclass
class AudioAdapterConfig:
    feature_embed_dim: int = 512  # not read: the extractor width comes from the spec
    feature_encoder_spec: Optional[str] = DEFAULT_FEATURE_ENCODER_SPEC
    abs_pos_type: str = "conv"  # conv | fixed
    conv_pos_depth: int = 5
    conv_pos_width: int = 95
    conv_pos_groups: int = 16
    conv_pos_pre_ln: bool = False
    bucket_size: int = 256
    layernorm_embedding: bool = False
    add_type_embedding: bool = False
    shrink_alpha: float = 1.0
    dropout: float = 0.0
    use_attn_bias: bool = False
    conv_bias: bool = False
    freeze_extractor: bool = False  # kept for config compatibility; not read
    # Not an official field.  The official code back-propagates into frames computed from zero
    # padding, where zero-variance LayerNorms inflate gradients (~1e13 seen); True stops that
    # gradient (the forward is unchanged).  False reproduces the official gradients exactly.
    block_padding_gradient: bool = True


def _copy_windows(x, kernel, stride):
    windows = x.unfold(1, kernel, stride).transpose(-1, -2)
    return windows.reshape(*windows.shape[:2], -1).contiguous()  # overlapping: a view until here


class _OverlappingWindows(torch.autograd.Function):
    """The windows' copy, whose backward adds each of the ``kernel`` offsets' gradients back in one strided
    pass: torch's generic ``unfold`` backward took 11% of a tiny stage-2 step and 3.3-4.7x this time
    (``bench/front_ends.py --windows``).  At most two windows overlap in the specs' layers, so the sums are
    the same."""

    @staticmethod
    def forward(ctx, x, kernel, stride):
        ctx.input_shape, ctx.kernel, ctx.stride = x.shape, kernel, stride
        return _copy_windows(x, kernel, stride)

    @staticmethod
    def backward(ctx, grad):
        bsz, length, channels = ctx.input_shape
        kernel, stride, frames = ctx.kernel, ctx.stride, grad.size(1)
        grad = grad.reshape(bsz, frames, kernel, channels)
        if kernel < stride:  # gaps between windows stay zero
            grad_x = grad.new_zeros(bsz, length, channels)
        else:  # offsets below the stride cover [0, stride * frames) once: only the tail needs zeros
            grad_x = grad.new_empty(bsz, length, channels)
            grad_x[:, stride * frames:].zero_()
        for offset in range(kernel):
            rows = grad_x[:, offset: offset + stride * (frames - 1) + 1: stride]
            if offset < stride:
                rows.copy_(grad[:, :, offset])
            else:
                rows.add_(grad[:, :, offset])
        return grad_x, None, None


def conv_windows(x, kernel: int, stride: int):
    """(B, N, C) -> (B, T', kernel * C): each window's frames whole, in order (a conv's input as rows).
    Overlapping windows are a copy of contiguous rows (in the weight's (in, kernel) order it gathers single
    values: that copy took 1.5x the multiply's time); non-overlapping ones a view, copied only where frames
    are left over, so the multiply sees the layout it always had."""
    if kernel == stride:
        frames = (x.size(1) - kernel) // stride + 1
        return x[:, : frames * kernel].reshape(x.size(0), frames, kernel * x.size(2)).contiguous()
    if torch.is_grad_enabled() and x.requires_grad:
        return _OverlappingWindows.apply(x, kernel, stride)
    return _copy_windows(x, kernel, stride)


class ConvFeatureExtractor(nn.Module):
    """Strided 1-D convs over the waveform, each followed by channel LayerNorm and GELU."""

    def __init__(self, spec, dropout=0.0, conv_bias=False):
        super().__init__()
        in_dim = 1
        layers = []
        for dim, kernel, stride in spec:
            conv = nn.Conv1d(in_dim, dim, kernel, stride=stride, bias=conv_bias)
            nn.init.kaiming_normal_(conv.weight)
            layers.append(nn.Sequential(
                conv,
                nn.Dropout(dropout),
                nn.Sequential(TransposeLast(), make_layer_norm(dim), TransposeLast()),
                nn.GELU(),
            ))
            in_dim = dim
        self.conv_layers = nn.ModuleList(layers)

    def forward(self, waveform):  # (B, N) -> (B, C, T)
        # Traced for ONNX: the convs (ONNX has no strided windows over a dynamic length; its runtime fuses convs)
        if torch.jit.is_tracing():
            return self.forward_convs(waveform)
        return self.frames_channels_last(waveform).transpose(1, 2)

    def forward_convs(self, waveform):  # (B, N) -> (B, C, T)
        """The official layout: the convs over (B, C, T), transposed around every LayerNorm."""
        x = waveform.unsqueeze(1)
        for layer in self.conv_layers:
            x = layer(x)
        return x

    def frames_channels_last(self, waveform):  # (B, N) -> (B, T, C)
        """Each conv as one matrix multiply over its windows, in (B, T, C) throughout, so the LayerNorms
        run over contiguous channels and no layer transposes (the conv layout spent ~60% of a bf16 clip's
        time in the front end at 40 GFLOP/s).  Same sums as the convs, in another order; forward +
        backward 2.4x (fp32) and 4.1-4.3x (bf16) faster than the convs on a 2-core AMX CPU
        (``bench/front_ends.py``).  On a CPU each LayerNorm + GELU is one C kernel where it applies
        (``kernels/cpu_fused.py``)."""
        x = waveform.unsqueeze(-1)
        for conv, dropout, norm, act in self.conv_layers:
            kernel, stride = conv.kernel_size[0], conv.stride[0]
            windows = conv_windows(x, kernel, stride)
            weight = conv.weight.transpose(1, 2).reshape(conv.out_channels, -1)
            x = F.linear(windows, weight, conv.bias)
            layer_norm = norm[1]
            if act.approximate == "none" and not (dropout.p and dropout.training) and cpu_fused is not None \
                    and cpu_fused.applies((x,), layer_norm):
                x = cpu_fused.norm_gelu(x, layer_norm.weight, layer_norm.bias, layer_norm.eps)
            else:
                x = act(layer_norm(dropout(x)))
        return x


def conv_positional_embedding(embed_dim, width, depth, groups, pre_ln=False):
    kernel = max(3, width // depth)
    blocks = [
        nn.Sequential(
            nn.Conv1d(embed_dim, embed_dim, kernel, padding=kernel // 2, groups=groups),
            SamePad(kernel),
            TransposeLast(),
            nn.LayerNorm(embed_dim, elementwise_affine=False),
            TransposeLast(),
            nn.GELU(),
        )
        for _ in range(depth)
    ]
    head = [nn.LayerNorm(embed_dim, elementwise_affine=False)] if pre_ln else []
    return nn.Sequential(*head, TransposeLast(), *blocks, TransposeLast())


class AudioAdapter(ModalityAdapter):
    # embed_positions.weight: the decoder's learned positions (the encoder's conv positions are decayed).
    NO_WEIGHT_DECAY = ("cls_embedding", "embed_positions.weight")

    def __init__(self, cfg, embed_dim, attention_heads, num_tables=1, max_positions=1024, **unused):
        super().__init__(cfg, embed_dim, attention_heads, token_bucket_count(cfg.bucket_size), num_tables)
        # The pretraining decoder's audio adapter has no conv stack (spec None).
        self.spec = parse_feature_encoder_spec(cfg.feature_encoder_spec) if cfg.feature_encoder_spec else []
        self.embed_audios = None
        if self.spec:
            feature_dim = self.spec[-1][0]
            self.embed_audios = nn.Sequential(
                ConvFeatureExtractor(self.spec, conv_bias=cfg.conv_bias),
                TransposeLast(),
                make_layer_norm(feature_dim),
                nn.Linear(feature_dim, embed_dim),
            )
        self.abs_pos_type = cfg.abs_pos_type
        self.cls_pos_embed = None
        if cfg.abs_pos_type == "conv":
            self.embed_positions = conv_positional_embedding(
                embed_dim, cfg.conv_pos_width, cfg.conv_pos_depth, cfg.conv_pos_groups, cfg.conv_pos_pre_ln
            )
            self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, embed_dim))
            trunc_normal_(self.cls_pos_embed)
        elif cfg.abs_pos_type == "fixed":
            self.embed_positions = nn.Embedding(FIXED_AUDIO_POSITIONS, embed_dim)
        else:
            raise ValueError(f"unknown audio abs_pos_type {cfg.abs_pos_type!r} (expected conv or fixed)")
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, embed_dim))
        trunc_normal_(self.cls_embedding)
        self.mask_embedding = nn.Parameter(torch.zeros(1, embed_dim))  # kept for checkpoints; unused
        trunc_normal_(self.mask_embedding)
        self.max_positions = max_positions
        self.block_padding_gradient = bool(getattr(cfg, "block_padding_gradient", True))
        if self.use_attn_bias:
            self.register_buffer("rp_bucket", make_token_bucket_position(cfg.bucket_size, max_positions))

    def num_frames(self, num_samples: int, name=None) -> int:
        """Frames of a clip of ``num_samples`` (ValueError, naming ``name``, when it gives none)."""
        return conv_output_frames(num_samples, self.spec, name=name)

    def length_groups(self, inputs):
        """Rows of equal frame count, each group trimmed to its own length.  The conv positional embedding
        runs over padded frames too (official forward), so in one padded batch a clip's embedding depends
        on the longest clip beside it; trimmed to its length it equals the clip embedded alone."""
        masks = inputs.get("audio_padding_masks")
        if masks is None or inputs.get("audio_frames") is not None or not bool(masks[:, 1:].any()):
            return [(None, inputs)]
        frames = (~masks[:, 1:]).sum(dim=1)
        groups = []
        for count in frames.unique().tolist():
            rows = (frames == count).nonzero().squeeze(1)
            samples = samples_for_frames(count, self.spec)
            groups.append((rows, {"src_audios": inputs["src_audios"][rows, :samples],
                                  "audio_padding_masks": masks[rows, :count + 1]}))
        return groups

    def add_positions(self, frames: torch.Tensor) -> torch.Tensor:
        """CLS + frames, plus conv (or fixed) absolute positions."""
        bsz, length = frames.size(0), frames.size(1) + 1
        x = torch.cat([self.cls_embedding.expand(bsz, -1, -1), frames], dim=1)
        if self.abs_pos_type == "conv":
            # Computed over the (possibly padded) frame sequence, as the official code does.
            pos = self.embed_positions(frames)
            return x + torch.cat([self.cls_pos_embed.expand(bsz, -1, -1), pos], dim=1)
        return x + self.embed_positions.weight[:length].unsqueeze(0)

    def extract_frames(self, src_audios) -> torch.Tensor:
        """Waveforms (B, num_samples) -> conv frame features (B, T, D), before positions and masking."""
        if self.embed_audios is None:
            raise RuntimeError("this audio adapter has no feature extractor (decoder adapter)")
        if src_audios.dim() != 2:
            raise ValueError(f"src_audios must be (B, num_samples), got {tuple(src_audios.shape)}")
        return self.embed_audios(src_audios)

    def forward(self, inputs, preserve_ids=None):
        """``inputs``: ``src_audios`` (B, num_samples), optionally ``audio_padding_masks`` (B, T + 1)
        and ``audio_frames``: the output of :meth:`extract_frames` for these waveforms, when the
        caller runs several views of one batch (the pretraining criterion does) and extracts them once."""
        frames = inputs.get("audio_frames")
        audio_padding_masks = inputs.get("audio_padding_masks")
        if frames is None:
            frames = self.extract_frames(require_input(inputs, "src_audios", "audio"))  # B, T, D
        elif frames.dim() != 3 or frames.size(-1) != self.embed_dim:
            raise ValueError(f"audio frames must be (B, T, {self.embed_dim}), got {tuple(frames.shape)}")
        length = frames.size(1) + 1
        if length > self.max_positions:
            raise ValueError(
                f"audio of {frames.size(1)} frames exceeds the {self.max_positions - 1} supported "
                f"(about {(self.max_positions - 1) / 50:.1f} s); shorten it (max_duration)"
            )
        if audio_padding_masks is None:
            audio_padding_masks = torch.zeros(frames.size(0), length, dtype=torch.bool, device=frames.device)
        if audio_padding_masks.shape != (frames.size(0), length):
            raise ValueError(
                f"audio_padding_masks has shape {tuple(audio_padding_masks.shape)} but the waveform gives "
                f"{length} positions (frames + CLS)"
            )
        if self.block_padding_gradient and audio_padding_masks[:, 1:].any():
            # Frames that see only zero padding went through LayerNorms of all-zero vectors, whose
            # gradient is 1/sqrt(eps) times the incoming one, compounding over the conv stack (the
            # conv positions below leak gradient into them).  Same forward, no gradient from padding.
            frames = torch.where(audio_padding_masks[:, 1:, None], frames.detach(), frames)
        bucket = self.rp_bucket[:length, :length] if self.use_attn_bias else None
        padding_mask = audio_padding_masks
        if preserve_ids is not None:
            index, padding_mask = preserve_positions(preserve_ids)
            # Keep the frames first, then compute conv positions on the compacted sequence.
            frames = gather_tokens(frames, index[:, 1:] - 1)
            bucket = gather_bucket(bucket, index) if bucket is not None else None
        x = self.add_positions(frames)
        return AdapterOutput(self.finish_embedding(x), padding_mask, bucket, self, audio_padding_masks)

    def forward_decoder(self, embeds, preserve_ids, mask_token, full_padding_mask):
        length = full_padding_mask.size(1)
        x = self.scatter_decoder_input(embeds, preserve_ids, mask_token, length)
        if self.abs_pos_type != "fixed":
            raise ValueError("the pretraining decoder's audio adapter needs abs_pos_type='fixed'")
        x = x + self.embed_positions.weight[:length].unsqueeze(0)
        return AdapterOutput(self.finish_embedding(x), full_padding_mask, None, self)
