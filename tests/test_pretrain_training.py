"""Pretraining through fairseq's own trainer: resume after SIGKILL, bad rows in training, empty TSVs.

Each test runs ``fairseq-hydra-train --user-dir user_src`` (fairseq-train's hydra front end,
the one the quickstart uses) on a few dozen procedural images with the tiny architecture.
"""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from one_peace.data_utils import synthetic

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TRAIN_INNER = re.compile(r"\[train_inner\]\[INFO\] - (\{.*\})")
TRAIN_EPOCH = re.compile(r"\[train\]\[INFO\] - (\{.*\})")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    synthetic.write_image_split(str(out), "train", 40, seed=5)
    synthetic.write_image_split(str(out), "valid", 8, seed=5)
    return out


def write_config(path: Path, data: Path, save_dir: Path, bpe_dir, max_update=40, num_workers=0, **task):
    task_fields = dict(_name="image_text_pretrain", data=str(data / "image_text_train.tsv"),
                       valid_data=str(data / "image_text_valid.tsv"), bpe_dir=str(bpe_dir), patch_image_size=32,
                       **task)
    config = {
        "common": {"cpu": True, "seed": 3, "log_format": "json", "log_interval": 1,
                   "user_dir": str(REPO / "user_src")},
        "dataset": {"batch_size": 4, "num_workers": num_workers, "disable_validation": True},
        "optimization": {"max_update": max_update, "lr": [1e-3], "clip_norm": 1.0},
        "optimizer": {"_name": "adam", "adam_betas": "(0.9, 0.98)"},
        "lr_scheduler": {"_name": "cosine", "warmup_updates": 3},
        "task": task_fields,
        "criterion": {"_name": "image_text_pretrain_loss"},
        "checkpoint": {"save_dir": str(save_dir), "save_interval_updates": 7, "no_epoch_checkpoints": True,
                       "keep_interval_updates": 1},
        # drop-path and dropout on: a resumed run must also reproduce the random streams.
        "model": {"_name": "one_peace_pretrain_tiny", "encoder": {"drop_path_rate": 0.1, "dropout": 0.1}},
    }
    path.mkdir(parents=True, exist_ok=True)
    # JSON is valid YAML; hydra reads it as the primary config.
    (path / "train.yaml").write_text(json.dumps(config, indent=1))
    return ["fairseq-hydra-train", "--config-dir", str(path), "--config-name", "train", "hydra.job.chdir=False",
            f"hydra.run.dir={path / 'hydra'}", "hydra.output_subdir=null"]


def env():
    return dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONUNBUFFERED="1",
                PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")


def run(cmd, cwd, check=True):
    proc = subprocess.run(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.returncode, proc.stdout


def losses_by_update(log: str):
    out = {}
    for match in TRAIN_INNER.finditer(log):
        stats = json.loads(match.group(1))
        out[int(stats["num_updates"])] = {k: stats[k] for k in ("loss", "itc_loss", "dcl_image_loss", "gnorm")}
    return out


def test_sigkill_then_restart_continues_like_an_uninterrupted_run(images, tmp_path, fixture_bpe_dir):
    """With a loader worker (fairseq's default): masks and augmentations are drawn in the worker."""
    # Uninterrupted reference.
    ref_cmd = write_config(tmp_path / "ref", images, tmp_path / "ref" / "ckpt", fixture_bpe_dir, num_workers=1)
    _, ref_log = run(ref_cmd, tmp_path)
    reference = losses_by_update(ref_log)
    assert sorted(reference) == list(range(1, 41)), sorted(reference)

    # Same run, killed with SIGKILL right after a mid-epoch checkpoint of epoch 2 (40 rows / 4 = 10 per epoch).
    cmd = write_config(tmp_path / "run", images, tmp_path / "run" / "ckpt", fixture_bpe_dir, num_workers=1)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first_log = []
    for line in proc.stdout:
        first_log.append(line)
        if re.search(r"[Ss]aved checkpoint .*checkpoint_14\.pt|[Ss]aved checkpoint .*@ 14 updates", line):
            proc.send_signal(signal.SIGKILL)
            break
    proc.stdout.close()
    assert proc.wait(timeout=60) == -signal.SIGKILL, "".join(first_log)[-3000:]
    before = losses_by_update("".join(first_log))
    assert max(before) < 40

    # The same command again: it must pick up checkpoint_last.pt.
    _, resumed_log = run(cmd, tmp_path)
    loaded = re.search(r"[Ll]oaded checkpoint \S*checkpoint_last\.pt \(epoch (\d+) @ (\d+) updates\)", resumed_log)
    assert loaded, resumed_log[-3000:]
    assert (int(loaded.group(1)), int(loaded.group(2))) == (2, 14)
    # the restarted model was built without initialising the weights checkpoint_last.pt provides
    assert "built without initialising them" in resumed_log, resumed_log[-3000:]
    after = losses_by_update(resumed_log)
    assert sorted(after) == list(range(15, 41))
    for update in range(15, 41):
        assert after[update] == reference[update], (update, after[update], reference[update])

    # And the final weights are bit-identical.
    final_ref = torch.load(tmp_path / "ref" / "ckpt" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    final = torch.load(tmp_path / "run" / "ckpt" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert final["model"].keys() == final_ref["model"].keys()
    for key, value in final_ref["model"].items():
        assert torch.equal(final["model"][key], value), key


def corrupt_copy(images: Path, dest: Path):
    """The synthetic split with a missing image, a corrupt image and a row missing a field."""
    import shutil

    shutil.copytree(images, dest)
    lines = (dest / "image_text_train.tsv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    missing_path = rows[2].split("\t")[1]
    (dest / missing_path).unlink()
    corrupt_path = rows[5].split("\t")[1]
    (dest / corrupt_path).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rows[9] = "\t".join(rows[9].split("\t")[:2])  # caption field gone
    (dest / "image_text_train.tsv").write_text("\n".join([header] + rows) + "\n")
    # 1-based line numbers in the file (header is line 1)
    return {4: missing_path, 7: corrupt_path, 11: None}


def test_bad_rows_are_reported_skipped_and_counted(images, tmp_path, fixture_bpe_dir):
    data = tmp_path / "data"
    bad = corrupt_copy(images, data)
    tsv = data / "image_text_train.tsv"
    cmd = write_config(tmp_path / "skip", data, tmp_path / "skip" / "ckpt", fixture_bpe_dir, max_update=10)
    _, log = run(cmd, tmp_path)
    warnings = [line for line in log.splitlines() if "skipping bad sample" in line]
    assert len(warnings) == 3, "\n".join(warnings)
    for line_no, media in bad.items():
        hit = [w for w in warnings if f"{tsv}, row {line_no}:" in w]
        assert len(hit) == 1, (line_no, warnings)
        if media is None:
            assert "missing fields" in hit[0]
        else:
            assert media in hit[0]
    epoch = [json.loads(m.group(1)) for m in TRAIN_EPOCH.finditer(log)]  # json epoch stats: "train_" keys
    assert epoch and float(epoch[-1]["train_skipped_samples"]) == 3
    assert float(epoch[-1]["train_nsentences"]) == 37
    assert (tmp_path / "skip" / "ckpt" / "checkpoint_last.pt").is_file()

    # The option that turns skipping into a hard error names the first bad row.
    cmd = write_config(tmp_path / "strict", data, tmp_path / "strict" / "ckpt", fixture_bpe_dir, max_update=10,
                       skip_bad_samples=False)
    rc, log = run(cmd, tmp_path, check=False)
    assert rc != 0
    assert re.search(rf"BadSampleError: {re.escape(str(tsv))}, row (4|7|11): ", log), log[-3000:]


@pytest.mark.parametrize("content, message", [
    ("image_id\timage\tcaption\n", "has a header"),
    ("", "empty file"),
])
def test_empty_or_header_only_tsv_fails_at_start(images, tmp_path, fixture_bpe_dir, content, message):
    data = tmp_path / "data"
    data.mkdir()
    (data / "image_text_train.tsv").write_text(content)
    (data / "image_text_valid.tsv").write_text((images / "image_text_valid.tsv").read_text())
    cmd = write_config(tmp_path / "cfg", data, tmp_path / "ckpt", fixture_bpe_dir, max_update=5)
    rc, log = run(cmd, tmp_path, check=False)
    assert rc != 0
    assert f"{data / 'image_text_train.tsv'}: {message}" in log, log[-3000:]
    assert "train_inner" not in log
