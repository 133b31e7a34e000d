"""Generated segmentation scenes in the ADE20K release layout (CI, the segmentation demo).

Each scene: a textured background (grey-ish base, gradient, stripes, noise; ``synthetic_shapes.background``)
with 1-3 filled shapes (circle, square, triangle; any size, position, rotation) whose colour is
the class: red, green, blue, yellow.  The annotation follows ADE20K's convention: 1 = background,
2..5 = the four colours, 0 = "other" (a one-pixel seam around every shape, ignored with
``reduce_zero_label``), so the task has 5 classes.  Training and held-out ("validation") scenes are
independent draws (separate random streams).  Deterministic for a seed.

    python -m one_peace.data_utils.synthetic_scenes --out DIR [--seed 1] [--n-train 400] [--n-valid 60]

writes ``DIR/images/{training,validation}/scene_*.jpg`` and
``DIR/annotations/{training,validation}/scene_*.png`` (mode L) like ADEChallengeData2016, plus
``DIR/scene_classes.json`` ({class id: name}, the task's ``label_file``).
"""
import argparse
import json
import os
from typing import Dict, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .synthetic_shapes import COLOURS, background, shape_polygon

CLASS_NAMES = ("background",) + tuple(COLOURS)  # class k = annotation value k + 1
SHAPES = ("circle", "square", "triangle")


def _texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Background in [0, 1] with stripes at a random angle and period on top of the base."""
    side = max(width, height)
    img = background(rng, side)[:height, :width]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 14)
    stripes = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 2 * np.pi / period)
    return np.clip(img + (rng.uniform(0.03, 0.12) * stripes)[..., None], 0, 1)


def render_scene(rng: np.random.Generator, width: int, height: int) -> Tuple[Image.Image, Image.Image]:
    """(RGB image, mode-L annotation) of one scene."""
    label = np.ones((height, width), dtype=np.uint8)
    image = _texture(rng, width, height) * 255
    for _ in range(int(rng.integers(1, 4))):
        colour = int(rng.integers(len(COLOURS)))
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        r = rng.uniform(0.12, 0.3) * min(width, height)
        cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
        mask_img = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(mask_img)
        if shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        else:
            draw.polygon(shape_polygon(shape, cx, cy, r, rng.uniform(0, np.pi)), fill=1)
        mask = np.asarray(mask_img, dtype=bool)
        rgb = np.array(list(COLOURS.values())[colour], dtype=np.float32) + rng.normal(0, 12, size=3)
        image[mask] = np.clip(rgb, 0, 255)
        label[mask] = colour + 2
    # Seams: pixels next to another class are "other" (0), as ADE20K's unlabelled boundaries.
    seam = np.zeros_like(label, dtype=bool)
    seam[1:] |= label[1:] != label[:-1]
    seam[:, 1:] |= label[:, 1:] != label[:, :-1]
    label[seam] = 0
    image += rng.normal(0, rng.uniform(0, 6), size=image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)), Image.fromarray(label, mode="L")


def generate(out: str, seed: int = 1, n_train: int = 400, n_valid: int = 60, width: int = 96,
             height: int = 80) -> Dict[str, int]:
    for split, n, stream in (("training", n_train, 0), ("validation", n_valid, 1)):
        rng = np.random.default_rng([seed, 7, stream])
        os.makedirs(os.path.join(out, "images", split), exist_ok=True)
        os.makedirs(os.path.join(out, "annotations", split), exist_ok=True)
        for i in range(n):
            image, label = render_scene(rng, width, height)
            image.save(os.path.join(out, "images", split, f"scene_{split}_{i:05d}.jpg"), quality=95)
            label.save(os.path.join(out, "annotations", split, f"scene_{split}_{i:05d}.png"))
    with open(os.path.join(out, "scene_classes.json"), "w", encoding="utf-8") as fh:
        json.dump({str(i): name for i, name in enumerate(CLASS_NAMES)}, fh, indent=1)
    return {"training": n_train, "validation": n_valid}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m one_peace.data_utils.synthetic_scenes",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--n-valid", type=int, default=60)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--height", type=int, default=80)
    args = parser.parse_args(argv)
    counts = generate(args.out, args.seed, args.n_train, args.n_valid, args.width, args.height)
    print(f"scenes in {args.out}: {counts}")


if __name__ == "__main__":
    main()
