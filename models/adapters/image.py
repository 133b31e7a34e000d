"""Image adapter: hierarchical-MLP patch embedding + CLS + 2-D abs/rel positions."""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..components import LayerNorm2D, trunc_normal_
from ..relative_position import image_bucket_count, make_image_bucket_position
from .base import AdapterOutput, ModalityAdapter, gather_bucket, gather_tokens, preserve_positions, require_input

PATCH_SIZE = 16


@dataclass
class ImageAdapterConfig:
    bucket_size: int = 16
    rel_bucket_size: int = 16
    layernorm_embedding: bool = False
    add_type_embedding: bool = False
    vision_encoder_type: str = "hmlp"  # mlp | hmlp | none
    shrink_alpha: float = 1.0
    dropout: float = 0.0
    use_attn_bias: bool = False


def build_patch_embedding(kind: str, embed_dim: int):
    if kind == "hmlp":
        # Non-overlapping convs with total stride 16: 4 -> 2 -> 2 (indices are state-dict keys).
        hidden = embed_dim // 4
        return HierarchicalMLP(
            nn.Conv2d(3, hidden, kernel_size=4, stride=4),
            LayerNorm2D(hidden),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, kernel_size=2, stride=2),
            LayerNorm2D(hidden),
            nn.GELU(),
            nn.Conv2d(hidden, embed_dim, kernel_size=2, stride=2),
        )
    if kind == "mlp":
        return nn.Conv2d(3, embed_dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE, bias=False)
    if kind == "none":
        return None
    raise ValueError(f"unknown vision_encoder_type {kind!r} (expected hmlp, mlp or none)")


class HierarchicalMLP(nn.Sequential):
    """The hmlp patch embedding: non-overlapping convs 4 -> 2 -> 2, each followed (but the last) by a
    channel LayerNorm and GELU; (B, 3, P, P) -> (B, D, P/16, P/16).

    The convs run as matrix multiplies, in training too: they do not overlap (kernel = stride), so each
    is one multiply over the groups of pixels (then of 2x2 cells) it covers.  The pixels are put in that
    nested order once, and the LayerNorms run over contiguous channels, with none of the permutes around
    each of them that the (B, C, H, W) layout needs.  Same sums as the convs, in another order; forward +
    backward 1.2-1.3x (fp32) and 1.5-1.6x (bf16) faster (``bench/front_ends.py``).  Traced for ONNX it
    runs :meth:`forward_convs`, which the runtime fuses."""

    def forward(self, images):
        if torch.jit.is_tracing():
            return self.forward_convs(images)
        return self.forward_matmuls(images)

    def forward_convs(self, images):
        """The official layout: the convs over (B, C, H, W)."""
        return super().forward(images)

    def forward_matmuls(self, images):
        conv1, norm1, act1, conv2, norm2, act2, conv3 = self
        bsz, channels, side = images.shape[:3]
        grid = side // PATCH_SIZE
        # (B, C, y, x) with y = 16 a + 8 b + 4 c + d -> (B, a_y, a_x, b_y, b_x, c_y, c_x, C, d_y, d_x)
        x = images.reshape(bsz, channels, grid, 2, 2, 4, grid, 2, 2, 4).permute(0, 2, 6, 3, 7, 4, 8, 1, 5, 9)
        x = x.reshape(bsz, grid, grid, 2, 2, 2, 2, channels * 16)
        x = act1(norm1.layer_norm(F.linear(x, conv1.weight.reshape(conv1.out_channels, -1), conv1.bias)))
        for conv, norm, act in ((conv2, norm2, act2), (conv3, None, None)):
            # the (c_y, c_x, C) cells of each 2x2 group against the weight in (out, ky, kx, in) order
            x = x.reshape(*x.shape[:-3], -1)
            x = F.linear(x, conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1), conv.bias)
            if norm is not None:
                x = act(norm.layer_norm(x))
        return x.permute(0, 3, 1, 2)  # (B, D, g, g), a view: flatten(2).transpose(1, 2) copies nothing


def resize_grid_pos_embed(pos_embed: torch.Tensor, window: int) -> torch.Tensor:
    """Bicubically resize the grid part of a (g*g+1, D) table to window*window (+CLS row)."""
    grid = int(math.isqrt(pos_embed.size(0) - 1))
    if grid == window:
        return pos_embed
    cls_pos, grid_pos = pos_embed[:1], pos_embed[1:]
    grid_pos = grid_pos.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    # Interpolated in float32 like the official code, whatever the model dtype.
    grid_pos = F.interpolate(grid_pos.float(), size=(window, window), mode="bicubic", align_corners=False)
    grid_pos = grid_pos.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(window * window, -1)
    return torch.cat([cls_pos, grid_pos], dim=0)


class ImageAdapter(ModalityAdapter):
    NO_WEIGHT_DECAY = ("cls_embedding", "pos_embed")

    def __init__(self, cfg, embed_dim, attention_heads, num_tables=1, **unused):
        super().__init__(cfg, embed_dim, attention_heads, image_bucket_count(cfg.rel_bucket_size), num_tables)
        self.bucket_size = cfg.bucket_size
        self.rel_bucket_size = cfg.rel_bucket_size
        self.embed_images = build_patch_embedding(cfg.vision_encoder_type, embed_dim)
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, embed_dim))
        trunc_normal_(self.cls_embedding)
        num_positions = cfg.bucket_size ** 2 + 1
        self.pos_embed = nn.Parameter(torch.zeros(num_positions, embed_dim))
        trunc_normal_(self.pos_embed)
        self.register_buffer("position_idx", torch.arange(num_positions))
        if cfg.add_type_embedding:
            self.type_embedding_2 = nn.Parameter(torch.zeros(1, 1, embed_dim))
            trunc_normal_(self.type_embedding_2)
        else:
            self.type_embedding_2 = None
        if self.use_attn_bias:
            self.register_buffer("rp_bucket", make_image_bucket_position(cfg.rel_bucket_size))

    def positions(self, window: int) -> torch.Tensor:
        return resize_grid_pos_embed(self.pos_embed, window).unsqueeze(0)

    def _window(self, src_images) -> int:
        """The patch grid's side for ``src_images`` (B, 3, P, P), after checking them."""
        if src_images.dim() != 4 or src_images.size(1) != 3:
            raise ValueError(f"src_images must be (B, 3, H, W), got {tuple(src_images.shape)}")
        height, width = src_images.shape[-2:]
        if height != width or height % PATCH_SIZE:
            raise ValueError(f"images must be square with a side divisible by {PATCH_SIZE}, got {height}x{width}")
        window = height // PATCH_SIZE
        if self.use_attn_bias and window != self.rel_bucket_size:
            raise ValueError(
                f"{height}px images need image_adapter.rel_bucket_size={window} (the model was built with "
                f"{self.rel_bucket_size}); build the model with patch_image_size={height}"
            )
        return window

    def embed_patches(self, src_images) -> torch.Tensor:
        """Images (B, 3, P, P) -> patch embeddings (B, (P/16)², D) row-major, before CLS, positions and masking."""
        self._window(src_images)
        return self._embed_checked(src_images)

    def _embed_checked(self, src_images) -> torch.Tensor:
        """:meth:`embed_patches` of images :meth:`_window` has already checked."""
        if self.embed_images is None:
            raise RuntimeError("this image adapter has no patch embedding (decoder adapter)")
        return self.embed_images(src_images).flatten(2).transpose(1, 2)

    def forward(self, inputs, preserve_ids=None):
        """``inputs``: ``src_images`` (B, 3, P, P), optionally ``is_second_image`` (NLVR2's second image gets
        ``type_embedding_2``) and ``image_patches``: the output of :meth:`embed_patches` for these images, when
        the caller runs several views of one batch (the pretraining criterion does) and embeds them once."""
        src_images = require_input(inputs, "src_images", "image")
        is_second_image = bool(inputs.get("is_second_image", False))
        window = self._window(src_images)
        bsz = src_images.size(0)
        x = inputs.get("image_patches")
        if x is None:
            x = self._embed_checked(src_images)
        elif x.shape != (bsz, window * window, self.embed_dim):
            raise ValueError(f"image_patches must be (B, patches, D) = {(bsz, window * window, self.embed_dim)} for "
                             f"src_images of shape {tuple(src_images.shape)}, got {tuple(x.shape)}")
        x = torch.cat([self.cls_embedding.expand(bsz, -1, -1), x], dim=1)
        x = x + self.positions(window)
        if is_second_image and self.type_embedding_2 is not None:
            x = x + self.type_embedding_2
        full_padding_mask = padding_mask = torch.zeros(bsz, x.size(1), dtype=torch.bool, device=x.device)
        bucket = self.rp_bucket if self.use_attn_bias else None
        if preserve_ids is not None:
            index, padding_mask = preserve_positions(preserve_ids)
            x = gather_tokens(x, index)
            bucket = gather_bucket(bucket, index) if bucket is not None else None
        return AdapterOutput(self.finish_embedding(x), padding_mask, bucket, self, full_padding_mask)

    def forward_decoder(self, embeds, preserve_ids, mask_token, full_padding_mask):
        length = full_padding_mask.size(1)
        x = self.scatter_decoder_input(embeds, preserve_ids, mask_token, length)
        x = x + self.positions(int(math.isqrt(length - 1)))
        return AdapterOutput(self.finish_embedding(x), full_padding_mask, None, self)
