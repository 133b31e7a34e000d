"""Semantic segmentation data: label maps and the mmseg ADE20K pipeline (image and label together).

Training (mmseg's ``train_pipeline`` for ADE20K, seeded per sample and epoch):

1. ``reduce_zero_label`` (ADE: 0 = "other" -> ignore 255, class k -> k - 1);
2. random rescale: target scale ``(long, short) * U(ratio_range)``, keeping the aspect ratio so the
   image fits inside it (image bilinear, label nearest);
3. random crop ``crop x crop``, re-drawn up to 10 times while one class covers more than
   ``cat_max_ratio`` of the crop's labelled pixels;
4. horizontal flip (p 0.5);
5. photometric distortion on the image (kornia, each with p 0.5: brightness +-32/255, contrast and
   saturation x U(0.5, 1.5), hue +-18/180 of the circle; mmseg draws the contrast step before or
   after saturation/hue, kornia's order is fixed);
6. CLIP normalisation, then padding to ``crop x crop`` (image 0, label ``ignore_index``).

Evaluation: the image is rescaled to ``(long, short)`` with the aspect kept (the label is kept at
its original size: logits are resized back to it), as mmseg's test pipeline.
"""
import os
from typing import Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .augment import Augment
from .image import normalize, to_tensor

IGNORE_INDEX = 255


def load_label_map(path: str) -> np.ndarray:
    """A single-channel class-index image (PNG mode L, P, I or I;16) -> (H, W) int64 array."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label map not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise ValueError(f"mode {img.mode}: a label map must be a single-channel class-index image "
                                 "(PNG mode L or P), not a colour rendering")
            return np.asarray(img).astype(np.int64)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read label map {path}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"cannot read label map {path}: {exc}") from None


def prepare_label(label: np.ndarray, num_classes: int, reduce_zero_label: bool, path: str,
                  ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Apply ``reduce_zero_label`` and check every value is a class id or ``ignore_index``."""
    label = label.copy()
    if reduce_zero_label:
        ignored = label == ignore_index
        label[label == 0] = ignore_index + 1  # marker, so the shift below keeps it at ignore_index
        label -= 1
        label[ignored] = ignore_index
    bad = ((label < 0) | (label >= num_classes)) & (label != ignore_index)
    if bad.any():
        values = np.unique(label[bad] + (1 if reduce_zero_label else 0))  # as written in the file
        allowed = f"0 (other) and 1..{num_classes}, reduce_zero_label on" if reduce_zero_label \
            else f"0..{num_classes - 1}"
        raise ValueError(f"label map {path} has values {values[:10].tolist()} outside the {num_classes} classes "
                         f"(allowed: {allowed}; ignore {ignore_index})")
    return label


def rescale_size(width: int, height: int, long: float, short: float) -> Tuple[int, int]:
    """mmcv ``rescale_size`` with keep_ratio: the largest (w, h) with the image's aspect ratio whose
    long side is <= ``long`` and short side <= ``short``."""
    factor = min(long / max(width, height), short / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def random_crop_box(label: np.ndarray, crop: int, rng: np.random.Generator, cat_max_ratio: float,
                    ignore_index: int = IGNORE_INDEX) -> Tuple[int, int, int, int]:
    """mmseg ``RandomCrop``: (y0, x0, y1, x1), re-drawn up to 10 times while one class covers more
    than ``cat_max_ratio`` of the labelled pixels (a crop with a single class is re-drawn too)."""
    height, width = label.shape

    def draw():
        y0 = int(rng.integers(0, max(height - crop, 0) + 1))
        x0 = int(rng.integers(0, max(width - crop, 0) + 1))
        return y0, x0, min(y0 + crop, height), min(x0 + crop, width)

    box = draw()
    if cat_max_ratio < 1:
        for _ in range(10):
            y0, x0, y1, x1 = box
            values, counts = np.unique(label[y0:y1, x0:x1], return_counts=True)
            counts = counts[values != ignore_index]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            box = draw()
    return box


def photometric_distortion() -> Augment:
    import kornia.augmentation as K

    return Augment(K.RandomBrightness((1 - 32 / 255, 1 + 32 / 255), p=0.5), K.RandomContrast((0.5, 1.5), p=0.5),
                   K.RandomSaturation((0.5, 1.5), p=0.5), K.RandomHue((-18 / 180, 18 / 180), p=0.5))


class SegmentationTransform:
    """The training and evaluation pipelines above; ``photometric=False`` leaves colours untouched."""

    def __init__(self, crop: int, long: int, short: int, ratio_range=(0.5, 2.0), cat_max_ratio=0.75,
                 photometric=True, ignore_index: int = IGNORE_INDEX):
        self.crop, self.long, self.short = crop, long, short
        self.ratio_range, self.cat_max_ratio, self.ignore_index = tuple(ratio_range), cat_max_ratio, ignore_index
        self.photometric = photometric_distortion() if photometric else None

    def train(self, image: Image.Image, label: np.ndarray, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(3, crop, crop) normalised image, (crop, crop) int64 label."""
        rng = np.random.default_rng(seed)
        ratio = rng.uniform(*self.ratio_range)
        size = rescale_size(image.width, image.height, self.long * ratio, self.short * ratio)
        image = image.resize(size, Image.BILINEAR)
        label = np.asarray(Image.fromarray(label.astype(np.int32), mode="I").resize(size, Image.NEAREST),
                           dtype=np.int64)
        y0, x0, y1, x1 = random_crop_box(label, self.crop, rng, self.cat_max_ratio, self.ignore_index)
        pixels, label = to_tensor(image.crop((x0, y0, x1, y1))), torch.from_numpy(label[y0:y1, x0:x1].copy())
        if rng.random() < 0.5:
            pixels, label = pixels.flip(-1), label.flip(-1)
        if self.photometric is not None:
            pixels = self.photometric(pixels, int(rng.integers(0, 2 ** 31)))
        pad = (0, self.crop - pixels.size(2), 0, self.crop - pixels.size(1))
        pixels = torch.nn.functional.pad(normalize(pixels), pad)
        label = torch.nn.functional.pad(label, pad, value=self.ignore_index)
        return pixels, label

    def evaluate(self, image: Image.Image) -> torch.Tensor:
        """(3, h, w) normalised image at the test scale."""
        return normalize(to_tensor(image.resize(rescale_size(image.width, image.height, self.long, self.short),
                                                Image.BILINEAR)))


def label_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours: ADE20K's for its 150 classes, then a fixed pseudo-random draw."""
    from .ade20k import PALETTE

    extra = max(0, num_classes - len(PALETTE))
    more = np.random.default_rng(0).integers(0, 256, size=(extra, 3), dtype=np.uint8)
    return np.concatenate([PALETTE, more])[:num_classes]


def save_mask_png(mask: np.ndarray, path: str, num_classes: int, reduce_zero_label: bool) -> None:
    """Write predicted class ids as a palette PNG in the annotation convention of the input:
    value = class id + 1 with ``reduce_zero_label`` (0 then stays black, "other"), else the class id."""
    offset = 1 if reduce_zero_label else 0
    if num_classes + offset > 256:
        raise ValueError(f"{num_classes} classes do not fit an 8-bit palette PNG")
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[offset:offset + num_classes] = label_palette(num_classes)
    img = Image.fromarray((mask.astype(np.int64) + offset).astype(np.uint8), mode="P")
    img.putpalette(palette.flatten().tolist())
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img.save(path)

