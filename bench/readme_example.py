"""The README's 20-update training example, timed: the command's wall time, fairseq's "done training in"
and the time each checkpoint took to write ("writing took").

    python bench/readme_example.py [--rounds 2] [--before COMMIT] [--processes 2]

With ``--before``, the code of COMMIT (``git archive``, imported through PYTHONPATH) runs alternately with
this checkout's, in the same data folder: a paired comparison on a noisy machine.  The data loader runs
with fairseq's default of one worker, as in the README.  ``--processes 2`` runs the README's two-process block
(gloo, one command per rank; fairseq's numbers are rank 0's).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ARGS = ["--task", "image_text_pretrain", "--arch", "one_peace_pretrain_tiny", "--criterion", "image_text_pretrain_loss",
        "--optimizer", "adam", "--lr", "1e-4", "--batch-size", "8", "--max-update", "20", "--cpu",
        "--data-buffer-size", "0", "--ignore-unused-valid-subsets"]


def checkout(commit: str, into: Path) -> Path:
    """COMMIT's code as an importable ``one_peace`` package under ``into``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--prefix=one_peace/", commit], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run(work: Path, name: str, code_root: Path | None, processes: int = 1, port: int = 29517) -> dict:
    env = dict(os.environ, ONE_PEACE_BPE_DIR=os.environ.get("ONE_PEACE_BPE_DIR", str(REPO.parent / "shared/assets/bpe")))
    user_dir = REPO / "user_src"
    if code_root is not None:
        env["PYTHONPATH"] = str(code_root)
        user_dir = code_root / "one_peace" / "user_src"
    cmd = [str(BIN / "fairseq-train"), "example_data/image_text_train.tsv", "--valid-data",
           "example_data/image_text_valid.tsv", "--user-dir", str(user_dir), *ARGS, "--save-dir", f"checkpoints/{name}"]
    ranks = [cmd] if processes == 1 else [  # the README's "as two workers" block: one command per process
        cmd + ["--distributed-world-size", str(processes), "--distributed-rank", str(rank), "--distributed-no-spawn",
               "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--distributed-backend", "gloo",
               "--ddp-backend", "legacy_ddp"] for rank in range(processes)]
    start = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in ranks]
    outputs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - start
    if any(p.returncode != 0 for p in procs):
        raise SystemExit(f"{name} failed:\n" + "\n".join(o[-3000:] for o in outputs))
    log = outputs[0]
    trained = re.search(r"done training in ([0-9.]+) seconds", log)
    writes = [float(w) for w in re.findall(r"writing took ([0-9.]+) seconds", log)]
    return {"wall": wall, "trained": float(trained.group(1)) if trained else float("nan"), "writes": writes}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", help="a commit to compare with, run alternately")
    parser.add_argument("--processes", type=int, default=1,
                        help="run the example as this many CPU processes (the README's two-worker block)")
    args = parser.parse_args()
    if args.processes < 1:
        parser.error(f"--processes must be at least 1, got {args.processes}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, "-m", "one_peace.data_utils.synthetic", "--out", str(work / "example_data"),
                        "--n-train-images", "64", "--n-valid-images", "16", "--n-train-audio", "0",
                        "--n-valid-audio", "0"], check=True, capture_output=True)
        codes = {"this checkout": None}
        if args.before:
            (work / "before").mkdir()
            codes = {f"before ({args.before})": checkout(args.before, work / "before"), **codes}
        print("| round | code | command s | fairseq 'done training in' s | checkpoint writes s |")
        print("|---|---|---|---|---|")
        for round_ in range(1, args.rounds + 1):
            for n, (label, root) in enumerate(codes.items()):
                result = run(work, f"r{round_}c{n}", root, args.processes)
                writes = ", ".join(f"{w:.2f}" for w in result["writes"])
                print(f"| {round_} | {label} | {result['wall']:.1f} | {result['trained']:.1f} | {writes} |", flush=True)


if __name__ == "__main__":
    main()
