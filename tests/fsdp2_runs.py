"""Runs of ``fairseq-hydra-train`` on 1 or 2 gloo ranks for the FSDP2 tests (``tests/test_fsdp2.py``).

Each rank is its own process with fairseq's distributed flags (fairseq's torchrun path needs CUDA), as in
``tests/test_optim_training.py``.  The config is the tiny pretraining model on procedural images
(``tests/test_pretrain_training.py``) or the tiny VGGSound classifier on generated clips.
"""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TRAIN_INNER = re.compile(r"\[train_inner\]\[INFO\] - (\{.*\})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pretrain_config(data: Path, bpe_dir, stage2=None, max_update=3, batch_size=4, **model):
    """The tiny pretraining config: stage 1 on images, or (``stage2``: the stage-1 checkpoint) stage 2 on clips
    from that checkpoint, as ``run_scripts/quickstart.sh`` does; ``data`` holds the TSVs."""
    restore = {}
    if stage2:
        task = dict(_name="audio_text_pretrain", data=str(data / "audio_text_train.tsv"),
                    valid_data=str(data / "audio_text_train.tsv"), bpe_dir=str(bpe_dir), max_duration=2)
        # the image branch is dropped and the rest but the audio branch frozen (stage2_pretrain)
        model_cfg = {"_name": "one_peace_pretrain_tiny", "stage2_pretrain": True, "reset_logit_scale": True,
                     "encoder": {"use_image_moe": False, "drop_path_rate": 0.0, "dropout": 0.0},
                     "decoder": {"use_image_moe": False}}
        criterion = "audio_text_pretrain_loss"
        restore = {"restore_file": str(stage2), "reset_optimizer": True, "reset_dataloader": True,
                   "reset_meters": True, "reset_lr_scheduler": True}
    else:
        task = dict(_name="image_text_pretrain", data=str(data / "image_text_train.tsv"),
                    valid_data=str(data / "image_text_valid.tsv"), bpe_dir=str(bpe_dir), patch_image_size=32)
        model_cfg = {"_name": "one_peace_pretrain_tiny", "encoder": {"drop_path_rate": 0.0, "dropout": 0.0}}
        criterion = "image_text_pretrain_loss"
    model_cfg["encoder"].update(model)
    return {
        "common": {"cpu": True, "seed": 3, "log_format": "json", "log_interval": 1,
                   "user_dir": str(REPO / "user_src")},
        "dataset": {"batch_size": batch_size, "num_workers": 0, "disable_validation": True},
        "optimization": {"max_update": max_update, "lr": [1e-3], "clip_norm": 1.0},
        # adjust_adam with layer decay: the groups follow the parameters through the sharding
        "optimizer": {"_name": "adjust_adam", "adam_betas": "(0.9, 0.98)", "weight_decay": 0.05,
                      "layer_decay": 0.9, "no_bias_decay": True},
        "lr_scheduler": {"_name": "fixed", "warmup_updates": 0},
        "task": task,
        "criterion": {"_name": criterion},
        "checkpoint": {"save_interval_updates": 0, "no_epoch_checkpoints": True, **restore},
        "model": model_cfg,
    }


def write_config(folder: Path, config: dict, save_dir: Path):
    config = json.loads(json.dumps(config))
    config["checkpoint"]["save_dir"] = str(save_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.yaml").write_text(json.dumps(config, indent=1))  # JSON is YAML
    return ["fairseq-hydra-train", "--config-dir", str(folder), "--config-name", "train", "hydra.job.chdir=False",
            f"hydra.run.dir={folder / 'hydra'}", "hydra.output_subdir=null"]


def env():
    return dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONUNBUFFERED="1",
                PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")


def train(folder: Path, config: dict, save_dir: Path, world: int = 1, *overrides: str):
    """``fairseq-hydra-train`` on ``world`` gloo ranks; the logs of every rank."""
    return launch([*write_config(folder, config, save_dir), *overrides], world, folder)


def finetune(folder: Path, train_tsv: str, save_dir: Path, world: int, *overrides: str, num_gpus: int = 1):
    """The VGGSound run script (``adjust_adam``, layer decay 0.95) fine-tuning the tiny classifier on
    ``train_tsv`` (3 classes, batch 2 per rank, 1 epoch, fp32: ``tests/e2e_helpers.py``'s overrides):
    ``world`` processes with fairseq's flags, or one with ``NUM_GPUS`` > 1 (the script's torchrun)."""
    from e2e_helpers import BPE_DIR, TINY, tiny_model

    folder.mkdir(parents=True, exist_ok=True)
    script = "vggsound/finetune.sh"
    cmd = ["bash", str(REPO / "run_scripts" / script), tiny_model(script), *TINY, "task.num_classes=3", *overrides]
    return launch(cmd, world, folder, TRAIN_TSV=train_tsv, VALID_TSV=train_tsv, BATCH="2", UPDATE_FREQ="1",
                  EPOCHS="1", SAVE_DIR=str(save_dir), NUM_GPUS=str(num_gpus), MASTER_PORT=str(free_port()),
                  BPE_DIR=str(BPE_DIR))


def torchrun(folder: Path, config: dict, save_dir: Path, nodes: int, *overrides: str):
    """The documented torchrun command lines at 2 processes: one node with ``--nproc_per_node=2``, or two
    "nodes" on 127.0.0.1 (``--nnodes=2 --node_rank=0/1``, one process each)."""
    cmd = write_config(folder, config, save_dir)
    cmd[0] = str(VENV_BIN / "one-peace-hydra-train")
    port = free_port()
    train_args = [*cmd, "distributed_training.distributed_world_size=2", *overrides]
    if nodes == 1:
        launches = [["--nproc_per_node=2", f"--master_port={port}"]]
    else:
        launches = [[f"--nnodes={nodes}", f"--node_rank={rank}", "--nproc_per_node=1", "--master_addr=127.0.0.1",
                     f"--master_port={port}"] for rank in range(nodes)]
    procs = []
    for node, flags in enumerate(launches):
        node_args = [f"hydra.run.dir={folder / f'hydra{node}'}" if a.startswith("hydra.run.dir=") else a
                     for a in train_args]
        procs.append(subprocess.Popen([str(VENV_BIN / "torchrun"), *flags, *node_args], cwd=folder, env=env(),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for node, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"node {node} failed:\n{log[-6000:]}"
    return logs


def launch(cmd, world: int, folder: Path, **env_extra):
    """``cmd`` once per rank, concurrently, with fairseq's distributed flags (gloo, no spawn)."""
    port = free_port()
    procs = []
    for rank in range(world):
        flags = [] if world == 1 else [
            f"distributed_training.distributed_world_size={world}", f"distributed_training.distributed_rank={rank}",
            "distributed_training.distributed_no_spawn=true", "distributed_training.distributed_backend=gloo",
            f"distributed_training.distributed_init_method=tcp://127.0.0.1:{port}"]
        procs.append(subprocess.Popen([*cmd, *flags], cwd=folder, env={**env(), **env_extra}, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{log[-6000:]}"
    return logs


def losses(log: str) -> dict:
    out = {}
    for match in TRAIN_INNER.finditer(log):
        stats = json.loads(match.group(1))
        out[int(stats["num_updates"])] = float(stats["loss"])
    return out


def weights(checkpoint: Path) -> dict:
    """The model weights of a ``.pt`` or a sharded checkpoint directory, whole."""
    from one_peace.models.checkpoint import load_checkpoint_file

    return dict(load_checkpoint_file(str(checkpoint))["model"])


def max_difference(a: dict, b: dict) -> float:
    """Largest |a - b| relative to the tensor's largest magnitude, over every floating tensor."""
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:10]
    worst = 0.0
    for key, value in a.items():
        if value.is_floating_point():
            scale = max(b[key].abs().max().item(), 1e-12)
            worst = max(worst, (value.float() - b[key].float()).abs().max().item() / scale)
    return worst




def max_abs_difference(a: dict, b: dict) -> float:
    """Largest |a - b| over every floating tensor."""
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:10]
    return max((value.float() - b[key].float()).abs().max().item() for key, value in a.items()
               if value.is_floating_point())


def share_differing(a: dict, b: dict, atol: float) -> float:
    """The share of all floating elements where |a - b| > atol."""
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:10]
    pairs = [(value.float(), b[key].float()) for key, value in a.items() if value.is_floating_point()]
    return sum(int(((x - y).abs() > atol).sum()) for x, y in pairs) / sum(x.numel() for x, _ in pairs)
