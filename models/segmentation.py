"""Semantic segmentation on the ONE-PEACE image encoder: UperNet decoder (plain torch).

The encoder (``encoder_wrapper``, official keys) gives patch maps (B, D, H/16, W/16) of four
chosen layers (``forward_intermediates(..., norm=True, output_fmt="NCHW")``); BEiT's adapters turn
them into a pyramid at strides 4, 8, 16, 32 (deconv x4, deconv x2, identity, max-pool), and mmseg's
``UPerHead`` (pyramid pooling on the coarsest level + FPN, fused at stride 4) predicts class
logits, upsampled bilinearly to the input size.  An optional FCN head on the stride-16 level
gives the auxiliary logits (training only).  Everything of the decoder lives under ``seg_head`` /
``aux_head``: a checkpoint without them starts them fresh (``models/checkpoint.py``).

Differences from mmseg/BEiT: GroupNorm instead of (Sync)BatchNorm in the decoder (independent of
the per-GPU batch, same in training and sliding-window inference), and the intermediate features
go through the image branch's final LayerNorm (learned, so every level starts on the scale the
checkpoint was trained for).  The official ONE-PEACE ADE20K result used ViT-Adapter + Mask2Former
on another framework.

``slide_logits`` is mmseg's sliding-window inference (``slide_inference``) with overlap averaging;
windows of an image smaller than the crop are zero-padded (after normalisation, as mmseg's Pad).
"""
import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .components import init_one_peace_params
from .one_peace import _EncoderModel
from .wrapper import ModelWrapper


def default_layers(num_layers: int) -> List[int]:
    """The quarter points of the stack: 12 layers -> 2, 5, 8, 11; 40 -> 9, 19, 29, 39."""
    return [max(0, round(num_layers * (k + 1) / 4) - 1) for k in range(4)]


def parse_layers(text: Optional[str], num_layers: int) -> List[int]:
    if not text:
        return default_layers(num_layers)
    try:
        layers = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError(f"seg_layers must be four comma-separated layer indices, got {text!r}") from None
    if len(layers) != 4 or not all(-num_layers <= i < num_layers for i in layers):
        raise ValueError(f"seg_layers must be four layer indices in [-{num_layers}, {num_layers}), got {text!r}")
    return [i % num_layers for i in layers]


def _norm(channels: int) -> nn.GroupNorm:
    # At most 32 groups of at least 4 channels: the PPM's 1x1 pooled maps then still have several
    # values per group (one channel per group would normalise every value to 0).
    return nn.GroupNorm(math.gcd(32, max(1, channels // 4)), channels)


class ConvModule(nn.Sequential):
    """conv (no bias) -> norm -> ReLU, mmseg's ConvModule."""

    def __init__(self, cin: int, cout: int, kernel: int):
        super().__init__(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), _norm(cout),
                         nn.ReLU(inplace=True))


def resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class PyramidAdapters(nn.Module):
    """ViT maps at stride 16 -> strides 4, 8, 16, 32 (BEiT's fpn1..fpn4)."""

    def __init__(self, dim: int):
        super().__init__()
        self.fpn1 = nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, 2), _norm(dim), nn.GELU(),
                                  nn.ConvTranspose2d(dim, dim, 2, 2))
        self.fpn2 = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(2, 2)

    def forward(self, maps: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        return [f(x) for f, x in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), maps)]


class UperHead(nn.Module):
    """mmseg ``UPerHead``: PPM on the last level, top-down FPN, fusion of all levels at the first."""

    def __init__(self, dim: int, channels: int, num_classes: int, pool_scales=(1, 2, 3, 6), dropout=0.1):
        super().__init__()
        self.pool_scales = tuple(pool_scales)
        self.psp_modules = nn.ModuleList(ConvModule(dim, channels, 1) for _ in self.pool_scales)
        self.bottleneck = ConvModule(dim + len(self.pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvModule(dim, channels, 1) for _ in range(3))
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3) for _ in range(3))
        self.fpn_bottleneck = ConvModule(4 * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def psp(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x] + [resize(conv(F.adaptive_avg_pool2d(x, scale)), x.shape[2:])
                      for scale, conv in zip(self.pool_scales, self.psp_modules)]
        return self.bottleneck(torch.cat(outs, dim=1))

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, levels)] + [self.psp(levels[3])]
        for i in range(3, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)] + [laterals[3]]
        size = outs[0].shape[2:]
        fused = self.fpn_bottleneck(torch.cat([outs[0]] + [resize(o, size) for o in outs[1:]], dim=1))
        return self.conv_seg(self.dropout(fused))


class FCNHead(nn.Module):
    """mmseg ``FCNHead`` (one 3x3 conv, no input concat): the auxiliary head."""

    def __init__(self, dim: int, channels: int, num_classes: int, dropout=0.1):
        super().__init__()
        self.convs = ConvModule(dim, channels, 3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        return self.conv_seg(self.dropout(self.convs(x)))


class SegmentationHead(nn.Module):
    def __init__(self, dim, channels, num_classes, pool_scales, dropout):
        super().__init__()
        self.adapters = PyramidAdapters(dim)
        self.decode = UperHead(dim, channels, num_classes, pool_scales, dropout)

    def forward(self, maps):
        levels = self.adapters(maps)
        return self.decode(levels), levels


class OnePeaceSegmentationModel(_EncoderModel):
    """Image encoder + UperNet; ``forward(src_images)`` -> logits (B, C, H, W), plus the auxiliary
    logits as a second output while training with an auxiliary head."""

    def __init__(self, cfg, num_classes: int, pad_idx: int = 1):
        super().__init__()
        enc = cfg.encoder
        self.head_type = "image"
        self.modalities = ("image",)
        self.num_classes = num_classes
        # One rel-pos table per layer, as the classify model (a shared table is copied on load).
        self.encoder_wrapper = ModelWrapper(enc, self.modalities, None, pad_idx, enc.layers)
        self.layers = parse_layers(cfg.seg_layers, enc.layers)
        scales = [int(s) for s in str(cfg.seg_pool_scales).split(",")]
        self.seg_head = SegmentationHead(enc.embed_dim, cfg.seg_channels, num_classes, scales, cfg.seg_dropout)
        self.aux_head = FCNHead(enc.embed_dim, cfg.aux_channels, num_classes, cfg.seg_dropout) \
            if cfg.aux_head else None
        self.apply(init_one_peace_params)

    def feature_maps(self, src_images: torch.Tensor) -> List[torch.Tensor]:
        """(B, D, H/16, W/16) maps of the four chosen layers (a layer may repeat)."""
        unique = sorted(set(self.layers))
        maps = self.forward_intermediates("image", unique, norm=True, output_fmt="NCHW",
                                          src_images=src_images)["image"]
        return [maps[unique.index(i)] for i in self.layers]

    def forward(self, src_images: torch.Tensor):
        logits, levels = self.seg_head(self.feature_maps(src_images))
        size = src_images.shape[2:]
        logits = resize(logits, size)
        if self.training and self.aux_head is not None:
            return logits, resize(self.aux_head(levels[2]), size)
        return logits


def window_starts(length: int, crop: int, stride: int) -> List[int]:
    """mmseg's window grid along one side: stride steps, the last window flush with the end."""
    count = max(length - crop + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride + crop, length) - crop, 0) for i in range(count)})


def slide_logits(forward: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, crop: int,
                 stride: int, num_classes: int, windows_per_batch: int = 8) -> torch.Tensor:
    """Logits (C, H, W) of one normalised image (3, H, W): ``forward`` on crop x crop windows at
    ``stride``, overlapping logits averaged; a side shorter than ``crop`` is zero-padded."""
    if stride <= 0 or stride > crop:
        raise ValueError(f"slide stride must be in (0, crop={crop}], got {stride}")
    _, height, width = image.shape
    boxes: List[Tuple[int, int, int, int]] = [
        (y, x, min(y + crop, height), min(x + crop, width))
        for y in window_starts(height, crop, stride) for x in window_starts(width, crop, stride)]
    out = image.new_zeros((num_classes, height, width), dtype=torch.float32)
    count = image.new_zeros((1, height, width), dtype=torch.float32)
    for start in range(0, len(boxes), windows_per_batch):
        chunk = boxes[start:start + windows_per_batch]
        batch = torch.stack([F.pad(image[:, y0:y1, x0:x1], (0, crop - (x1 - x0), 0, crop - (y1 - y0)))
                             for y0, x0, y1, x1 in chunk])
        logits = forward(batch).float()
        for (y0, x0, y1, x1), window in zip(chunk, logits):
            out[:, y0:y1, x0:x1] += window[:, :y1 - y0, :x1 - x0]
            count[:, y0:y1, x0:x1] += 1
    return out / count
