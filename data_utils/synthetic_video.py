"""Procedural video-text data for the video quickstart, and the motion sketches of stage 1.

Clips: 8 frames of one coloured shape on a random, noisy background that moves left, right, up or
down, grows, shrinks or rotates (triangles only: a turning circle looks still).  Captions are
"a red circle moving left" ...: 4 colours x (2 shapes x 6 motions + 1 rotating triangle) = 52.
Start position, speed, size, hue, background and noise vary freely, so only the motion tells
"moving left" from "moving right": the frames of one are the frames of the other in reverse order,
and a model that ignores time cannot tell them apart.

Motion sketches (static images for stage 1, one per video caption: "a red circle moving left" ...):
stage 2 and video pretraining keep the text tower frozen, so the captions must be told apart after
stage 1, as the sound sketches teach the words of the audio captions (``data_utils/synthetic.py``).
A translation is drawn as the shape leading a motion streak that fades out behind it, a size change
or a rotation as onion skin (earlier instants faint, the last one solid).

    python -m one_peace.data_utils.synthetic_video --out DIR [--seed 1] [--n-train 2080] [--n-valid 208]

writes ``video_text_{train,valid}.tsv`` (uniq_id, video, text), ``video_captions.json`` and the clips
as ``videos/{train,valid}/*.mp4`` (MPEG-4 part 2, 64 px, 8 frames).  Held-out clips are new random
draws (class balanced); media paths are relative to DIR.
"""
import argparse
import json
import os
import sys
import time
from functools import partial
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .synthetic_shapes import COLOURS, SHAPES, SUPERSAMPLE, background, class_labels, shape_polygon, write_tsv

FRAMES = 8
SIZE = 64
MOTIONS = ("moving left", "moving right", "moving up", "moving down", "growing", "shrinking", "rotating")
# Motions that are each other's time reversal: their clips differ only in frame order.
REVERSED = {"moving left": "moving right", "moving right": "moving left", "moving up": "moving down",
            "moving down": "moving up", "growing": "shrinking", "shrinking": "growing"}


def video_classes() -> List[Tuple[str, str, str]]:
    """(colour, shape, motion) of every caption, in caption order."""
    return [(c, s, m) for c in COLOURS for s in SHAPES for m in MOTIONS if not (s == "circle" and m == "rotating")]


def video_caption(colour: str, shape: str, motion: str) -> str:
    return f"a {colour} {shape} {motion}"


def video_captions() -> List[str]:
    return [video_caption(*c) for c in video_classes()]


def _draw_shape(draw, shape, cx, cy, r, angle, fill=None, outline=None, width=1):
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=width)
    else:
        draw.polygon(shape_polygon(shape, cx, cy, r, angle), fill=fill, outline=outline, width=width)


def _trajectory(motion: str, rng: np.random.Generator, big: int):
    """Per-frame (cx, cy, r, angle) of the shape, in supersampled pixels."""
    t = np.linspace(0.0, 1.0, FRAMES)
    if motion in ("growing", "shrinking"):
        r0, r1 = rng.uniform(0.08, 0.13) * big, rng.uniform(0.3, 0.4) * big
        radius = r0 + (r1 - r0) * (t if motion == "growing" else 1 - t)
        cx, cy = rng.uniform(r1 * 1.05, big - r1 * 1.05, size=2)
        return [(cx, cy, r, 0.0) for r in radius]
    r = rng.uniform(0.14, 0.22) * big
    if motion == "rotating":
        cx, cy = rng.uniform(r * 1.2, big - r * 1.2, size=2)
        start, turn = rng.uniform(0, 2 * np.pi), rng.choice([-1, 1]) * rng.uniform(0.6, 1.0) * np.pi
        return [(cx, cy, r, start + turn * k) for k in t]
    travel = rng.uniform(0.6, 1.0) * (big - 2.4 * r)
    axis = 0 if motion in ("moving left", "moving right") else 1
    sign = 1 if motion in ("moving right", "moving down") else -1
    along0 = rng.uniform(1.2 * r, big - 1.2 * r - travel)
    along = along0 + travel * t if sign > 0 else along0 + travel * (1 - t)
    across = rng.uniform(1.2 * r, big - 1.2 * r)
    angle = rng.uniform(-0.15, 0.15)
    return [((a, across) if axis == 0 else (across, a)) + (r, angle) for a in along]


def render_clip(colour: str, shape: str, motion: str, rng: np.random.Generator, size: int = SIZE) -> List[Image.Image]:
    """``FRAMES`` RGB frames of one shape in motion on a random background."""
    big = size * SUPERSAMPLE
    bg = Image.fromarray((background(rng, size) * 255).astype(np.uint8)).resize((big, big), Image.BILINEAR)
    rgb = _shape_colour(colour, rng)
    fill = Image.new("RGB", (big, big), tuple(int(v) for v in rgb))
    noise_level = rng.uniform(0, 6)
    frames = []
    for cx, cy, r, angle in _trajectory(motion, rng, big):
        mask = Image.new("L", (big, big), 0)
        _draw_shape(ImageDraw.Draw(mask), shape, cx, cy, r, angle, fill=255)
        canvas = bg.copy()
        canvas.paste(fill, (0, 0), mask)
        arr = np.asarray(canvas.resize((size, size), Image.LANCZOS), dtype=np.float32)
        arr += rng.normal(0, noise_level, size=arr.shape)
        frames.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)))
    return frames


DIRECTIONS = {"moving left": (-1, 0), "moving right": (1, 0), "moving up": (0, -1), "moving down": (0, 1)}


def _shape_colour(colour: str, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.array(COLOURS[colour], dtype=np.float32) + rng.normal(0, 12, size=3), 0, 255)


def render_motion_sketch(colour: str, shape: str, motion: str, rng: np.random.Generator,
                         size: int = SIZE) -> Image.Image:
    """A still drawing of a video caption ("a red circle moving left"): the shape with a motion streak
    behind it for a translation, or an onion skin of a size change or a rotation (four
    instants, the earliest faintest).  Stage 1 sees these so that the text tower, frozen afterwards,
    separates the whole captions; sketches with only the motion words did not carry over to the
    composed captions (the frozen tower put "a blue triangle moving left" and "... moving up" at
    cosine 0.998)."""
    big = size * SUPERSAMPLE
    img = Image.fromarray((background(rng, size) * 255).astype(np.uint8)).resize((big, big), Image.BILINEAR)
    rgb = _shape_colour(colour, rng)
    base = np.asarray(img, dtype=np.float32)
    if motion in DIRECTIONS:
        # The shape near the edge it is heading for, a motion streak behind it fading out towards the
        # opposite edge: a layout (which side is solid, which way the band runs) that the tiny
        # quickstart ViT reads within stage 1, where small glyphs such as chevrons were not learned.
        dx, dy = DIRECTIONS[motion]
        r = rng.uniform(0.11, 0.15) * big
        lead = rng.uniform(0.08, 0.16) * big + r  # shape centre to the leading edge
        across = rng.uniform(1.3 * r, big - 1.3 * r)
        along = np.arange(big, dtype=np.float32)
        head = big - lead if dx + dy > 0 else lead
        behind = (head - along) * (dx + dy)  # distance behind the shape's centre, along the motion
        fade = np.where(behind > 0, 0.75 * np.clip(1 - behind / (big * rng.uniform(0.55, 0.8)), 0, 1), 0.0)
        half_width = r * rng.uniform(0.7, 0.95)
        band = (np.abs(along - across) <= half_width).astype(np.float32)
        streak = fade[None, :] * band[:, None] if dx else band[None, :] * fade[:, None]
        mask = Image.new("L", (big, big), 0)
        centre = (head, across) if dx else (across, head)
        _draw_shape(ImageDraw.Draw(mask), shape, *centre, r, rng.uniform(-0.15, 0.15), fill=255)
        alpha = np.maximum(np.asarray(mask, dtype=np.float32) / 255.0, streak)[..., None]
        return _finish(base * (1 - alpha) + rgb * alpha, rng, size)
    steps = _trajectory(motion, rng, big)
    for k, idx in enumerate((0, 2, 4, 7)):
        cx, cy, r, angle = steps[idx]
        mask = Image.new("L", (big, big), 0)
        solid, width = k == 3, max(2, big // 40)
        # A size change is drawn as rings (a filled last shape would hide the others): the last one thick.
        fill = 255 if solid and motion not in ("growing", "shrinking") else None
        _draw_shape(ImageDraw.Draw(mask), shape, cx, cy, r, angle, fill=fill, outline=255,
                    width=3 * width if solid else width)
        alpha = (np.asarray(mask, dtype=np.float32) / 255.0)[..., None] * (1.0 if solid else 0.25 + 0.2 * k)
        base = base * (1 - alpha) + rgb * alpha
    return _finish(base, rng, size)


def _finish(base: np.ndarray, rng: np.random.Generator, size: int) -> Image.Image:
    """Supersampled float canvas -> size x size RGB with sensor noise."""
    arr = np.asarray(Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).resize((size, size), Image.LANCZOS),
                     dtype=np.float32)
    arr += rng.normal(0, rng.uniform(0, 6), size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def motion_sketch_renderers():
    """(caption, renderer) of the stage-1 motion sketches (appended to the image classes): one per
    video caption."""
    return [(video_caption(*c), partial(render_motion_sketch, *c)) for c in video_classes()]


def write_clip(path: str, frames: List[Image.Image], fps: int = 8) -> None:
    import av

    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
        stream.options = {"qscale": "2"}  # near-lossless: 64-pixel clips lose their edges otherwise
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_image(frame)))
        container.mux(stream.encode())


def write_video_split(out: str, split: str, n: int, seed: int):
    classes = video_classes()
    rng = np.random.default_rng([seed, 3, 0 if split == "train" else 1])
    os.makedirs(os.path.join(out, "videos", split), exist_ok=True)
    rows = []
    for i, label in enumerate(class_labels(rng, n, len(classes), balanced=split != "train")):
        rel = f"videos/{split}/{split}_{i:06d}.mp4"
        write_clip(os.path.join(out, rel), render_clip(*classes[label], rng))
        rows.append((f"{split}_{i}", rel, video_caption(*classes[label])))
    write_tsv(os.path.join(out, f"video_text_{split}.tsv"), ("uniq_id", "video", "text"), rows)
    return rows


def generate(out: str, seed: int = 1, n_train: int = 2080, n_valid: int = 208):
    os.makedirs(out, exist_ok=True)
    counts = {f"video_text_{s}": len(write_video_split(out, s, n, seed)) for s, n in (("train", n_train),
                                                                                     ("valid", n_valid))}
    with open(os.path.join(out, "video_captions.json"), "w", encoding="utf-8") as f:
        json.dump(video_captions(), f, indent=1)
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m one_peace.data_utils.synthetic_video",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n-train", type=int, default=2080)
    parser.add_argument("--n-valid", type=int, default=208)
    args = parser.parse_args(argv)
    start = time.time()
    counts = generate(args.out, args.seed, args.n_train, args.n_valid)
    print(f"synthetic videos in {args.out} ({', '.join(f'{k}: {v}' for k, v in counts.items())}; "
          f"{len(video_captions())} captions) in {time.time() - start:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
