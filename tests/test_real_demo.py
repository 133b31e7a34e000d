"""run_scripts/real_demo.sh's data preparation and evaluation: whole concepts held out, images and
sounds decoded from the real stamps, and the emergent audio -> image ranking counted correctly."""
import csv
import json
import os
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "run_scripts"))
import real_demo_data  # noqa: E402
import real_demo_eval  # noqa: E402

MEDIA = os.path.join(os.environ.get("ONE_PEACE_REAL_MEDIA", os.path.expanduser("~/.cache/one_peace/real_media")),
                     "tuxpaint")


def read(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.mark.real_media
@pytest.mark.skipif(not os.path.isfile(os.path.join(MEDIA, "stamps.tsv")),
                    reason=f"{MEDIA} absent: run  bash run_scripts/fetch_real_media.sh")
def test_prepared_real_data_holds_out_whole_concepts(tmp_path):
    out = tmp_path / "data"
    real_demo_data.main(["--media", MEDIA, "--out", str(out), "--image-size", "48"])
    tsv = {(k, s): read(out / f"{k}_text_{s}.tsv") for k in ("image", "audio") for s in ("train", "valid")}
    concepts = {s: {r["concept"] for k in ("image", "audio") for r in tsv[k, s]} for s in ("train", "valid")}
    assert not concepts["train"] & concepts["valid"]
    # about a fifth of the concepts, with and without sounds, held out
    n_sound = len(tsv["audio", "train"]) + len(tsv["audio", "valid"])
    assert abs(len(tsv["audio", "valid"]) - 0.2 * n_sound) <= 1
    assert 0.15 < len(concepts["valid"]) / len(concepts["train"] | concepts["valid"]) < 0.25
    # every sound's concept has an image in the same split (the emergent ranking needs one)
    for s in ("train", "valid"):
        assert {r["concept"] for r in tsv["audio", s]} <= {r["concept"] for r in tsv["image", s]}
    # captions carry the category; held-out captions are the zero-shot candidates
    described = json.loads((out / "concepts.json").read_text())
    row = tsv["image", "valid"][0]
    concept = described[row["concept"]]
    assert concept["split"] == "valid" and concept["category"]
    assert row["caption"] == f"{concept['caption']} {concept['category']}."
    assert json.loads((out / "image_captions.json").read_text()) == sorted({r["caption"] for r in tsv["image", "valid"]})
    # images composited on white (the stamps' transparent corners), square, at the asked size
    img = Image.open(out / row["image"])
    assert img.mode == "RGB" and img.size == (48, 48)
    assert np.asarray(img)[0, 0].tolist() == [255, 255, 255]
    # sounds decoded from Ogg Vorbis at their own rates to 16 kHz WAV, durations recorded
    clip = tsv["audio", "train"][0]
    wav, sr = sf.read(out / clip["audio"])
    assert sr == 16000 and wav.ndim == 1 and abs(len(wav) / sr - float(clip["duration"])) < 1e-3
    assert np.isfinite(wav).all() and np.abs(wav).max() > 0.01


def test_emergent_ranking_counts_the_best_image_of_the_concept(tmp_path, monkeypatch):
    (tmp_path / "image_text_valid.tsv").write_text(
        "image_id\timage\tcaption\tconcept\n"
        "a0\ta0.png\tA cow.\tcow\na1\ta1.png\tA cow.\tcow\nb0\tb0.png\tAn owl.\towl\nc0\tc0.png\tA car.\tcar\n")
    (tmp_path / "audio_text_valid.tsv").write_text(
        "uniq_id\taudio\ttext\tduration\tconcept\ns0\ts0.wav\tA cow.\t1\tcow\ns1\ts1.wav\tAn owl.\t1\towl\n")
    e = torch.eye(4)
    images = {"a0.png": e[0], "a1.png": e[1], "b0.png": e[2], "c0.png": e[3]}
    # the cow sound is nearest the owl image, then its second cow image: best own rank 2;
    # the owl sound is nearest the owl image: rank 1
    sounds = torch.stack([0.9 * e[2] + 0.5 * e[1] + 0.1 * e[0], e[2] + 0.2 * e[3]])
    texts = {"A cow.": e[0], "An owl.": e[2], "A car.": e[3]}

    def fake_embed(hub, kind, paths, batch_size=64):
        if kind == "image":
            return torch.stack([images[os.path.basename(p)] for p in paths])
        if kind == "audio":
            return sounds
        return torch.stack([texts[t] for t in paths])

    monkeypatch.setattr(real_demo_eval, "embed", fake_embed)
    hub = object()  # every embedding comes from fake_embed
    r = real_demo_eval.evaluate_split(str(tmp_path), "valid", hub, hub, hub)
    assert r["audio_to_image_ranks"] == [2, 1]
    assert r["audio_to_image_top1"] == 0.5 and r["audio_to_image_median_rank"] == 1.5
    # chance: cow has 2 of 4 images (top-1 1/2, best rank 5/3), owl 1 of 4 (1/4, 5/2)
    assert r["audio_to_image_top1_chance"] == pytest.approx((0.5 + 0.25) / 2)
    assert r["audio_to_image_mean_rank_chance"] == pytest.approx((5 / 3 + 5 / 2) / 2)
    # image -> text among "A car.", "A cow.", "An owl.": a1 (e1) is near none and takes the first, wrongly
    assert r["image_to_text_top1"] == 0.75 and r["image_to_text_chance"] == pytest.approx(1 / 3)
    assert r["audio_to_text_top1"] == 0.5  # the cow sound is nearest "An owl."
