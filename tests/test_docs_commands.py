"""The README's example commands run as written (the blocks marked ``<!-- docs-run -->``).

Each marked bash block runs in a scratch folder laid out like the repository root (``user_src``
and ``.venv`` linked), in order, so later blocks may use what earlier ones wrote.  Set-up commands
are run by ``.ci/run`` itself; the quickstart (``--fast``) and the hub example have tests of their own.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BPE_ASSETS, REPO

MARKER = "<!-- docs-run -->"


def marked_blocks(markdown: str):
    return re.findall(re.escape(MARKER) + r"\s*```bash\n(.*?)```", markdown, flags=re.S)


def test_readme_marks_its_training_commands():
    blocks = marked_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 2 and all("fairseq-train" in b for b in blocks)


def test_readme_commands_run_as_written(tmp_path):
    (tmp_path / "user_src").symlink_to(REPO / "user_src")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    env = dict(os.environ, ONE_PEACE_BPE_DIR=str(BPE_ASSETS))
    env.pop("PYTHONWARNINGS", None)
    for block in marked_blocks((REPO / "README.md").read_text()):
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{block}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        # a plain start prints no warnings (fairseq's own are filtered by the plugin)
        warnings = [line for line in (proc.stdout + proc.stderr).splitlines() if "Warning:" in line]
        assert not warnings, warnings[:5]
        # nor lines users read as failures: tracebacks, fairseq's "shared parameter" lines for bias=None slots
        for noise in ("Traceback", "AssertionError", "detected shared parameter", "DEBUG"):
            assert noise not in proc.stdout + proc.stderr, (noise, block)
    # training really ran (fairseq exits 0 without training on some mistakes): checkpoints exist
    for run in ("example", "example_2proc"):
        assert (tmp_path / "checkpoints" / run / "checkpoint_last.pt").is_file(), run


@pytest.mark.parametrize("doc", sorted(p.name for p in (REPO / "docs").glob("*.md")) + ["README.md"])
def test_no_stale_flags_in_docs(doc):
    """fairseq-train has no --data option (the data path is positional)."""
    path = REPO / doc if doc == "README.md" else REPO / "docs" / doc
    assert not re.search(r"fairseq-train[^\n`]*--data\s", path.read_text())
