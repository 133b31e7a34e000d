"""Helpers of the query-side search tests (compound queries, filters, pages, near-duplicates, the page):
a library of real photos with re-encoded, resized, cropped and byte copies, night and day scenes, sounds
of several lengths, each folder with its own date (indexed by ``search_query_fixtures.query_index``)."""
import os
import shutil
import sqlite3
from datetime import datetime

import numpy as np
import soundfile as sf
from helpers import MEDIA, require
from PIL import Image, ImageDraw
from search_helpers import write_wav

PHOTOS = ("dog.JPEG", "elephant.JPEG", "one_piece.jpeg", "pokemons.jpg")
COPIES = ("q10.jpg", "half.png", "crop.jpg")  # JPEG quality 10, half size, 2 % cut from each side
SCENES = 6  # night and day scenes each
# each folder's files are dated (mtime: no EXIF in these files, so it is their taken_at)
DATES = {"photos": datetime(2020, 5, 5, 12), "copies": datetime(2025, 1, 10, 12), "night": datetime(2023, 1, 15, 22),
         "day": datetime(2024, 7, 1, 12), "sounds": datetime(2022, 3, 3, 9)}
DURATIONS = {"cow.flac": 5.0, "cow_copy.wav": 5.0, "tone_1s.wav": 1.0, "tone_3s.wav": 3.0}


def stamp(path, when: datetime):
    t = when.timestamp()
    os.utime(path, (t, t))


def make_copies(photo, out_dir):
    """The three copies of ``photo`` that must group with it as near-duplicates."""
    image = Image.open(photo).convert("RGB")
    stem = os.path.splitext(os.path.basename(photo))[0]
    image.save(out_dir / f"{stem}_q10.jpg", quality=10)
    image.resize((image.width // 2, image.height // 2), Image.BICUBIC).save(out_dir / f"{stem}_half.png")
    cut_x, cut_y = int(image.width * 0.02), int(image.height * 0.02)
    image.crop((cut_x, cut_y, image.width - cut_x, image.height - cut_y)).save(out_dir / f"{stem}_crop.jpg",
                                                                                quality=90)


def make_scene(path, kind: str, rng):
    """A night scene (dark sky, stars, a moon, dark ground) or a day one (blue sky, a sun, green grass)."""
    sky = (10, 15, int(rng.integers(30, 70))) if kind == "night" else \
        (int(rng.integers(120, 170)), int(rng.integers(180, 220)), 255)
    image = Image.new("RGB", (96, 64), sky)
    draw = ImageDraw.Draw(image)
    if kind == "night":
        for _ in range(20):
            draw.point((int(rng.integers(0, 96)), int(rng.integers(0, 40))), fill=(255, 255, 230))
        x, y = int(rng.integers(10, 80)), int(rng.integers(5, 25))
        draw.ellipse((x, y, x + 12, y + 12), fill=(240, 240, 210))
        draw.rectangle((0, 48, 96, 64), fill=(5, 30, 10))
    else:
        x, y = int(rng.integers(10, 80)), int(rng.integers(5, 25))
        draw.ellipse((x, y, x + 14, y + 14), fill=(255, 220, 40))
        draw.rectangle((0, 48, 96, 64), fill=(40, 160, 50))
    image.save(path)


def make_library(root):
    """The folders of the index (see the module doc); returns ``root``."""
    for sub in ("photos", "copies", "scenes", "sounds"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        shutil.copy(require(MEDIA / name), root / "photos" / name)
        make_copies(root / "photos" / name, root / "copies")
        stamp(root / "photos" / name, DATES["photos"])
    shutil.copy(root / "photos" / "dog.JPEG", root / "copies" / "dog_same.jpg")  # a byte copy: a tie
    for path in (root / "copies").iterdir():
        stamp(path, DATES["copies"])
    rng = np.random.default_rng(0)
    for i in range(SCENES):
        for kind in ("night", "day"):
            make_scene(root / "scenes" / f"{kind}_{i}.png", kind, rng)
            stamp(root / "scenes" / f"{kind}_{i}.png", DATES[kind])
    shutil.copy(MEDIA / "cow.flac", root / "sounds" / "cow.flac")
    samples, rate = sf.read(str(MEDIA / "cow.flac"), dtype="float32")
    sf.write(str(root / "sounds" / "cow_copy.wav"), samples, rate)  # the same sound, another container
    write_wav(root / "sounds" / "tone_1s.wav", 440.0, seconds=1.0)
    write_wav(root / "sounds" / "tone_3s.wav", 880.0, seconds=3.0)
    for path in (root / "sounds").iterdir():
        stamp(path, DATES["sounds"])
    return root


def stored(index, modality):
    """{path: vector} of a modality's stored vectors (one per file here)."""
    with sqlite3.connect(os.path.join(index, "index.sqlite")) as db:
        rows = db.execute("SELECT path, vector FROM vectors WHERE modality = ?", (modality,)).fetchall()
    return {p: np.frombuffer(v, np.float32) for p, v in rows}


def vector_id(index, path):
    with sqlite3.connect(os.path.join(index, "index.sqlite")) as db:
        return db.execute("SELECT id FROM vectors WHERE path = ?", (str(path),)).fetchone()[0]


