"""Mixup / CutMix of a batch with label-smoothed soft targets (timm ``Mixup``, as the official collater uses it).

``Mixup(...)(images, targets, rng)`` -> (mixed images, (B, num_classes) soft targets).  Each image is
mixed with its mirror in the batch (``images.flip(0)``; per element, image ``i`` with ``B-1-i``):

* mixup: ``lam * x + (1 - lam) * x_mirror`` with ``lam ~ Beta(mixup, mixup)``;
* cutmix: a box of area ``(1 - lam)`` of the image (``lam ~ Beta(cutmix, cutmix)``, or side ratios drawn
  from ``cutmix_minmax``) is pasted from the mirror; ``lam`` is then corrected to the box area actually
  pasted after clipping to the image;
* targets: ``lam * smooth(y) + (1 - lam) * smooth(y_mirror)`` with ``smooth(y) = one_hot(y) * (1 - eps) + eps / C``.

Modes: ``batch`` (one draw for the batch), ``pair`` (one per mirrored pair), ``elem`` (one per image).
With probability ``1 - prob`` nothing is mixed (targets are still smoothed); when both are enabled,
cutmix is chosen with ``switch_prob``.  Batches must have an even size (the collater pads odd ones).
Draws come from the ``numpy`` generator passed in, so batches are reproducible.
"""
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

MODES = ("batch", "pair", "elem")


def parse_minmax(value: Union[None, str, Sequence[float]]) -> Optional[Tuple[float, float]]:
    """``cutmix_minmax`` as given in a config (``"0.2,0.8"``, a 2-sequence or None)."""
    if value is None or value == "":
        return None
    parts = value.replace("(", "").replace(")", "").split(",") if isinstance(value, str) else list(value)
    try:
        low, high = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"cutmix_minmax must be two numbers 'min,max', got {value!r}") from None
    if not 0 < low < high <= 1:
        raise ValueError(f"cutmix_minmax must satisfy 0 < min < max <= 1, got {value!r}")
    return low, high


def smooth_one_hot(target: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    off = smoothing / num_classes
    out = torch.full((target.numel(), num_classes), off, dtype=torch.float32)
    return out.scatter_(1, target.long().view(-1, 1), 1.0 - smoothing + off)


def mix_targets(target: torch.Tensor, num_classes: int, lam, smoothing: float = 0.0) -> torch.Tensor:
    """``lam * smooth(y) + (1 - lam) * smooth(y.flip(0))``; ``lam`` a float or a (B, 1) tensor."""
    y1 = smooth_one_hot(target, num_classes, smoothing)
    y2 = smooth_one_hot(target.flip(0), num_classes, smoothing)
    return y1 * lam + y2 * (1.0 - lam)


def cutmix_box(shape, lam: float, rng: np.random.Generator, minmax=None):
    """(top, bottom, left, right) of the pasted box and the corrected ``lam`` (1 - pasted area fraction)."""
    height, width = shape[-2:]
    if minmax is not None:
        cut_h = int(rng.integers(int(height * minmax[0]), int(height * minmax[1])))
        cut_w = int(rng.integers(int(width * minmax[0]), int(width * minmax[1])))
        top, left = int(rng.integers(0, height - cut_h)), int(rng.integers(0, width - cut_w))
        bottom, right = top + cut_h, left + cut_w
    else:
        ratio = np.sqrt(1 - lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        top, bottom = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
        left, right = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
    top, bottom, left, right = int(top), int(bottom), int(left), int(right)
    return (top, bottom, left, right), 1.0 - (bottom - top) * (right - left) / float(height * width)


class Mixup:
    def __init__(self, num_classes: int, mixup: float = 0.0, cutmix: float = 0.0, cutmix_minmax=None,
                 prob: float = 1.0, switch_prob: float = 0.5, mode: str = "batch", label_smoothing: float = 0.0):
        if mode not in MODES:
            raise ValueError(f"mixup_mode must be one of {MODES}, got {mode!r}")
        self.minmax = parse_minmax(cutmix_minmax)
        # timm: a min/max box size turns cutmix on with alpha 1.
        self.mixup_alpha, self.cutmix_alpha = mixup, (1.0 if self.minmax is not None else cutmix)
        if self.mixup_alpha <= 0 and self.cutmix_alpha <= 0:
            raise ValueError("Mixup needs mixup > 0, cutmix > 0 or cutmix_minmax")
        self.num_classes, self.prob, self.switch_prob = num_classes, prob, switch_prob
        self.mode, self.label_smoothing = mode, label_smoothing

    @staticmethod
    def enabled(mixup: float, cutmix: float, cutmix_minmax) -> bool:
        return mixup > 0 or cutmix > 0 or parse_minmax(cutmix_minmax) is not None

    def _draw(self, rng: np.random.Generator) -> Tuple[float, bool]:
        """(lam, use_cutmix) of one mixing decision."""
        if rng.random() >= self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = bool(rng.random() < self.switch_prob)
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(rng.beta(alpha, alpha)), use_cutmix

    def _mix_one(self, dst: torch.Tensor, src: torch.Tensor, lam: float, use_cutmix: bool, rng) -> float:
        """Mix ``src`` into the image(s) ``dst`` in place; returns the (corrected) lam."""
        if lam == 1.0:
            return lam
        if use_cutmix:
            (top, bottom, left, right), lam = cutmix_box(dst.shape, lam, rng, self.minmax)
            dst[..., top:bottom, left:right] = src[..., top:bottom, left:right]
        else:
            dst.mul_(lam).add_(src * (1.0 - lam))
        return lam

    def __call__(self, images: torch.Tensor, target: torch.Tensor, rng: np.random.Generator):
        if images.size(0) % 2:
            raise ValueError(f"mixup/cutmix needs an even batch size, got {images.size(0)}")
        images = images.clone()
        source = images.clone()
        size = images.size(0)
        if self.mode == "batch":
            lam, use_cutmix = self._draw(rng)
            lam = self._mix_one(images, source.flip(0), lam, use_cutmix, rng)
            lam = torch.full((size, 1), lam)
        else:
            count = size // 2 if self.mode == "pair" else size
            lams = torch.ones(count)
            for i in range(count):
                j = size - 1 - i
                lam, use_cutmix = self._draw(rng)
                if self.mode == "pair" and use_cutmix and lam != 1.0:
                    (top, bottom, left, right), lam = cutmix_box(images.shape, lam, rng, self.minmax)
                    images[i, :, top:bottom, left:right] = source[j, :, top:bottom, left:right]
                    images[j, :, top:bottom, left:right] = source[i, :, top:bottom, left:right]
                else:
                    lam = self._mix_one(images[i], source[j], lam, use_cutmix, rng)
                    if self.mode == "pair" and lam != 1.0:
                        images[j] = source[j] * lam + source[i] * (1.0 - lam)
                lams[i] = lam
            if self.mode == "pair":
                lams = torch.cat([lams, lams.flip(0)])
            lam = lams.unsqueeze(1)
        return images, mix_targets(target, self.num_classes, lam, self.label_smoothing)
