"""Batches whose every row is bad: out of the metrics, into ``skipped_samples`` (train and valid, 1 and 2 workers).

fairseq's trainer runs its dummy batch (an earlier real batch) in place of an empty one; in a single
process it logged the dummy's outputs into the validation metrics that pick ``checkpoint_best`` (16 good
rows were reported as 24) and no skipped row of such a batch was counted.  Each run here trains the tiny
pretraining model with ``--lr 0`` (the weights never change), so a run whose data has extra bad rows must
report exactly the metrics of the same run without them.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from one_peace.data_utils import synthetic
from one_peace.data_utils.dataset import TSVDataset, empty_batch, has_rows, skipped_rows

REPO = Path(__file__).resolve().parents[1]
FAIRSEQ_TRAIN = Path(sys.executable).parent / "fairseq-train"
STATS = re.compile(r"\| (train|valid) \| (\{.*\})")
BAD_ROWS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``clean``: 16 training and 16 validation rows; ``bad``: the same plus 3 rows whose images are
    missing, last in the validation file (with batch size 8 the third batch is all bad)."""
    clean = tmp_path_factory.mktemp("clean")
    synthetic.write_image_split(str(clean), "train", 16, seed=5)
    synthetic.write_image_split(str(clean), "valid", 16, seed=5)
    bad = tmp_path_factory.mktemp("bad")
    shutil.copytree(clean, bad, dirs_exist_ok=True)
    for split in ("train", "valid"):
        tsv = bad / f"image_text_{split}.tsv"
        missing = [f"bad_{i}\timages/{split}/missing_{i}.png\ta picture nobody drew" for i in range(BAD_ROWS)]
        tsv.write_text(tsv.read_text() + "\n".join(missing) + "\n")
    return {"clean": clean, "bad": bad}


def train_cmd(data: Path, save_dir: Path, bpe_dir, *extra):
    return [str(FAIRSEQ_TRAIN), str(data / "image_text_train.tsv"), "--valid-data", str(data / "image_text_valid.tsv"),
            "--bpe-dir", bpe_dir, "--user-dir", str(REPO / "user_src"), "--task", "image_text_pretrain",
            "--arch", "one_peace_pretrain_tiny", "--patch-image-size", "32", "--criterion", "image_text_pretrain_loss",
            "--optimizer", "adam", "--lr", "0", "--batch-size", "1", "--batch-size-valid", "8", "--max-epoch", "1",
            "--cpu", "--data-buffer-size", "0", "--num-workers", "0", "--seed", "3", "--log-format", "json",
            "--ignore-unused-valid-subsets", "--save-dir", str(save_dir), "--no-epoch-checkpoints", *extra]


def env():
    return dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")


def stats(log: str, tag: str) -> dict:
    found = [json.loads(m.group(2)) for m in STATS.finditer(log) if m.group(1) == tag]
    assert found, log[-4000:]
    return {key: float(value) for key, value in found[-1].items()}


def run(cmd, cwd) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


def run_ranks(cmd, cwd, port) -> list:
    flags = ["--distributed-world-size", "2", "--distributed-no-spawn", "--distributed-backend", "gloo",
             "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--ddp-backend", "legacy_ddp"]
    procs = [subprocess.Popen(cmd + flags + ["--distributed-rank", str(rank)], cwd=cwd, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{log[-5000:]}"
    return logs


def assert_same_metrics(got: dict, want: dict, prefix: str):
    for key, value in want.items():
        if key.endswith(("wps", "ups", "wall", "_skipped_samples", "num_updates")) or "gnorm" in key:
            continue  # timings; the counts are checked by the caller
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-6), (prefix, key, got[key], value)


def test_collater_returns_a_countable_empty_batch():
    class Dataset(TSVDataset):
        def __init__(self):
            self.skip_bad_samples = True

        def collate(self, samples):
            return {"net_input": {"x": torch.zeros(len(samples))}}

    batch = Dataset().collater([None, None, None])
    assert batch == empty_batch(3) and not has_rows(batch) and skipped_rows(batch) == 3
    assert Dataset().collater([]) == empty_batch(0)  # fairseq's padding batch of a worker out of data
    real = Dataset().collater([None, {"id": 4}])
    assert has_rows(real) and real["num_skipped"] == 1 and skipped_rows(real) == 0  # counted from its logs
    assert not has_rows("DUMMY") and not has_rows({}) and not has_rows(None)


def test_one_process_skips_all_bad_batches_and_counts_them(data, tmp_path, fixture_bpe_dir):
    reference = run(train_cmd(data["clean"], tmp_path / "clean", fixture_bpe_dir, "--no-save"), tmp_path)
    log = run(train_cmd(data["bad"], tmp_path / "bad", fixture_bpe_dir), tmp_path)

    valid, want = stats(log, "valid"), stats(reference, "valid")
    assert valid["valid_nsentences"] == 16 and valid["valid_skipped_samples"] == BAD_ROWS  # were 24 and 0
    assert want["valid_skipped_samples"] == 0
    assert_same_metrics(valid, want, "valid")  # the loss that picks checkpoint_best included
    assert (tmp_path / "bad" / "checkpoint_best.pt").is_file()

    # Training with batch size 1: each bad row is an all-bad batch, skipped with no update.
    train = stats(log, "train")
    assert train["train_nsentences"] == 16 and train["train_skipped_samples"] == BAD_ROWS
    assert train["train_num_updates"] == 16 == stats(reference, "train")["train_num_updates"]


def test_two_workers_keep_in_step_and_count_the_skipped_rows(data, tmp_path, fixture_bpe_dir):
    # Valid: rank 0 holds batches 1 and 3 (all bad), rank 1 batch 2 and fairseq's padding batch; both run the
    # dummy batch in the last step.  Train (update_freq 2): the 3 bad rows fall anywhere in the accumulation.
    extra = ["--update-freq", "2"]
    reference = run_ranks(train_cmd(data["clean"], tmp_path / "clean", fixture_bpe_dir, "--no-save", *extra),
                          tmp_path, port=29741)
    logs = run_ranks(train_cmd(data["bad"], tmp_path / "bad", fixture_bpe_dir, *extra), tmp_path, port=29743)

    valid, want = stats(logs[0], "valid"), stats(reference[0], "valid")
    assert valid["valid_nsentences"] == 16 and valid["valid_skipped_samples"] == BAD_ROWS
    assert_same_metrics(valid, want, "valid")  # wpb/bsz too: the step where both ran the dummy logs nothing

    train = stats(logs[0], "train")
    assert train["train_nsentences"] == 16 and train["train_skipped_samples"] == BAD_ROWS
    assert train["train_logit_scale_exp"] == pytest.approx(stats(reference[0], "train")["train_logit_scale_exp"])
    assert (tmp_path / "bad" / "checkpoint_best.pt").is_file() and (tmp_path / "bad" / "checkpoint_last.pt").is_file()
