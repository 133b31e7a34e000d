"""Every run script answers --help, and runs without the venv activated (as the README documents it)."""
import subprocess
import sys

import pytest
from e2e_helpers import REPO, documented_env

SHELL_SCRIPTS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "run_scripts").rglob("*.sh")
                       if p.name not in ("common.sh", "quickstart_setup.sh"))
PY_SCRIPTS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "run_scripts").rglob("*.py")
                    if "__main__" in p.read_text())


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shell_script_help_prints_usage_and_touches_nothing(script, tmp_path):
    proc = subprocess.run(["bash", str(REPO / script), "--help"], cwd=tmp_path, env=documented_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) >= 1 and "#" not in proc.stdout.splitlines()[0]
    assert script.rsplit("/", 1)[-1] in proc.stdout or "bash run_scripts" in proc.stdout, proc.stdout
    assert not list(tmp_path.iterdir()), "--help must not create files"


@pytest.mark.parametrize("script", PY_SCRIPTS)
def test_python_script_help(script, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / script), "--help"], cwd=tmp_path, env=documented_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout.lower()
    assert not list(tmp_path.iterdir())


def test_missing_interpreter_is_a_clear_error(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "run_scripts/esc50/evaluate.sh")], cwd=tmp_path,
                          env=documented_env(PYTHON=str(tmp_path / "no-such-python")),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "cannot import one_peace" in proc.stderr and "pip install" in proc.stderr, proc.stderr


def test_quickstart_on_a_prepared_dataset_names_the_missing_file(tmp_path):
    """QUICKSTART_DATA (what run_scripts/real_demo.sh trains on) must hold the generator's files."""
    data = tmp_path / "prepared"
    data.mkdir()
    (data / "image_text_train.tsv").write_text("image_id\timage\tcaption\n")
    proc = subprocess.run(["bash", str(REPO / "run_scripts/quickstart.sh"), str(tmp_path / "work")], cwd=tmp_path,
                          env=documented_env(QUICKSTART_DATA=str(data)), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f"QUICKSTART_DATA={data} has no image_text_valid.tsv" in proc.stderr, proc.stderr
    assert not (tmp_path / "work" / "stage1").exists()
