"""Training from tar shards through fairseq-train: a run killed mid-epoch and restarted sees exactly the
samples (and losses) of an uninterrupted run; two gloo ranks pretrain on the real Tux Paint stamps and
sounds packed into shards, every sample read once per epoch."""
import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from one_peace.data_utils import synthetic
from one_peace.data_utils.tsv_to_shards import convert

REPO = Path(__file__).resolve().parents[1]
FAIRSEQ_TRAIN = Path(sys.executable).parent / "fairseq-train"
KEYS = re.compile(r"^rank (\d+) epoch (\d+) batch (\d+) keys: (.*)$", re.M)
INNER = re.compile(r"\| train_inner \| (\{.*\})$", re.M)
MEDIA = os.path.join(os.environ.get("ONE_PEACE_REAL_MEDIA", os.path.expanduser("~/.cache/one_peace/real_media")),
                     "tuxpaint")


def env():
    return dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")


def train_cmd(task, pattern, save_dir, bpe_dir, *extra):
    """fairseq-train on ``pattern``; the batches' sample keys go to ``save_dir``.keys."""
    criterion = {"image_text_pretrain": "image_text_pretrain_loss", "audio_text_pretrain": "audio_text_pretrain_loss"}
    return [str(FAIRSEQ_TRAIN), pattern, "--user-dir", str(REPO / "user_src"), "--task", task,
            "--arch", "one_peace_pretrain_tiny", "--criterion", criterion[task], "--bpe-dir", bpe_dir,
            "--optimizer", "adam", "--lr", "1e-3", "--clip-norm", "1.0", "--cpu", "--data-buffer-size", "0",
            "--seed", "3", "--log-format", "json", "--log-interval", "1", "--disable-validation",
            "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--sample-keys-file", f"{save_dir}.keys", *extra]


def batches(path, rank=0):
    """{(epoch, batch): keys} of the batches rank ``rank`` took (a batch taken again after a restart: the
    last time)."""
    with open(path, encoding="utf-8") as fh:
        found = KEYS.findall(fh.read())
    return {(int(e), int(b)): keys.split() for r, e, b, keys in found if int(r) == rank}


def losses(log):
    return {int(s["num_updates"]): s["loss"] for s in map(json.loads, INNER.findall(log))}


def run(cmd, cwd):
    proc = subprocess.run(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


@pytest.fixture(scope="module")
def image_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    synthetic.write_image_split(str(out), "train", 40, seed=5)
    return convert(str(out / "image_text_train.tsv"), str(out / "shards"), samples_per_shard=6)["pattern"]


def test_killed_and_restarted_run_sees_the_samples_of_an_uninterrupted_one(image_shards, tmp_path, fixture_bpe_dir):
    # 7 shards (6 x 6 + 4) read by 2 loader workers through a shuffle buffer: 4 shards and 3, 10 or 11 batches
    def cmd(name):
        return train_cmd("image_text_pretrain", image_shards, tmp_path / name, fixture_bpe_dir, "--patch-image-size",
                         "32", "--batch-size", "4", "--num-workers", "2", "--shuffle-buffer", "8",
                         "--max-update", "26", "--save-interval-updates", "15", "--keep-interval-updates", "1")

    reference = run(cmd("ref"), tmp_path)
    ref_batches, ref_losses = batches(tmp_path / "ref.keys"), losses(reference)
    assert sorted(ref_losses) == list(range(1, 27))
    first_epoch = [k for (e, _), keys in ref_batches.items() if e == 1 for k in keys]
    assert len(first_epoch) == len(set(first_epoch)) == 40  # an epoch is every sample once
    length = {epoch: max(b for e, b in ref_batches if e == epoch) for epoch in (1, 2)}
    assert set(length.values()) <= {10, 11}

    # killed right after the first mid-epoch checkpoint of epoch 2
    proc = subprocess.Popen(cmd("run"), cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines, saved = [], None
    for line in proc.stdout:
        lines.append(line)
        saved = re.search(r"Saved checkpoint \S*checkpoint_2_(\d+)\.pt", line)
        if saved:
            proc.send_signal(signal.SIGKILL)
            break
    proc.stdout.close()
    assert proc.wait(timeout=60) == -signal.SIGKILL, "".join(lines)[-3000:]
    updates = int(saved.group(1))
    position = updates - length[1]  # batches of epoch 2 trained before the checkpoint: some of each worker
    # (the killed run may have taken the next batch already: it was never trained)
    os.rename(tmp_path / "run.keys", tmp_path / "killed.keys")
    taken = {k: v for k, v in batches(tmp_path / "killed.keys").items() if k[0] == 1 or k[1] <= position}

    resumed = run(cmd("run"), tmp_path)
    assert f"resuming epoch 2 after {position} of its {length[2]} batches" in resumed, resumed[-3000:]
    seen = {**taken, **batches(tmp_path / "run.keys")}
    assert seen == ref_batches  # the same samples, in the same batches and order
    after = losses(resumed)
    assert sorted(after) == list(range(updates + 1, 27))
    assert all(after[n] == ref_losses[n] for n in after)
    final_ref = torch.load(tmp_path / "ref" / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]
    final = torch.load(tmp_path / "run" / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]
    assert all(torch.equal(final[k], v) for k, v in final_ref.items())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(cmd, cwd):
    flags = ["--distributed-world-size", "2", "--distributed-no-spawn", "--distributed-backend", "gloo",
             "--distributed-init-method", f"tcp://127.0.0.1:{free_port()}", "--ddp-backend", "legacy_ddp"]
    procs = [subprocess.Popen(cmd + flags + ["--distributed-rank", str(rank)], cwd=cwd, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{log[-5000:]}"
    return logs


def assert_each_sample_once_per_epoch(keys_file, samples):
    per_rank = [batches(keys_file, rank) for rank in (0, 1)]
    assert per_rank[0].keys() == per_rank[1].keys()  # the same steps on both ranks
    by_epoch = defaultdict(list)
    for seen in per_rank:
        for (epoch, _), keys in seen.items():
            by_epoch[epoch] += keys
    assert by_epoch
    for keys in by_epoch.values():
        assert sorted(keys) == sorted(samples)


@pytest.mark.slow
@pytest.mark.real_media
@pytest.mark.skipif(not os.path.isfile(os.path.join(MEDIA, "stamps.tsv")),
                    reason=f"{MEDIA} absent: run  bash run_scripts/fetch_real_media.sh")
def test_two_gloo_ranks_pretrain_on_real_stamps_and_sounds_from_shards(tmp_path, fixture_bpe_dir):
    sys.path.insert(0, str(REPO / "run_scripts"))
    import real_demo_data

    data = tmp_path / "data"
    real_demo_data.main(["--media", MEDIA, "--out", str(data), "--image-size", "48"])
    images = convert(str(data / "image_text_train.tsv"), str(tmp_path / "images"), samples_per_shard=50)
    # the sounds as stored (Ogg Vorbis at their own rates), not the demo's 16 kHz WAVs
    with open(os.path.join(MEDIA, "stamps.tsv"), encoding="utf-8", newline="") as fh:
        stamps = [r for r in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE) if r["sound"]]
    with open(tmp_path / "sounds.tsv", "w", encoding="utf-8") as fh:
        fh.write("uniq_id\taudio\ttext\tduration\n")
        fh.writelines(f"{i}\t{os.path.join(MEDIA, r['sound'])}\t{r['caption']}\t0\n" for i, r in enumerate(stamps))
    sounds = convert(str(tmp_path / "sounds.tsv"), str(tmp_path / "sounds"), samples_per_shard=16)
    assert sounds["skipped"] == 0 and images["skipped"] == 0

    logs = run_ranks(train_cmd("image_text_pretrain", images["pattern"], tmp_path / "stage1", fixture_bpe_dir,
                               "--patch-image-size", "48", "--batch-size", "16", "--num-workers", "2",
                               "--max-epoch", "1"), tmp_path)
    assert (tmp_path / "stage1" / "checkpoint_last.pt").is_file()
    keys = [f"{n:05d}{i:02d}" for n, size in enumerate(images["sizes"].values()) for i in range(size)]
    assert_each_sample_once_per_epoch(tmp_path / "stage1.keys", keys)
    epoch = json.loads(re.search(r"\| train \| (\{.*\})$", logs[0], re.M).group(1))
    assert (epoch["train_nsentences"], epoch["train_skipped_samples"]) == (len(keys), 0)

    logs = run_ranks(train_cmd("audio_text_pretrain", sounds["pattern"], tmp_path / "stage2", fixture_bpe_dir,
                               "--max-duration", "3", "--batch-size", "8", "--num-workers", "1",
                               "--max-epoch", "1"), tmp_path)
    assert (tmp_path / "stage2" / "checkpoint_last.pt").is_file()
    keys = [f"{n:05d}{i:02d}" for n, size in enumerate(sounds["sizes"].values()) for i in range(size)]
    assert_each_sample_once_per_epoch(tmp_path / "stage2.keys", keys)
    epoch = json.loads(re.search(r"\| train \| (\{.*\})$", logs[0], re.M).group(1))
    assert (epoch["train_nsentences"], epoch["train_skipped_samples"]) == (len(keys), 0)  # every Ogg decoded
