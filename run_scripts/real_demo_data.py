"""Prepare the real-data demonstration's dataset from the Tux Paint stamps (run_scripts/real_demo.sh).

Reads ``tuxpaint/stamps.tsv`` of run_scripts/fetch_real_media.sh's cache (real cut-out photographs and
drawings, each with a human-written caption; about a fifth with a recorded sound) and writes, in the
quickstart's layout (``QUICKSTART_DATA``)::

    image_text_{train,valid}.tsv   image_id  image  caption  concept
    audio_text_{train,valid}.tsv   uniq_id   audio  text     duration  concept
    image_captions.json / audio_captions.json   the held-out concepts' captions (zero-shot candidates)
    concepts.json                  every concept: caption, split, its stamps, its sound, its category
    images/{train,valid}/*.png  audio/{train,valid}/*.wav

A *concept* is one caption (``frog.png`` and ``frog-1.png`` are both "A frog."); the held-out split
("valid") is a set of whole concepts, drawn separately among concepts with and without a sound, so no
held-out image, sound or caption is seen in training.  Audio and images are never paired: each is
paired with text only.

``--captions category`` (default) appends the stamp's category from its folder ("A frog. Animals:
amphibians."): a held-out concept's name is a word the model never saw, so without a shared word a
zero-shot match to it can only be chance (``--captions stamp`` keeps the caption alone to measure that).

Images: the stamps are RGBA cut-outs; they are composited on white (the colour under transparent
pixels is arbitrary), padded to a square and resized to ``--image-size`` px.  Sounds are decoded with
``one_peace.data_utils.audio.load_audio`` (Ogg Vorbis at 5-44.1 kHz -> 16 kHz mono) and written as WAV.
A stamp or sound that cannot be decoded is reported and left out (counted in the summary).
"""
import argparse
import collections
import csv
import json
import os
import random
import sys

import numpy as np
import soundfile as sf

from one_peace.data_utils.stamps import concept_key, square_on_white


def category_of(image_path: str) -> str:
    # stamps/animals/amphibians/frog.png -> "Animals: amphibians"
    parts = [p.replace("_", " ").replace("-", " ") for p in image_path.split("/")[1:-1]]
    if not parts:
        return ""
    return parts[0].capitalize() + (": " + ", ".join(parts[1:]) if len(parts) > 1 else "")


def read_stamps(media: str):
    path = os.path.join(media, "stamps.tsv")
    if not os.path.isfile(path):
        raise SystemExit(f"real_demo_data: {path} not found: run  bash run_scripts/fetch_real_media.sh")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    missing = {"image", "caption", "sound"} - set(rows[0] if rows else {})
    if missing:
        raise SystemExit(f"real_demo_data: {path} lacks the columns {sorted(missing)}")
    return rows


def group_concepts(rows):
    concepts = collections.OrderedDict()
    for row in rows:
        caption = " ".join(row["caption"].split())
        key = concept_key(caption)
        if not key:
            continue
        c = concepts.setdefault(key, {"caption": caption, "category": category_of(row["image"]),
                                      "images": [], "sound": ""})
        c["images"].append(row["image"])
        if row["sound"] and not c["sound"]:
            c["sound"] = row["sound"]
    return concepts


def split_concepts(concepts, holdout: float, seed: int):
    rng = random.Random(seed)
    for with_sound in (True, False):
        keys = sorted(k for k, c in concepts.items() if bool(c["sound"]) == with_sound)
        rng.shuffle(keys)
        n_valid = round(holdout * len(keys))
        for i, k in enumerate(keys):
            concepts[k]["split"] = "valid" if i < n_valid else "train"


def text_of(concept, captions: str) -> str:
    if captions == "category" and concept["category"]:
        return f"{concept['caption']} {concept['category']}."
    return concept["caption"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--media", required=True, help="the tuxpaint/ folder of fetch_real_media.sh's cache")
    parser.add_argument("--out", required=True)
    parser.add_argument("--captions", choices=["category", "stamp"], default="category")
    parser.add_argument("--holdout", type=float, default=0.2, help="fraction of concepts held out")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=96)
    args = parser.parse_args(argv)

    from one_peace.data_utils.audio import SAMPLE_RATE, load_audio

    concepts = group_concepts(read_stamps(args.media))
    split_concepts(concepts, args.holdout, args.split_seed)
    rows = {(kind, split): [] for kind in ("image", "audio") for split in ("train", "valid")}
    failed = []
    for split in ("train", "valid"):
        for kind in ("images", "audio"):
            os.makedirs(os.path.join(args.out, kind, split), exist_ok=True)
    for n, (key, c) in enumerate(concepts.items()):
        text, split = text_of(c, args.captions), c["split"]
        for j, stamp in enumerate(c["images"]):
            rel = f"images/{split}/{n:04d}_{j}.png"
            try:
                square_on_white(os.path.join(args.media, stamp), args.image_size).save(os.path.join(args.out, rel))
            except Exception as exc:  # noqa: BLE001 - report any undecodable stamp and go on
                failed.append(f"{stamp}: {exc}")
                continue
            rows["image", split].append((f"{n:04d}_{j}", rel, text, key))
        if c["sound"]:
            rel = f"audio/{split}/{n:04d}.wav"
            try:
                wav = load_audio(os.path.join(args.media, c["sound"]))
            except (OSError, ValueError) as exc:
                failed.append(str(exc))
            else:
                sf.write(os.path.join(args.out, rel), np.clip(wav, -1, 1), SAMPLE_RATE, subtype="PCM_16")
                rows["audio", split].append((f"{n:04d}", rel, text, f"{len(wav) / SAMPLE_RATE:.3f}", key))
    for (kind, split), items in rows.items():
        header = ("image_id", "image", "caption", "concept") if kind == "image" else \
            ("uniq_id", "audio", "text", "duration", "concept")
        with open(os.path.join(args.out, f"{kind}_text_{split}.tsv"), "w", encoding="utf-8") as f:
            f.write("\t".join(header) + "\n")
            f.writelines("\t".join(item) + "\n" for item in items)
    for kind in ("image", "audio"):
        held_out = sorted({item[2] for item in rows[kind, "valid"]})
        with open(os.path.join(args.out, f"{kind}_captions.json"), "w", encoding="utf-8") as f:
            json.dump(held_out, f, indent=0, ensure_ascii=False)
    with open(os.path.join(args.out, "concepts.json"), "w", encoding="utf-8") as f:
        json.dump({k: dict(c, text=text_of(c, args.captions)) for k, c in concepts.items()}, f, indent=1,
                  ensure_ascii=False)
    for message in failed:
        print(f"real_demo_data: skipped {message}", file=sys.stderr)
    counts = {f"{kind}_{split}": len(items) for (kind, split), items in rows.items()}
    n_valid = sum(c["split"] == "valid" for c in concepts.values())
    print(f"real_demo_data: {len(concepts)} concepts ({n_valid} held out), " +
          ", ".join(f"{k} {v}" for k, v in counts.items()) + f", {len(failed)} skipped", flush=True)


if __name__ == "__main__":
    main()
