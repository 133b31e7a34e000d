"""The Tux Paint stamps of ``run_scripts/fetch_real_media.sh``'s cache, read for the local MTEB tasks.

``tuxpaint/stamps.tsv`` lists each stamp (a cut-out photograph or drawing, ``image``), its human-written
caption and, for about a fifth, its recorded sound (``sound``; paths relative to ``tuxpaint/``).  As in
``run_scripts/real_demo_data.py``, a *concept* is one caption (``frog.png`` and ``frog-1.png`` are both
"A frog."), a stamp's category is its folder under ``stamps/`` (``animals``, ``food``, ...), images are
composited on white (the colour under a stamp's transparent pixels is arbitrary) and padded to a
square, and sounds are decoded by ``data_utils/audio.py:load_audio`` (kept at their own sample rate:
the encoder resamples them as the hub resamples files).
"""
import collections
import csv
import os
import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import soundfile as sf

from ..data_utils.audio import load_audio
from ..data_utils.stamps import concept_key

ENV_MEDIA = "ONE_PEACE_REAL_MEDIA"
DEBIAN_VERSION = "2022.06.04-1"  # tuxpaint-stamps-default, as fetch_real_media.sh records it in .fetched
FETCH = "bash run_scripts/fetch_real_media.sh"


def default_media() -> str:
    return os.environ.get(ENV_MEDIA) or os.path.expanduser("~/.cache/one_peace/real_media")


@dataclass
class Concept:
    key: str
    caption: str
    category: str
    images: List[str] = field(default_factory=list)
    sound: str = ""


def stamps_folder(media: Optional[str]) -> str:
    """``<media>/tuxpaint`` (``media``: the real-media cache, default ``$ONE_PEACE_REAL_MEDIA`` or
    ``~/.cache/one_peace/real_media``); FileNotFoundError saying how to fetch it when it is absent."""
    folder = os.path.join(os.path.expanduser(media or default_media()), "tuxpaint")
    if not os.path.isfile(os.path.join(folder, "stamps.tsv")):
        raise FileNotFoundError(f"{folder}/stamps.tsv not found: the Tux Paint stamps come from  {FETCH}  "
                                f"(or point --media / ${ENV_MEDIA} to the cache it filled)")
    return folder


def fetched_version(folder: str) -> Optional[str]:
    marker = os.path.join(folder, ".fetched")
    return open(marker, encoding="utf-8").read().strip() if os.path.isfile(marker) else None


def read_concepts(folder: str) -> List[Concept]:
    """Concepts in file order, each with its stamps, its first sound and its category."""
    path = os.path.join(folder, "stamps.tsv")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    missing = {"image", "caption", "sound"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path} lacks the columns {sorted(missing)}")
    concepts: Dict[str, Concept] = collections.OrderedDict()
    for line, row in enumerate(rows, start=2):
        caption = " ".join((row["caption"] or "").split())
        key = concept_key(caption)
        if not key or not row["image"]:
            raise ValueError(f"{path} line {line}: a stamp needs an image and a caption, got {row!r}")
        concept = concepts.setdefault(key, Concept(key, caption, category_of(row["image"])))
        concept.images.append(row["image"])
        if row["sound"] and not concept.sound:
            concept.sound = row["sound"]
    return list(concepts.values())


def category_of(image: str) -> str:
    """``stamps/animals/birds/x.png`` -> ``animals``."""
    parts = image.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "stamps" else "uncategorised"


def stamp_sound(path: str) -> dict:
    """MTEB's ``AudioInputItem`` of a stamp sound: mono float32 samples at the file's own rate."""
    rate = sf.info(path).samplerate
    return {"array": load_audio(path, target_sr=rate), "sampling_rate": int(rate)}


def split_by_label(labels: Sequence[str], seed: int = 0) -> Tuple[List[int], List[int]]:
    """Stratified halves: per label, a seeded shuffle of its rows, the first ceil(n/2) to train."""
    by_label = collections.defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(i)
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted(by_label):
        rows = by_label[label]
        rng.shuffle(rows)
        half = (len(rows) + 1) // 2
        train += rows[:half]
        test += rows[half:]
    return sorted(train), sorted(test)


def frequent(labels: Sequence[str], minimum: int) -> set:
    """Labels with at least ``minimum`` rows."""
    counts = collections.Counter(labels)
    return {label for label, n in counts.items() if n >= minimum}


def sound_arrays(folder: str, concepts: Sequence[Concept]) -> List[dict]:
    return [stamp_sound(os.path.join(folder, c.sound)) for c in concepts]

