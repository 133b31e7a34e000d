"""The official optimizer and schedule in real ``fairseq-hydra-train`` runs of a benchmark script.

VGGSound's run script (``adjust_adam`` with layer decay 0.95 + ``adjust_cosine`` with
``warmup_ratio``, ``max_update: 0``) fine-tunes a tiny model on six generated clips: the learning
rate of every update follows the schedule computed from the epochs and the epoch size; every
precision fairseq offers on CPU trains; a run resumed from a checkpoint (optimizer state and
groups restored) ends where an uninterrupted one does; and the optimizer state sharded over two
processes (gloo, one process per rank with fairseq's distributed flags) gives the parameters of one process.
"""
import math
import re
import shutil
import subprocess

import pytest
import torch
from audio_bench_data import make_audio_data
from e2e_helpers import BPE_DIR, REPO, TINY, documented_env, finetune, tiny_model

LR, MIN_LR = 8e-5, 1e-6  # finetune_vggsound.yaml


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_audio_data(tmp_path_factory.mktemp("optim_audio"))


def vggsound(data, tmp_path, *overrides, **env):
    return finetune("vggsound/finetune.sh", data, tmp_path, data["vgg"], data["vgg"], "task.num_classes=3",
                    *overrides, **env)


def logged_lrs(log):
    """The lr fairseq logs after each update (the lr of the next one)."""
    return [float(v) for v in re.findall(r"epoch \d+:\s+\d+ / \d+ .*?lr=([0-9.e-]+)", log)]


def cosine(n, total, ratio=0.1):
    warmup = int(total * ratio)
    if n < warmup:
        return MIN_LR + n * (LR - MIN_LR) / warmup
    return MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * (n - warmup) / (total - warmup)))


def final_params(checkpoint):
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]


def assert_same_params(a, b, tol=1e-6):
    assert set(a) == set(b)
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst <= tol, worst


def test_benchmark_script_follows_the_epoch_based_schedule(data, tmp_path):
    # 6 clips / batch 2 = 3 updates per epoch, 4 epochs: 12 updates, warmup int(1.2) = 1.
    _, log = vggsound(data, tmp_path, EPOCHS="4")
    assert re.search(r"adjust_adam: 8 parameter groups \(layer_decay 0.95, no_bias_decay True\)", log)
    lrs = logged_lrs(log)
    assert len(lrs) == 12  # the last is logged after the last update, used by none
    assert lrs[:11] == pytest.approx([cosine(n, 12) for n in range(1, 12)], rel=1e-4)


@pytest.mark.parametrize("precision", [
    ["common.bf16=true", "common.memory_efficient_bf16=true"],  # the official set-up
    ["common.bf16=true"],
    ["common.fp16=true", "common.memory_efficient_fp16=true"],
    ["common.fp16=true", "common.fp16_no_flatten_grads=true"],
], ids=["bf16-memory-efficient", "bf16", "fp16-memory-efficient", "fp16-no-flatten"])
def test_mixed_precision_trains_with_layer_decay(precision, data, tmp_path):
    checkpoint, log = vggsound(data, tmp_path, "optimization.max_update=2", *precision)
    assert "adjust_adam: 8 parameter groups" in log
    assert len(logged_lrs(log)) == 2
    losses = [float(v) for v in re.findall(r"epoch \d+:\s+\d+ / \d+ loss=([0-9.e-]+)", log)]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert checkpoint.is_file()


def test_resume_and_sharded_state_match_one_uninterrupted_process(data, tmp_path):
    # Batch 3 over 6 clips = 2 batches per epoch: one update per epoch on one process with
    # update_freq 2 (both batches), or on two processes (one batch each) -- the same update.
    keep = ["checkpoint.no_epoch_checkpoints=false", "checkpoint.no_save_optimizer_state=false"]
    (tmp_path / "one").mkdir()
    vggsound(data, tmp_path / "one", "distributed_training.ddp_backend=c10d", *keep,
             BATCH="3", UPDATE_FREQ="2", EPOCHS="3")
    reference = final_params(tmp_path / "one" / "ckpt" / "checkpoint_last.pt")

    # Resume after epoch 2 from a copy of its checkpoint: optimizer state, groups and schedule come back.
    resumed = tmp_path / "resumed"
    (resumed / "ckpt").mkdir(parents=True)
    shutil.copy(tmp_path / "one" / "ckpt" / "checkpoint2.pt", resumed / "ckpt" / "checkpoint_last.pt")
    _, log = vggsound(data, resumed, *keep, BATCH="3", UPDATE_FREQ="2", EPOCHS="3")
    assert "Loaded checkpoint" in log and len(logged_lrs(log)) == 1
    assert_same_params(final_params(resumed / "ckpt" / "checkpoint_last.pt"), reference)

    # Two gloo processes with the optimizer state sharded (fairseq's torchrun path needs CUDA,
    # so each rank is the run script with fairseq's explicit distributed flags).
    two = tmp_path / "two"
    logs = run_ranks(2, ["bash", str(REPO / "run_scripts/vggsound/finetune.sh"), tiny_model("vggsound/finetune.sh"),
                         *TINY, "task.num_classes=3", *keep],
                     dict(TRAIN_TSV=data["vgg"], VALID_TSV=data["vgg"], BATCH="3", UPDATE_FREQ="1", EPOCHS="3",
                          SAVE_DIR=str(two / "ckpt")), tmp_path)
    assert "optimizer state sharded over 2 workers" in logs[0]
    assert_same_params(final_params(two / "ckpt" / "checkpoint_last.pt"), reference)


def run_ranks(world, cmd, env_extra, cwd, port=29731):
    """``cmd`` once per rank, concurrently, with fairseq's distributed flags (gloo, no spawn)."""
    env = documented_env(NUM_GPUS="1", BPE_DIR=str(BPE_DIR), PYTHONWARNINGS="ignore", **env_extra)
    procs = []
    for rank in range(world):
        flags = [f"distributed_training.distributed_world_size={world}", f"distributed_training.distributed_rank={rank}",
                 "distributed_training.distributed_no_spawn=true", "distributed_training.distributed_backend=gloo",
                 f"distributed_training.distributed_init_method=tcp://127.0.0.1:{port}"]
        procs.append(subprocess.Popen([*cmd, *flags], env=env, cwd=cwd, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{log[-5000:]}"
    return logs
