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
from PIL import Image, ImageOps

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Rng = Union[None, torch.Generator, np.random.Generator]


def check_media_file(path: str, what: str) -> None:
    """FileNotFoundError / IsADirectoryError / ValueError (empty) naming ``path``, a ``what`` file."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} path {path} is a directory, not a {what} file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{what} file {path} is empty (0 bytes)")


def load_image(path: str, exif_transpose: bool = True, return_orientation: bool = False):
    """Open ``path`` and return a fully decoded RGB image (the first frame of an animation).

    ``exif_transpose``: turn the picture as its EXIF/XMP orientation tag says (``ImageOps.exif_transpose``),
    so photos come out upright, in the frame viewers show; ``False`` keeps the stored pixel frame (the
    official code).  ``return_orientation``: also return the orientation applied (1 = none; see
    :func:`orient_box` / :func:`orient_array` for annotations made in the stored frame).

    Every PIL mode is converted faithfully or refused with an error naming the file: 8-bit
    modes through PIL; 16-bit greyscale (``I;16*``, and ``I`` holding 0..65535) scaled to 8 bits;
    float (``F``) images in [0, 1] or [0, 255] scaled likewise.  (PIL's own ``convert("RGB")``
    clips 16-bit values, which turns most 16-bit pictures white.)  Any decoder failure (unknown or
    truncated file, unsupported codec) is a ValueError naming the file.
    """
    check_media_file(path, "image")
    orientation = 1
    try:
        with Image.open(path) as img:
            img.load()  # decode now so truncated files fail here, not later in a worker
            if exif_transpose:
                orientation = exif_orientation(img)
                if orientation != 1:
                    img = ImageOps.exif_transpose(img)
            rgb = to_rgb(img, path)
    except Exception as exc:  # noqa: BLE001 - PIL's plugins raise many types (OSError, SyntaxError, ...)
        if isinstance(exc, ValueError) and str(path) in str(exc):
            raise  # to_rgb's own error, naming the file
        raise ValueError(f"cannot read image {path}: {str(exc) or type(exc).__name__}") from None
    return (rgb, orientation) if return_orientation else rgb


# EXIF orientation -> the PIL transpose that shows the picture upright (as ImageOps.exif_transpose)
_ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                 4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def exif_orientation(img: Image.Image) -> int:
    """The EXIF (or XMP) orientation ``ImageOps.exif_transpose`` applies to a loaded image: 2..8, else 1
    (no tag, an invalid value, or an unreadable EXIF block)."""
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block must not make the picture unreadable
        return 1
    return value if value in _ORIENTATIONS else 1


def orient_box(box, orientation: int, width: int, height: int):
    """An ``x0,y0,x1,y1`` box in the stored pixels of a ``width`` x ``height`` image -> the same region
    in the frame :func:`load_image` returns after applying ``orientation`` (same type as ``box``)."""
    if orientation == 1:
        return box
    x0, y0, x1, y1 = (float(v) for v in box)
    corner = {2: lambda x, y: (width - x, y), 3: lambda x, y: (width - x, height - y),
              4: lambda x, y: (x, height - y), 5: lambda x, y: (y, x), 6: lambda x, y: (height - y, x),
              7: lambda x, y: (height - y, width - x), 8: lambda x, y: (y, width - x)}[orientation]
    (ax, ay), (bx, by) = corner(x0, y0), corner(x1, y1)
    out = [min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)]
    if isinstance(box, torch.Tensor):
        return torch.tensor(out, dtype=box.dtype)
    return type(box)(out) if isinstance(box, (list, tuple)) else out


def orient_array(array: np.ndarray, orientation: int) -> np.ndarray:
    """An (H, W, ...) array aligned with an image's stored pixels (e.g. a label map) turned like the image."""
    if orientation == 1:
        return array
    turned = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
              5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
              7: lambda a: a[::-1, ::-1].swapaxes(0, 1), 8: lambda a: np.rot90(a, 1)}[orientation](array)
    return np.ascontiguousarray(turned)


def to_rgb(img: Image.Image, name: str = "image") -> Image.Image:
    """A faithful RGB copy of ``img`` (see :func:`load_image`); ValueError naming ``name`` otherwise."""
    if img.width < 1 or img.height < 1:  # resized, it would become a plain grey picture with an embedding
        raise ValueError(f"{name}: image of {img.width}x{img.height} pixels has no content")
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


def _rgb_chw_bytes(img: Image.Image) -> torch.Tensor:
    """PIL -> uint8 (3, H, W), contiguous."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


def _per_channel(values: Sequence[float], dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(values, dtype=dtype).view(-1, 1, 1)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float32 CHW in [0, 1] (torchvision ``ToTensor``)."""
    return _rgb_chw_bytes(img).to(torch.float32).div(255)


def to_normalized_tensor(img: Image.Image) -> torch.Tensor:
    """``normalize(to_tensor(img))`` with the same float32 operations, in place on one new tensor."""
    pixels = _rgb_chw_bytes(img).to(torch.float32).div_(255)
    return pixels.sub_(_per_channel(CLIP_MEAN, torch.float32)).div_(_per_channel(CLIP_STD, torch.float32))


def normalize(tensor: torch.Tensor, mean: Sequence[float] = CLIP_MEAN,
              std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """``(x - mean) / std`` per channel, constants in the tensor's dtype (torchvision ``Normalize``)."""
    return (tensor - _per_channel(mean, tensor.dtype)) / _per_channel(std, tensor.dtype)


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
        return to_normalized_tensor(crop)

    def __repr__(self) -> str:
        return f"ImageTransform(size={self.size}, train={self.train}, min_scale={self.min_scale})"
