"""Image loading and the ONE-PEACE image transforms, reproducing torchvision's numerics.

torchvision cannot be used here, so Resize/ToTensor/Normalize/RandomResizedCrop are written out:
Resize on a PIL image is ``img.resize((w, h), BICUBIC)``, ToTensor divides uint8 by 255,
Normalize is ``(x - mean) / std`` in float32.
"""
import math
import os
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Rng = Union[None, torch.Generator, np.random.Generator]


def load_image(path: str) -> Image.Image:
    """Open ``path`` and return a fully decoded RGB image.

    Every PIL mode is converted faithfully or refused with an error naming the file: 8-bit
    modes through PIL; 16-bit greyscale (``I;16*``, and ``I`` holding 0..65535) scaled to 8 bits;
    float (``F``) images in [0, 1] or [0, 255] scaled likewise.  (PIL's own ``convert("RGB")``
    clips 16-bit values, which turns most 16-bit pictures white.)
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()  # decode now so truncated files fail here, not later in a worker
            return to_rgb(img, path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None


def to_rgb(img: Image.Image, name: str = "image") -> Image.Image:
    """A faithful RGB copy of ``img`` (see :func:`load_image`); ValueError naming ``name`` otherwise."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode.startswith("I") or img.mode == "F":
        return _high_depth_to_rgb(img, name)
    if img.mode in ("P", "PA", "LA", "La", "RGBA", "RGBa") or "transparency" in img.info:
        # Go through RGBA so palette transparency is resolved before dropping alpha.
        return img.convert("RGBA").convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:  # e.g. LAB: PIL has no conversion
        raise ValueError(f"{name}: image mode {img.mode} cannot be converted to RGB ({exc})") from None


def _high_depth_to_rgb(img: Image.Image, name: str) -> Image.Image:
    values = np.asarray(img, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"{name}: unsupported image mode {img.mode} with shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"{name}: image of mode {img.mode} contains NaN or infinite values")
    low, high = (values.min(), values.max()) if values.size else (0.0, 0.0)
    if img.mode == "F" and low >= 0 and high <= 1:
        scale = 255.0
    elif low >= 0 and (high <= 255 and not img.mode.startswith("I;16")):
        scale = 1.0  # 8-bit values stored in a wide mode
    elif low >= 0 and high <= 65535 and img.mode != "F":
        scale = 255.0 / 65535.0  # 16-bit
    else:
        raise ValueError(f"{name}: image of mode {img.mode} has values in [{low:g}, {high:g}], which "
                         "do not map to 8 bits unambiguously (expected 0..255, 0..65535, or 0..1 for float)")
    grey = np.clip(np.round(values * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float32 CHW in [0, 1] (torchvision ``ToTensor``)."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))
    return arr.permute(2, 0, 1).contiguous().to(torch.float32).div(255)


def normalize(tensor: torch.Tensor, mean: Sequence[float] = CLIP_MEAN,
              std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """``(x - mean) / std`` per channel, constants in the tensor's dtype (torchvision ``Normalize``)."""
    mean_t = torch.as_tensor(mean, dtype=tensor.dtype).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=tensor.dtype).view(-1, 1, 1)
    return (tensor - mean_t) / std_t


def image_to_tensor(img: Image.Image, size: int, augment=None, seed: int = 0) -> torch.Tensor:
    """Eval/hub transform: Resize((size, size), bicubic; aspect not kept) -> ToTensor -> CLIP Normalize;
    ``augment(tensor in [0, 1], seed)`` (``data_utils/augment.py``) runs before the normalisation."""
    pixels = to_tensor(img.resize((size, size), Image.BICUBIC))
    return normalize(augment(pixels, seed) if augment is not None else pixels)


def _uniform(rng: Rng, low: float, high: float) -> float:
    if isinstance(rng, np.random.Generator):
        return float(rng.uniform(low, high))
    return torch.empty(1).uniform_(low, high, generator=rng).item()


def _exp_uniform(rng: Rng, low: float, high: float) -> float:
    """exp(U(low, high)); torchvision takes the exp in float32, so the torch path does too."""
    if isinstance(rng, np.random.Generator):
        return math.exp(rng.uniform(low, high))
    return torch.exp(torch.empty(1).uniform_(low, high, generator=rng)).item()


def _randint(rng: Rng, high: int) -> int:
    """Integer in [0, high)."""
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(0, high))
    return int(torch.randint(0, high, size=(1,), generator=rng).item())


def random_resized_crop_params(width: int, height: int, scale=(0.9, 1.0),
                               ratio=(3 / 4, 4 / 3), rng: Rng = None) -> Tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop.get_params``: (top, left, h, w).

    Ten tries at a random area fraction in ``scale`` and log-uniform aspect in ``ratio``;
    otherwise a central crop clamped to ``ratio``.  With a torch generator (or None = global
    torch RNG) the draws are the same ops torchvision uses, so crops match it for equal RNG state.
    """
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio)).tolist()
    for _ in range(10):
        target_area = area * _uniform(rng, scale[0], scale[1])
        aspect = _exp_uniform(rng, log_ratio[0], log_ratio[1])
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = _randint(rng, height - h + 1)
            left = _randint(rng, width - w + 1)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(img: Image.Image, size: int, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3),
                        rng: Rng = None) -> Image.Image:
    """Crop a random region (see ``random_resized_crop_params``) and resize it to size x size, bicubic."""
    top, left, h, w = random_resized_crop_params(img.width, img.height, scale, ratio, rng)
    return img.crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)


class ImageTransform:
    """PIL -> normalised tensor; ``train`` uses RandomResizedCrop(scale=(min_scale, 1)) as pretraining."""

    def __init__(self, size: int, train: bool = False, min_scale: float = 0.9, rng: Rng = None):
        if not 0 < min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
        self.size, self.train, self.min_scale, self.rng = size, train, min_scale, rng

    def __call__(self, img: Image.Image, rng: Optional[Rng] = None) -> torch.Tensor:
        if not self.train:
            return image_to_tensor(img, self.size)
        crop = random_resized_crop(img, self.size, scale=(self.min_scale, 1.0),
                                   rng=rng if rng is not None else self.rng)
        return normalize(to_tensor(crop))

    def __repr__(self) -> str:
        return f"ImageTransform(size={self.size}, train={self.train}, min_scale={self.min_scale})"
