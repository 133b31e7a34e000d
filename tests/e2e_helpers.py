"""Shared pieces of the end-to-end benchmark tests: run a run script, the tiny overrides, read results."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ONE_PEACE_SHARED", REPO.parent / "shared"))
BPE_DIR = SHARED / "assets" / "bpe"
VENV_BIN = Path(sys.executable).parent


# The yaml's size preset (one_peace_<model>_4b) swapped for the fixtures' tiny one, on CPU, in float32.
TINY = [
    "model.encoder.drop_path_rate=0.0", "model.encoder.checkpoint_activations=false",
    "task.patch_image_size=32", "common.cpu=true", "common.bf16=false", "common.memory_efficient_bf16=false",
    "common.log_interval=1", "dataset.num_workers=0", "checkpoint.no_epoch_checkpoints=true",
]


def tiny_model(script):
    """``model._name=<model>_tiny`` for the yaml the run script trains with."""
    text = (REPO / "run_scripts" / script).read_text()
    config = re.search(r'finetune_on_tsvs "\$HERE" (\S+)', text).group(1)
    name = re.search(r"^  _name: (\S+)_4b$", (REPO / "run_scripts" / script).parent.joinpath(f"{config}.yaml")
                     .read_text(), re.M).group(1)
    return f"model._name={name}_tiny"


def documented_env(**extra) -> dict:
    """The environment of a user who followed the README: the venv is not activated (not on PATH); the
    run scripts must find the project's interpreter themselves (``PYTHON`` only if it is not ``.venv``)."""
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and Path(p).resolve() != VENV_BIN.resolve())
    env = dict(os.environ, PATH=path)
    env.pop("VIRTUAL_ENV", None)
    if VENV_BIN.resolve() != (REPO / ".venv" / "bin").resolve():
        env["PYTHON"] = sys.executable
    env.update(extra)
    return env


def run(cmd, env_extra, cwd):
    env = documented_env(NUM_GPUS="1", BPE_DIR=str(BPE_DIR), PYTHONWARNINGS="ignore")
    env.update(env_extra)
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout + proc.stderr


def finetune(script, data, tmp_path, train, valid, *overrides, **env):
    save_dir = tmp_path / "ckpt"
    env = {**dict(TRAIN_TSV=train, VALID_TSV=valid, BATCH="2", UPDATE_FREQ="1", EPOCHS="1", SAVE_DIR=str(save_dir)),
           **env}
    log = run(["bash", str(REPO / "run_scripts" / script), tiny_model(script), *TINY, *overrides], env, tmp_path)
    assert (save_dir / "checkpoint_best.pt").is_file(), log[-3000:]
    return save_dir / "checkpoint_best.pt", log


def evaluate(argv):
    from one_peace.evaluate import run_cli

    return run_cli([str(a) for a in argv])


def read_results(results_dir, subset="test"):
    preds = json.loads((Path(results_dir) / f"{subset}_predict.json").read_text())
    metrics = json.loads((Path(results_dir) / f"{subset}_metrics.json").read_text())
    return preds, metrics


def run_script_module(path: str):
    """A Python file under run_scripts/ (a converter, ...) loaded as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(path).stem, REPO / "run_scripts" / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
