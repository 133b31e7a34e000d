"""``fairseq-train --cpu --bf16``, the flag a user tries first: fairseq 0.12's argparse turned it into TPU
mode (``'NoneType' object has no attribute 'xla_device'``); it now trains in bf16 on the CPU.  ``--fp16`` on a
CPU (a crash once the model was built) and ``--amp`` (float32 under a warning) stop at start naming the option."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import BPE_ASSETS

from one_peace.data_utils import synthetic

REPO = Path(__file__).resolve().parents[1]


STAGES = {  # (data writer, task, criterion, task flags)
    "image_text": (synthetic.write_image_split, "image_text_pretrain", "image_text_pretrain_loss",
                   ["--patch-image-size", "32"]),
    "audio_text": (synthetic.write_audio_split, "audio_text_pretrain", "audio_text_pretrain_loss",
                   ["--max-duration", "1"]),
}


@pytest.mark.parametrize("flag,stage", [("--bf16", "image_text"), ("--memory-efficient-bf16", "image_text"),
                                        ("--bf16", "audio_text")])
def test_fairseq_train_bf16_on_cpu_trains(tmp_path, flag, stage):
    save_dir = tmp_path / "ckpt"
    proc = subprocess.run(train_command(tmp_path, stage, flag, save_dir), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (save_dir / "checkpoint_last.pt").is_file(), proc.stderr[-3000:]
    state = torch.load(save_dir / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert state["cfg"]["common"]["bf16"] and not state["cfg"]["common"]["tpu"]
    assert state["optimizer_history"][-1]["num_updates"] == 2
    weights = [v for v in state["model"].values() if v.is_floating_point()]
    assert weights and all(torch.isfinite(v.float()).all() for v in weights)


@pytest.mark.parametrize("flag", ["--fp16", "--amp"])
def test_fairseq_train_fp16_or_amp_on_cpu_stops_at_start_naming_the_option(tmp_path, flag):
    """``--fp16`` crashed after building the model (fairseq's flat float32 copy is made on the CUDA device);
    ``--amp`` (CUDA autocast, turned off by torch on a CPU) trained in float32 under a warning.  The fp16
    variants without the flat copy train on the CPU (``test_optim_training.py``)."""
    save_dir = tmp_path / "ckpt"
    proc = subprocess.run(train_command(tmp_path, "image_text", flag, save_dir), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-2]  # the error line, above the ONE_PEACE_TRACEBACK hint
    assert last.startswith(f"fairseq-train: error: {flag} (common.{flag[2:]})") and "--cpu is set" in last, \
        proc.stderr[-2000:]
    assert "--bf16" in last and "Traceback" not in proc.stderr
    assert "ModelWrapper" not in proc.stderr  # refused before the model was built (fairseq prints it once built)
    assert not save_dir.exists()


def train_command(tmp_path, stage, flag, save_dir):
    write, task, criterion, task_flags = STAGES[stage]
    write(str(tmp_path / "data"), "train", 8, seed=1)
    write(str(tmp_path / "data"), "valid", 4, seed=1)
    return [os.path.join(os.path.dirname(sys.executable), "fairseq-train"), str(tmp_path / f"data/{stage}_train.tsv"),
           "--valid-data", str(tmp_path / f"data/{stage}_valid.tsv"), "--user-dir", str(REPO / "user_src"),
           "--task", task, "--arch", "one_peace_pretrain_tiny", "--criterion", criterion,
           "--optimizer", "adam", "--lr", "1e-4", "--batch-size", "4", "--max-update", "2",
           "--cpu", flag, "--data-buffer-size", "0", "--ignore-unused-valid-subsets", *task_flags,
           "--bpe-dir", str(BPE_ASSETS), "--save-dir", str(save_dir), "--disable-validation"]
