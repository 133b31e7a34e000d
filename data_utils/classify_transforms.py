"""Image transforms of ``image_classify`` (ImageNet fine-tuning, spec §5.3), with PIL + kornia.

The official dataset builds its training transform with timm's ``create_transform(is_training=True,
auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, re_mode="pixel", interpolation="bicubic")``;
timm and torchvision cannot be imported here, so the same steps are written out:

1. RandomResizedCrop(P, scale (0.08, 1), ratio (3/4, 4/3), bicubic) on the PIL image
   (``data_utils/image.py:random_resized_crop``, torchvision's sampling);
2. horizontal flip with p 0.5;
3. RandAugment ``rand-m9-mstd0.5-inc1``: 2 ops drawn with replacement from timm's 15 "increasing" ops,
   each applied with p 0.5 at magnitude N(9, 0.5) clipped to [0, 10] (of 10); geometric ops fill with
   the mean colour, as timm does;
4. ToTensor + CLIP Normalize;
5. random erasing (p 0.25, area 2-33 %, log-uniform aspect 0.3-3.3, per-pixel N(0, 1) values).

timm applies colour jitter only when no auto-augment is set, so the official ``color_jitter`` (0.4) has no
effect on this pipeline -- nor here.  The ops run on float images in [0, 1] (kornia's implementations;
PIL works on uint8), the one deliberate difference.  Every draw comes from one ``numpy`` generator
seeded per sample (``augment.sample_seed``), so a resumed run sees what an uninterrupted one would.
"""
import math

import numpy as np
import torch
from PIL import Image

from .image import CLIP_MEAN, normalize, random_resized_crop, to_tensor

MAGNITUDE_MAX = 10.0  # timm's _LEVEL_DENOM
FILL = torch.tensor([round(255 * m) / 255 for m in CLIP_MEAN])  # timm's img_mean, rounded to uint8


# ---- the 15 ops of timm's _RAND_INCREASING_TRANSFORMS on (1, 3, H, W) float images ----------------------
def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() < 0.5 else value


def _warp(x: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """PIL's ``Image.transform(AFFINE, data)``: ``inverse`` (3x3) maps output pixels to input pixels."""
    from kornia.geometry.transform import warp_affine

    forward = torch.linalg.inv(inverse.double()).float()[:2].unsqueeze(0)
    return warp_affine(x, forward, x.shape[-2:], mode="bicubic", padding_mode="fill",
                       fill_value=FILL.to(x.dtype))


def _affine(a=1.0, b=0.0, c=0.0, d=0.0, e=1.0, f=0.0) -> torch.Tensor:
    return torch.tensor([[a, b, c], [d, e, f], [0.0, 0.0, 1.0]])


def _rotate(x, magnitude, rng):
    from kornia.geometry.transform import get_rotation_matrix2d

    h, w = x.shape[-2:]
    centre = torch.tensor([[(w - 1) / 2, (h - 1) / 2]])
    angle = torch.tensor([_signed(magnitude / MAGNITUDE_MAX * 30.0, rng)])  # counter-clockwise, as PIL
    forward = get_rotation_matrix2d(centre, angle, torch.ones(1, 2))[0]
    return _warp(x, torch.linalg.inv(torch.cat([forward, torch.tensor([[0.0, 0.0, 1.0]])])))


def _shear_x(x, magnitude, rng):
    return _warp(x, _affine(b=_signed(magnitude / MAGNITUDE_MAX * 0.3, rng)))


def _shear_y(x, magnitude, rng):
    return _warp(x, _affine(d=_signed(magnitude / MAGNITUDE_MAX * 0.3, rng)))


def _translate_x(x, magnitude, rng):
    return _warp(x, _affine(c=_signed(magnitude / MAGNITUDE_MAX * 0.45, rng) * x.shape[-1]))


def _translate_y(x, magnitude, rng):
    return _warp(x, _affine(f=_signed(magnitude / MAGNITUDE_MAX * 0.45, rng) * x.shape[-2]))


def _enhance_factor(magnitude, rng) -> float:
    return 1.0 + _signed(magnitude / MAGNITUDE_MAX * 0.9, rng)  # timm's "increasing" enhance level


def _color(x, magnitude, rng):
    from kornia.enhance import adjust_saturation_with_gray_subtraction

    return adjust_saturation_with_gray_subtraction(x, _enhance_factor(magnitude, rng))


def _contrast(x, magnitude, rng):
    from kornia.enhance import adjust_contrast_with_mean_subtraction

    return adjust_contrast_with_mean_subtraction(x, _enhance_factor(magnitude, rng))


def _brightness(x, magnitude, rng):
    return (x * _enhance_factor(magnitude, rng)).clamp(0.0, 1.0)  # PIL: a blend with black


def _sharpness(x, magnitude, rng):
    from kornia.enhance import sharpness

    return sharpness(x, _enhance_factor(magnitude, rng))


def _posterize(x, magnitude, rng):
    bits = 4 - int(magnitude / MAGNITUDE_MAX * 4)
    step = 2 ** (8 - bits)
    return torch.floor(torch.round(x * 255) / step) * step / 255


def _solarize(x, magnitude, rng):
    threshold = 256 - int(magnitude / MAGNITUDE_MAX * 256)
    pixels = torch.round(x * 255)
    return torch.where(pixels >= threshold, 1.0 - x, x)


def _solarize_add(x, magnitude, rng):
    add = int(magnitude / MAGNITUDE_MAX * 110)
    pixels = torch.round(x * 255)
    return torch.where(pixels < 128, (pixels + add).clamp(max=255) / 255, x)


def _auto_contrast(x, magnitude, rng):
    low = x.amin(dim=(-2, -1), keepdim=True)
    high = x.amax(dim=(-2, -1), keepdim=True)
    scale = torch.where(high > low, high - low, torch.ones_like(high))
    return torch.where(high > low, (x - low) / scale, x)


def _equalize(x, magnitude, rng):
    from kornia.enhance import equalize

    return equalize(x)


def _invert(x, magnitude, rng):
    return 1.0 - x


RAND_INCREASING_OPS = {
    "AutoContrast": _auto_contrast, "Equalize": _equalize, "Invert": _invert, "Rotate": _rotate,
    "PosterizeIncreasing": _posterize, "SolarizeIncreasing": _solarize, "SolarizeAdd": _solarize_add,
    "ColorIncreasing": _color, "ContrastIncreasing": _contrast, "BrightnessIncreasing": _brightness,
    "SharpnessIncreasing": _sharpness, "ShearX": _shear_x, "ShearY": _shear_y,
    "TranslateXRel": _translate_x, "TranslateYRel": _translate_y,
}


class RandAugment:
    """timm ``rand-m{magnitude}-mstd{magnitude_std}-inc1`` with ``num_ops`` ops of probability ``prob``."""

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5, prob: float = 0.5):
        self.num_ops, self.magnitude, self.magnitude_std, self.prob = num_ops, magnitude, magnitude_std, prob
        self.names = list(RAND_INCREASING_OPS)

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        for name in rng.choice(self.names, self.num_ops, replace=True):
            if rng.random() > self.prob:
                continue
            magnitude = rng.normal(self.magnitude, self.magnitude_std) if self.magnitude_std > 0 else self.magnitude
            x = RAND_INCREASING_OPS[name](x, min(max(float(magnitude), 0.0), MAGNITUDE_MAX), rng).clamp(0.0, 1.0)
        return x


def random_erase(x: torch.Tensor, rng: np.random.Generator, prob: float = 0.25, min_area: float = 0.02,
                 max_area: float = 1 / 3, min_aspect: float = 0.3) -> torch.Tensor:
    """timm ``RandomErasing(prob, mode="pixel", max_count=1)`` on a normalised (3, H, W) image (in place)."""
    if rng.random() > prob:
        return x
    height, width = x.shape[-2:]
    log_ratio = (math.log(min_aspect), math.log(1 / min_aspect))
    for _ in range(10):
        target_area = rng.uniform(min_area, max_area) * height * width
        aspect = math.exp(rng.uniform(*log_ratio))
        h, w = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
        if w < width and h < height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            noise = torch.from_numpy(rng.standard_normal((x.shape[0], h, w))).to(x.dtype)
            x[:, top:top + h, left:left + w] = noise
            break
    return x


class ImageClassifyTrainTransform:
    """PIL image -> normalised (3, P, P) training tensor under ``seed`` (steps 1-5 of the module doc)."""

    def __init__(self, size: int, scale=(0.08, 1.0), flip_prob: float = 0.5, rand_augment: RandAugment = None,
                 erase_prob: float = 0.25):
        self.size, self.scale, self.flip_prob, self.erase_prob = size, scale, flip_prob, erase_prob
        self.rand_augment = rand_augment if rand_augment is not None else RandAugment()

    def __call__(self, img: Image.Image, seed: int) -> torch.Tensor:
        rng = np.random.default_rng(seed)
        crop = random_resized_crop(img, self.size, scale=self.scale, rng=rng)
        x = to_tensor(crop).unsqueeze(0)
        if rng.random() < self.flip_prob:
            x = x.flip(-1)
        with torch.no_grad():
            x = self.rand_augment(x, rng)[0]
        return random_erase(normalize(x), rng, self.erase_prob) if self.erase_prob > 0 else normalize(x)


def resize_center_crop(img: Image.Image, size: int) -> torch.Tensor:
    """torchvision ``Resize(size)`` (shorter side, bicubic) -> ``CenterCrop(size)`` -> ToTensor -> Normalize
    (the official ``center_crop`` evaluation transform)."""
    width, height = img.size
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    resized = img.resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return normalize(to_tensor(resized.crop((left, top, left + size, top + size))))
