"""What the procedural data generators share: colours, shape outlines, backgrounds, labels, TSV writing.

Used by ``synthetic.py`` (shapes and sound sketches), ``synthetic_video.py`` (shapes in motion, motion
sketches) and ``synthetic_scenes.py`` (segmentation scenes); they import from here, so the imports
between them go one way (``synthetic`` -> ``synthetic_video`` -> here).
"""
from typing import Dict, Sequence, Tuple

import numpy as np

SUPERSAMPLE = 2  # shapes are drawn at 2x and downsampled (anti-aliasing)

COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 175, 55),
    "blue": (40, 70, 225),
    "yellow": (235, 210, 30),
}
SHAPES = ("circle", "triangle")


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float (size, size, 3) background in [0, 1]: greyish base, optional gradient, noise."""
    base = rng.uniform(0.1, 0.9)
    tint = rng.normal(0.0, 0.04, size=3)  # low saturation so the shape colour stays the cue
    img = np.full((size, size, 3), base, dtype=np.float32) + tint.astype(np.float32)
    if rng.random() < 0.5:  # linear gradient in a random direction
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) - 0.5
        ramp = np.cos(angle) * xx + np.sin(angle) * yy
        img += (rng.uniform(0.1, 0.35) * ramp)[..., None]
    img += rng.normal(0.0, rng.uniform(0.0, 0.06), size=img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float):
    if shape == "square":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        scale = r * 0.85
    elif shape == "triangle":
        pts = [(np.cos(a), np.sin(a)) for a in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6)]
        scale = r * 1.1
    elif shape == "cross":
        w = 0.33
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w),
               (-w, -w)]
        scale = r
    else:
        raise ValueError(shape)
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + scale * (x * c - y * s), cy + scale * (x * s + y * c)) for x, y in pts]


def class_labels(rng: np.random.Generator, n: int, num_classes: int, balanced: bool) -> np.ndarray:
    """``n`` class ids: each class about n / num_classes times (shuffled)."""
    labels = np.arange(n) % num_classes
    if not balanced:
        rng.shuffle(labels)
    return labels


def write_tsv(path: str, header: Sequence[str], rows: Sequence[Sequence]):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(str(v) for v in row) + "\n")
