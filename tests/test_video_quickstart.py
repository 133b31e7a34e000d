"""The video quickstart: procedural clips, and the shortened run end to end (quickstart --fast first)."""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from one_peace.data_utils import synthetic_video
from one_peace.data_utils.video import load_video

REPO = Path(__file__).resolve().parents[1]


def read_tsv(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_clips_captions_splits_and_motion():
    captions = synthetic_video.video_captions()
    assert len(captions) == len(set(captions)) == 52 and "a red circle rotating" not in captions
    rng = np.random.default_rng(0)
    left = synthetic_video.render_clip("red", "circle", "moving left", rng)
    grow = synthetic_video.render_clip("blue", "triangle", "growing", rng)
    assert len(left) == 8 and left[0].size == (64, 64)

    def centre_and_area(frame, colour):
        arr = np.asarray(frame, dtype=np.float32)
        near = np.abs(arr - np.array(synthetic_video.COLOURS[colour])).sum(-1) < 90
        ys, xs = np.nonzero(near)
        return xs.mean(), near.sum()

    xs = [centre_and_area(f, "red")[0] for f in left]
    areas = [centre_and_area(f, "blue")[1] for f in grow]
    assert all(b < a for a, b in zip(xs, xs[1:]))  # the shape moves left frame after frame
    assert areas[-1] > 3 * areas[0]


def test_motion_sketches_draw_every_caption_with_the_shape_leading_its_streak():
    from one_peace.data_utils import synthetic

    assert synthetic.image_captions(motion_sketches=True)[-52:] == synthetic_video.video_captions()
    rng = np.random.default_rng(1)
    for motion, axis, leading_half in (("moving left", 1, 0), ("moving right", 1, 1), ("moving up", 0, 0),
                                       ("moving down", 0, 1)):
        for _ in range(5):
            sketch = np.asarray(synthetic_video.render_motion_sketch("blue", "circle", motion, rng), np.float32)
            solid = np.abs(sketch - np.array(synthetic_video.COLOURS["blue"])).sum(-1) < 60
            position = np.nonzero(solid)[axis].mean()  # solid colour: the shape, not its fading streak
            assert (position >= sketch.shape[axis] / 2) == bool(leading_half), motion


def test_generated_split_layout(tmp_path):
    counts = synthetic_video.generate(str(tmp_path), seed=3, n_train=20, n_valid=52)
    assert counts == {"video_text_train": 20, "video_text_valid": 52}
    train, valid = read_tsv(tmp_path / "video_text_train.tsv"), read_tsv(tmp_path / "video_text_valid.tsv")
    assert list(train[0]) == ["uniq_id", "video", "text"]
    assert not {r["video"] for r in train} & {r["video"] for r in valid}
    assert sorted(r["text"] for r in valid) == sorted(json.loads((tmp_path / "video_captions.json").read_text()))
    assert len(load_video(str(tmp_path / valid[0]["video"]), 8)) == 8


@pytest.mark.slow  # 4.5 min on 2 cores (it runs the quickstart first): keeps the default suite under 20 min
def test_video_quickstart_fast_variant_learns(tmp_path):
    """``video_quickstart.sh --fast`` (quickstart --fast first, fewer clips and updates) learns above chance."""
    work = tmp_path / "work"
    env = dict(os.environ, PYTHON=sys.executable, PYTHONWARNINGS="ignore")
    proc = subprocess.run(["bash", str(REPO / "run_scripts" / "video_quickstart.sh"), str(work), "--fast"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    match = re.fullmatch(r"video_quickstart: video_to_text_acc=([0-9.]+) motion_acc=([0-9.]+)", lines[-1])
    assert match, lines[-5:]
    acc, motion = float(match.group(1)), float(match.group(2))
    # chance: 1/52 = 0.019 over all captions, 0.5 on the reversed-motion pairs.  motion_acc moves by up to ~0.1
    # between runs that differ only in float rounding (0.573-0.854 over three seeds and two codes of equal
    # outputs; docs/BENCHMARKS.md, issue #28): the bar sits between that and chance, the backwards check below
    # is the sharper test of reading frame order.
    assert acc >= 0.1 and motion >= 0.55, lines[-4:]
    # Played backwards a clip shows the reversed motion: a model blind to frame order scores the same
    # both ways, one that reads it prefers the reversed caption more often.
    backwards = float(re.search(r"played backwards: motion accuracy ([0-9.]+)", proc.stdout).group(1))
    assert backwards < motion - 0.05, (motion, backwards)
    assert any("video branch initialised from the image branch" in line for line in lines)
    assert sum("[train_inner]" in line for line in lines) >= 2
    assert (work / "video" / "checkpoint_last.pt").is_file()
    assert list((work / "tb" / "video").rglob("events.out.tfevents.*"))
