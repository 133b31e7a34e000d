"""The main job: the procedural dataset, and the shortened quickstart run end to end."""
import csv
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from one_peace.data_utils import synthetic, synthetic_video

REPO = Path(__file__).resolve().parents[1]


def read_tsv(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def digest(folder: Path):
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_synthetic_dataset_layout_splits_and_determinism(tmp_path):
    counts = synthetic.generate(str(tmp_path / "a"), seed=7, n_train_images=56, n_valid_images=28,
                                n_train_audio=24, n_valid_audio=12)
    assert counts == {"image_text_train": 56, "image_text_valid": 28, "audio_text_train": 24, "audio_text_valid": 12}
    root = tmp_path / "a"
    images = {split: read_tsv(root / f"image_text_{split}.tsv") for split in ("train", "valid")}
    audio = {split: read_tsv(root / f"audio_text_{split}.tsv") for split in ("train", "valid")}
    assert list(images["train"][0]) == ["image_id", "image", "caption"]
    assert list(audio["train"][0]) == ["uniq_id", "audio", "text", "duration"]
    image_captions = json.loads((root / "image_captions.json").read_text())
    audio_captions = json.loads((root / "audio_captions.json").read_text())
    assert len(set(image_captions)) == len(image_captions) == 28  # 16 shapes + 12 sound sketches
    # the video quickstart adds one motion sketch per video caption with --motion-sketches
    assert synthetic.image_captions(motion_sketches=True)[28:] == synthetic_video.video_captions()
    assert audio_captions == [c for c, _ in synthetic.AUDIO_CLASSES] and set(audio_captions) <= set(image_captions)
    for rows, col, caption_col, captions in ((images, "image", "caption", image_captions),
                                             (audio, "audio", "text", audio_captions)):
        train_files = {r[col] for r in rows["train"]}
        valid_files = {r[col] for r in rows["valid"]}
        assert not train_files & valid_files  # disjoint splits
        assert all((root / f).is_file() for f in train_files | valid_files)
        # the held-out split is class balanced over every caption
        held_out = [r[caption_col] for r in rows["valid"]]
        assert {held_out.count(c) for c in captions} == {len(held_out) // len(captions)}
    durations = [float(r["duration"]) for r in audio["train"]]
    assert 1.0 <= min(durations) and max(durations) <= 2.0
    # Same seed, same bytes; another seed, other data.
    synthetic.generate(str(tmp_path / "b"), seed=7, n_train_images=56, n_valid_images=28, n_train_audio=24,
                       n_valid_audio=12)
    synthetic.generate(str(tmp_path / "c"), seed=8, n_train_images=56, n_valid_images=28, n_train_audio=24,
                       n_valid_audio=12)
    assert digest(root) == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_quickstart_fast_variant_learns(tmp_path):
    """``quickstart.sh --fast`` (fewer samples and updates) must learn well above chance."""
    work = tmp_path / "work"
    env = dict(os.environ, PYTHON=sys.executable, PYTHONWARNINGS="ignore")
    proc = subprocess.run(["bash", str(REPO / "run_scripts" / "quickstart.sh"), str(work), "--fast"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    match = re.fullmatch(r"quickstart: image_to_text_acc=([0-9.]+) audio_to_text_acc=([0-9.]+)", lines[-1])
    assert match, lines[-5:]
    image_acc, audio_acc = float(match.group(1)), float(match.group(2))
    # chance: 1/28 = 0.036 for images, 1/12 = 0.083 for clips (the fast run measured 0.594 / 0.617 on
    # 2 cores; the full run's targets are 0.8 / 0.8, see docs/BENCHMARKS.md)
    assert image_acc >= 0.3 and audio_acc >= 0.2, lines[-6:]
    # progress was shown while training, and both stages wrote tensorboard logs and checkpoints
    assert sum("[train_inner]" in line for line in lines) >= 4
    assert [line for line in lines if line.startswith("[quickstart")]
    for stage in ("stage1", "stage2"):
        assert list((work / "tb" / stage).rglob("events.out.tfevents.*")), stage
        assert (work / stage / "checkpoint_last.pt").is_file()
    assert "stage2_pretrain: true" in (work / "configs" / "stage2.yaml").read_text()
