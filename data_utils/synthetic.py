"""A small procedural image-text and audio-text dataset for the quickstart and CI.

Images: one shape on a random, noisy, possibly graded background; the caption names its size,
colour and kind ("a small red circle", "a large blue triangle": 2 x 4 x 2 = 16 captions), while
the exact size, position, rotation, hue, background and noise vary freely.  Audio: 16 kHz mono
clips of 1-2 s (low and high steady tones, rising/falling chirps, a slow siren, vibrato, beep
counts, noise bursts, rumble, slow ticking, fading tones) at random pitch, timing and noise level.
Each class differs from the others in its spectrum, not only in its timing, because that is what
the quickstart's tiny conv front end learns within its CPU budget.  Measured failures of earlier
designs: a "medium" tone between the low and high ones (the high tones were all taken for medium
tones), a 15-30/s broadband click train (heard as a noise burst), and a slow broadband tick train
(still mostly heard as a noise burst; resonant 2.5-5 kHz ticks fixed it).

The image split also holds spectrogram-like *sketches* of the twelve sounds (time left to right,
pitch bottom to top: a rising line for "a rising chirp", three dashes for "three short beeps"),
captioned with the audio captions.  Stage 2 keeps the text tower frozen (as the official recipe
does), so the words that describe sounds must be learned in stage 1; at full scale the stage-1
captions cover them, in this miniature the sketches do.  Without them the frozen tower maps
unseen words almost arbitrarily ("two short beeps" and "three short beeps" at cosine 0.99).
With ``--motion-sketches`` it also holds *motion sketches* (one still drawing per video caption,
"a red circle moving left" ...: ``synthetic_video.py``) for the video quickstart's captions, which
video pretraining keeps frozen likewise (off by default: they cost the image quickstart accuracy,
docs/BENCHMARKS.md).

Train and held-out ("valid") splits are independent random draws of the same caption set
(the held-out split is class balanced).  Everything is deterministic for a seed.

    python -m one_peace.data_utils.synthetic --out DIR [--seed 1] [--n-train-images 2400] ...

writes into DIR::

    image_text_train.tsv  image_text_valid.tsv   image_id<TAB>image<TAB>caption
    audio_text_train.tsv  audio_text_valid.tsv   uniq_id<TAB>audio<TAB>text<TAB>duration
    image_captions.json   audio_captions.json    the distinct captions of each kind
    images/{train,valid}/*.png  audio/{train,valid}/*.wav

Media paths in the TSVs are relative to DIR (the tasks' default ``data_root``).
"""
import argparse
import json
import os
import sys
import time
from functools import partial
from typing import Callable, Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .synthetic_shapes import COLOURS, SHAPES, SUPERSAMPLE, background, class_labels, shape_polygon, write_tsv
from .synthetic_video import motion_sketch_renderers  # motion words for the video quickstart

SAMPLE_RATE = 16000
IMAGE_SIZE = 64
# Shape "radius" as a fraction of the image side.  The kinds and sizes are chosen so that a tiny
# ViT learns them in a few hundred CPU updates: with 16-pixel patches it needs many thousands of
# updates to tell a circle from a square, while size, colour and circle-vs-triangle come quickly.
SIZES = {"small": (0.12, 0.20), "large": (0.30, 0.42)}

# (caption, generator name); the generators are the _audio_* functions below.
AUDIO_CLASSES: Tuple[Tuple[str, str], ...] = (
    ("a low steady tone", "low_tone"),
    ("a high steady tone", "high_tone"),
    ("a rising chirp", "rising_chirp"),
    ("a falling chirp", "falling_chirp"),
    ("a warbling tone", "warble"),
    ("a wailing siren", "siren"),
    ("two short beeps", "two_beeps"),
    ("three short beeps", "three_beeps"),
    ("a burst of white noise", "noise_burst"),
    ("a low rumbling noise", "rumble"),
    ("a slow ticking sound", "ticks"),
    ("a tone that fades out", "fade_out"),
)


def image_classes() -> List[Tuple[str, str, str]]:
    """(size, colour, shape) of every shape caption, in caption-list order."""
    return [(size, colour, shape) for size in SIZES for colour in COLOURS for shape in SHAPES]


def image_renderers(motion_sketches: bool = False) -> List[Tuple[str, Callable[[np.random.Generator], Image.Image]]]:
    """(caption, renderer) of every image class: the shapes, then the sound sketches."""
    shapes = [(image_caption(*c), partial(render_image, *c)) for c in image_classes()]
    sketches = [(caption, partial(render_sound_sketch, kind)) for caption, kind in AUDIO_CLASSES]
    return shapes + sketches + (motion_sketch_renderers() if motion_sketches else [])


def image_caption(size: str, colour: str, shape: str) -> str:
    return f"a {size} {colour} {shape}"


def image_captions(motion_sketches: bool = False) -> List[str]:
    return [caption for caption, _ in image_renderers(motion_sketches)]


def audio_captions() -> List[str]:
    return [caption for caption, _ in AUDIO_CLASSES]


# ---- images ------------------------------------------------------------------------------------
def render_image(size_name: str, colour: str, shape: str, rng: np.random.Generator,
                 size: int = IMAGE_SIZE) -> Image.Image:
    """One shape of the given size class, colour and kind at a random position on a random background."""
    big = size * SUPERSAMPLE
    bg = (background(rng, size) * 255).astype(np.uint8)
    canvas = Image.fromarray(bg).resize((big, big), Image.BILINEAR)
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    r = rng.uniform(*SIZES[size_name]) * big
    margin = r * 1.1
    cx, cy = rng.uniform(margin, big - margin, size=2)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        # A slightly rotated triangle, pointing up.
        draw.polygon(shape_polygon(shape, cx, cy, r, rng.uniform(-0.15, 0.15)), fill=255)
    rgb = np.array(COLOURS[colour], dtype=np.float32) + rng.normal(0, 12, size=3)
    fill = Image.new("RGB", (big, big), tuple(int(v) for v in np.clip(rgb, 0, 255)))
    canvas.paste(fill, (0, 0), mask)
    img = canvas.resize((size, size), Image.LANCZOS)
    arr = np.asarray(img, dtype=np.float32)
    arr += rng.normal(0, rng.uniform(0, 6), size=arr.shape)  # sensor noise over everything
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def render_sound_sketch(kind: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    """A spectrogram-like drawing of one audio class: time runs left to right, pitch bottom to top."""
    big = size * SUPERSAMPLE
    ink = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(ink)
    width = max(2, int(rng.uniform(0.03, 0.06) * big))
    x0, x1 = rng.uniform(0.04, 0.2) * big, rng.uniform(0.8, 0.96) * big

    def row(lo, hi):  # a pitch drawn from [lo, hi] (fractions of the height) -> image row
        return (1.0 - rng.uniform(lo, hi)) * big

    speckle = np.zeros((big, big), dtype=np.float32)
    if kind in ("low_tone", "high_tone"):
        y = row(*{"low_tone": (0.24, 0.38), "high_tone": (0.72, 0.9)}[kind])
        draw.line([(x0, y), (x1, y)], fill=255, width=width)
    elif kind in ("rising_chirp", "falling_chirp"):
        low, high = row(0.08, 0.3), row(0.7, 0.92)
        ends = (low, high) if kind == "rising_chirp" else (high, low)
        draw.line([(x0, ends[0]), (x1, ends[1])], fill=255, width=width)
    elif kind == "siren":  # one or two slow, wide sweeps up and down
        y, amp, cycles = row(0.4, 0.6), rng.uniform(0.22, 0.3) * big, rng.uniform(1.0, 2.0)
        xs = np.linspace(x0, x1, 80)
        draw.line([(x, y - amp * np.sin(2 * np.pi * cycles * (x - x0) / (x1 - x0))) for x in xs], fill=255,
                  width=width)
    elif kind == "warble":
        y, amp, cycles = row(0.35, 0.65), rng.uniform(0.06, 0.12) * big, rng.uniform(3, 5)
        xs = np.linspace(x0, x1, 80)
        draw.line([(x, y + amp * np.sin(2 * np.pi * cycles * (x - x0) / (x1 - x0))) for x in xs], fill=255,
                  width=width)
    elif kind in ("two_beeps", "three_beeps"):
        count, y = (2 if kind == "two_beeps" else 3), row(0.35, 0.8)
        slot = (x1 - x0) / count
        for k in range(count):
            start = x0 + k * slot + rng.uniform(0.0, 0.15) * slot
            draw.line([(start, y), (start + rng.uniform(0.4, 0.6) * slot, y)], fill=255, width=width)
    elif kind == "noise_burst":  # broadband: speckle over the full height for a while
        a = int(rng.uniform(0.1, 0.45) * big)
        speckle[:, a:a + int(rng.uniform(0.25, 0.45) * big)] = 1.0
    elif kind == "rumble":  # low-frequency noise: a speckled band along the bottom
        speckle[big - int(rng.uniform(0.15, 0.25) * big):, int(x0):int(x1)] = 1.0
    elif kind == "ticks":  # broadband impulses: thin vertical lines at a regular, slow rate
        count = int(rng.integers(4, 9))
        for x in np.linspace(x0, x1, count):
            draw.line([(x, 0.05 * big), (x, 0.95 * big)], fill=255, width=max(1, width // 2))
    elif kind == "fade_out":
        y, steps = row(0.35, 0.8), 12
        for k in range(steps):
            a, b = x0 + (x1 - x0) * k / steps, x0 + (x1 - x0) * (k + 1) / steps
            draw.line([(a, y), (b, y)], fill=int(255 * (1 - k / steps)), width=width)
    else:
        raise ValueError(f"unknown sound kind {kind!r}")
    level = np.asarray(ink, dtype=np.float32) / 255.0
    level = np.maximum(level, speckle * rng.uniform(0.3, 1.0, size=speckle.shape).astype(np.float32))
    background = rng.uniform(0.0, 0.2)
    tint = rng.uniform(0.6, 1.0, size=3).astype(np.float32)  # random colour map
    rgb = background + level[..., None] * tint * rng.uniform(0.7, 1.0)
    img = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).resize((size, size), Image.LANCZOS)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, rng.uniform(0, 8), size=(size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


# ---- audio -------------------------------------------------------------------------------------
def _t(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64) / SAMPLE_RATE


def _envelope(n: int, attack: float = 0.01) -> np.ndarray:
    """Short linear attack/release so onsets do not click."""
    k = max(1, min(n // 2, int(attack * SAMPLE_RATE)))
    env = np.ones(n)
    env[:k] = np.linspace(0, 1, k)
    env[-k:] = np.linspace(1, 0, k)
    return env


def _tone(freq, n, rng, harmonics=True):
    phase = 2 * np.pi * np.cumsum(np.broadcast_to(freq, (n,))) / SAMPLE_RATE + rng.uniform(0, 2 * np.pi)
    wave = np.sin(phase)
    if harmonics:  # a random timbre: a little 2nd/3rd harmonic
        wave += rng.uniform(0, 0.3) * np.sin(2 * phase) + rng.uniform(0, 0.15) * np.sin(3 * phase)
    return wave


def _lowpass_noise(n, rng, cutoff_hz):
    spec = np.fft.rfft(rng.normal(size=n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spec *= 1.0 / (1.0 + (freqs / cutoff_hz) ** 4)
    out = np.fft.irfft(spec, n)
    return out / (np.abs(out).max() + 1e-8)


def _segment(n, rng, lo=0.6, hi=0.95):
    """A sub-span [start, start+length) of the clip covering lo..hi of it."""
    length = int(n * rng.uniform(lo, hi))
    start = int(rng.integers(0, n - length + 1))
    return start, length


def _place(n, start, piece):
    out = np.zeros(n)
    out[start:start + len(piece)] = piece
    return out


def _steady(n, rng, f_lo, f_hi):
    start, length = _segment(n, rng)
    f = np.exp(rng.uniform(np.log(f_lo), np.log(f_hi)))
    return _place(n, start, _tone(f, length, rng) * _envelope(length))


def _chirp(n, rng, rising):
    start, length = _segment(n, rng)
    f0, f1 = np.exp(rng.uniform(np.log(200), np.log(500))), np.exp(rng.uniform(np.log(1500), np.log(4000)))
    if not rising:
        f0, f1 = f1, f0
    freq = np.exp(np.linspace(np.log(f0), np.log(f1), length))
    return _place(n, start, _tone(freq, length, rng) * _envelope(length))


def _beeps(n, rng, count):
    f = np.exp(rng.uniform(np.log(500), np.log(2500)))
    beep = int(SAMPLE_RATE * rng.uniform(0.08, 0.15))
    gap = int(SAMPLE_RATE * rng.uniform(0.1, 0.2))
    total = count * beep + (count - 1) * gap
    start = int(rng.integers(0, max(1, n - total)))
    out = np.zeros(n)
    for i in range(count):
        s = start + i * (beep + gap)
        out[s:s + beep] = _tone(f, beep, rng) * _envelope(beep, 0.005)
    return out


def _audio_low_tone(n, rng):
    return _steady(n, rng, 150, 300)


def _audio_high_tone(n, rng):
    return _steady(n, rng, 2000, 4000)


def _audio_rising_chirp(n, rng):
    return _chirp(n, rng, rising=True)


def _audio_falling_chirp(n, rng):
    return _chirp(n, rng, rising=False)


def _audio_siren(n, rng):
    start, length = _segment(n, rng, 0.75, 0.95)
    centre, depth = np.exp(rng.uniform(np.log(700), np.log(1100))), rng.uniform(0.35, 0.5)
    cycles = rng.uniform(1.0, 2.0)  # over the whole sound: a period of 0.4-1.9 s
    phase = 2 * np.pi * cycles * np.arange(length) / length - np.pi / 2  # starts at the bottom
    freq = centre * np.exp(depth * np.sin(phase))
    return _place(n, start, _tone(freq, length, rng) * _envelope(length))


def _audio_warble(n, rng):
    start, length = _segment(n, rng)
    f = np.exp(rng.uniform(np.log(400), np.log(1500)))
    rate, depth = rng.uniform(5, 9), rng.uniform(0.1, 0.2)
    freq = f * (1 + depth * np.sin(2 * np.pi * rate * _t(length)))
    return _place(n, start, _tone(freq, length, rng) * _envelope(length))


def _audio_two_beeps(n, rng):
    return _beeps(n, rng, 2)


def _audio_three_beeps(n, rng):
    return _beeps(n, rng, 3)


def _audio_noise_burst(n, rng):
    start, length = _segment(n, rng, 0.25, 0.5)
    return _place(n, start, rng.normal(size=length) * _envelope(length) * 0.5)


def _audio_rumble(n, rng):
    start, length = _segment(n, rng)
    return _place(n, start, _lowpass_noise(length, rng, rng.uniform(80, 200)) * _envelope(length, 0.05))


def _audio_ticks(n, rng):
    """A clock-like tick train: short resonant clicks (a decaying 2.5-5 kHz ring of ~20 ms), 4-8 per
    second.  A bare broadband click train was too close to a noise burst for the tiny front end."""
    rate, f = rng.uniform(4, 8), np.exp(rng.uniform(np.log(2500), np.log(5000)))
    tick_len = int(0.025 * SAMPLE_RATE)
    t = _t(tick_len)
    out = np.zeros(n)
    start, length = _segment(n, rng)
    for pos in np.arange(start, start + length - tick_len, SAMPLE_RATE / rate).astype(int):
        out[pos:pos + tick_len] += np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) * np.exp(-t / 0.006)
    return out


def _audio_fade_out(n, rng):
    start, length = _segment(n, rng, 0.7, 0.95)
    f = np.exp(rng.uniform(np.log(300), np.log(2000)))
    decay = np.exp(-_t(length) * rng.uniform(3.5, 6.0) / (length / SAMPLE_RATE))
    return _place(n, start, _tone(f, length, rng) * decay * _envelope(length, 0.005))


def render_audio(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A float32 clip of 1-2 s: the sound of ``kind`` plus background noise at a random level."""
    n = int(SAMPLE_RATE * rng.uniform(1.0, 2.0))
    wave = globals()[f"_audio_{kind}"](n, rng)
    wave = wave / (np.abs(wave).max() + 1e-8)
    wave += rng.normal(0, rng.uniform(0.003, 0.03), size=n)  # background hiss (SNR 30-50 dB)
    wave *= rng.uniform(0.3, 0.8) / (np.abs(wave).max() + 1e-8)
    return wave.astype(np.float32)


# ---- splits ------------------------------------------------------------------------------------
def write_image_split(out: str, split: str, n: int, seed: int,
                      motion_sketches: bool = False) -> List[Tuple[str, str, str]]:
    classes = image_renderers(motion_sketches)
    rng = np.random.default_rng([seed, 1, 0 if split == "train" else 1])
    os.makedirs(os.path.join(out, "images", split), exist_ok=True)
    rows = []
    for i, label in enumerate(class_labels(rng, n, len(classes), balanced=split != "train")):
        caption, render = classes[label]
        rel = f"images/{split}/{split}_{i:06d}.png"
        render(rng).save(os.path.join(out, rel), compress_level=1)
        rows.append((f"{split}_{i}", rel, caption))
    write_tsv(os.path.join(out, f"image_text_{split}.tsv"), ("image_id", "image", "caption"), rows)
    return rows


def write_audio_split(out: str, split: str, n: int, seed: int) -> List[Tuple[str, str, str, str]]:
    import soundfile as sf

    rng = np.random.default_rng([seed, 2, 0 if split == "train" else 1])
    os.makedirs(os.path.join(out, "audio", split), exist_ok=True)
    rows = []
    for i, label in enumerate(class_labels(rng, n, len(AUDIO_CLASSES), balanced=split != "train")):
        caption, kind = AUDIO_CLASSES[label]
        wave = render_audio(kind, rng)
        rel = f"audio/{split}/{split}_{i:06d}.wav"
        sf.write(os.path.join(out, rel), wave, SAMPLE_RATE, subtype="PCM_16")
        rows.append((f"{split}_{i}", rel, caption, f"{len(wave) / SAMPLE_RATE:.3f}"))
    write_tsv(os.path.join(out, f"audio_text_{split}.tsv"), ("uniq_id", "audio", "text", "duration"), rows)
    return rows


def generate(out: str, seed: int = 1, n_train_images: int = 3200, n_valid_images: int = 448,
             n_train_audio: int = 1440, n_valid_audio: int = 240, motion_sketches: bool = False) -> Dict[str, int]:
    """Write the whole dataset into ``out``; returns the row count of each TSV."""
    os.makedirs(out, exist_ok=True)
    counts = {}
    for split, n in (("train", n_train_images), ("valid", n_valid_images)):
        counts[f"image_text_{split}"] = len(write_image_split(out, split, n, seed, motion_sketches))
    for split, n in (("train", n_train_audio), ("valid", n_valid_audio)):
        counts[f"audio_text_{split}"] = len(write_audio_split(out, split, n, seed))
    for name, captions in (("image_captions.json", image_captions(motion_sketches)), ("audio_captions.json", audio_captions())):
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            json.dump(captions, f, indent=1)
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m one_peace.data_utils.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n-train-images", type=int, default=3200)
    parser.add_argument("--n-valid-images", type=int, default=448)
    parser.add_argument("--n-train-audio", type=int, default=1440)
    parser.add_argument("--n-valid-audio", type=int, default=240)
    parser.add_argument("--motion-sketches", action="store_true", help="add the motion sketches (video quickstart)")
    args = parser.parse_args(argv)
    start = time.time()
    counts = generate(args.out, args.seed, args.n_train_images, args.n_valid_images, args.n_train_audio,
                      args.n_valid_audio, args.motion_sketches)
    summary = ", ".join(f"{k}: {v}" for k, v in counts.items())
    print(f"synthetic data in {args.out} ({summary}; {len(image_captions(args.motion_sketches))} image captions, "
          f"{len(audio_captions())} audio captions) in {time.time() - start:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
