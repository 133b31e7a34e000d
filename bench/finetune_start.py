"""Fine-tuning start from a released-size checkpoint: wall time and peak RSS up to the first update.

``fairseq-train --finetune-from-model STAND_IN`` on a few generated clips (task ``audio_classify``,
a new 3-class head), one update, no validation, no checkpoint saved; once with deferred
initialisation (the default: weights the checkpoint provides are never initialised) and once with
``ONE_PEACE_DEFERRED_INIT=0`` (initialise everything, then copy the checkpoint in).  The stand-in is
``bench/load.py``'s (random bf16 weights in the official layout).  Peak RSS is ``/usr/bin/time``'s.

    python bench/finetune_start.py --size base
"""
import argparse
import importlib.util
import os
import re
import subprocess
import sys
import time

import numpy as np
import soundfile as sf

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_load", os.path.join(HERE, "load.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_clips(folder, n=4):
    os.makedirs(folder, exist_ok=True)
    rows = ["uniq_id\taudio\ttext\tduration"]
    for i in range(n):
        t = np.arange(16000) / 16000
        sf.write(os.path.join(folder, f"c{i}.wav"), (0.3 * np.sin(2 * np.pi * 220 * (i + 1) * t)).astype("float32"),
                 16000)
        rows.append(f"c{i}\tc{i}.wav\t{i % 3}\t1.0")
    path = os.path.join(folder, "train.tsv")
    with open(path, "w") as fh:
        fh.write("\n".join(rows) + "\n")
    return path


def run(stand_in, tsv, size, save_dir, deferred):
    env = dict(os.environ, ONE_PEACE_DEFERRED_INIT="1" if deferred else "0", PYTHONWARNINGS="ignore")
    venv_bin = os.path.dirname(sys.executable)
    cmd = ["/usr/bin/time", "-f", "MAXRSS_KB %M", os.path.join(venv_bin, "fairseq-train"), tsv,
           "--user-dir", os.path.join(REPO, "user_src"), "--task", "audio_classify", "--num-classes", "3",
           "--arch", f"one_peace_classify_{size}", "--criterion", "classify_criterion", "--optimizer", "adam",
           "--lr", "1e-5", "--batch-size", "2", "--max-update", "1", "--cpu", "--finetune-from-model", stand_in,
           "--save-dir", save_dir, "--no-save", "--disable-validation", "--ignore-unused-valid-subsets",
           "--bpe-dir", load_bench().bpe_dir(), "--data-buffer-size", "0"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-4000:])
    assert "num_updates 1" in proc.stderr + proc.stdout, "no update ran"
    rss = int(re.search(r"MAXRSS_KB (\d+)", proc.stderr).group(1)) / 2 ** 20
    return wall, rss


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="base", choices=["tiny", "base", "4b"])
    parser.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "one_peace_ft_start"))
    args = parser.parse_args(argv)
    bench = load_bench()
    os.makedirs(args.workdir, exist_ok=True)
    stand_in = bench.stand_in_path(args.workdir, args.size)
    if not os.path.isfile(stand_in):
        bench.make_stand_in(stand_in, args.size)
    tsv = write_clips(os.path.join(args.workdir, "clips"))
    print(f"Machine: {bench.machine()}\n")
    print("| size | file GiB | initialisation | start to first update s | peak RSS GiB |")
    print("|---|---|---|---|---|")
    file_gib = os.path.getsize(stand_in) / 2 ** 30
    for deferred in (True, False):
        wall, rss = run(stand_in, tsv, args.size, os.path.join(args.workdir, "ckpt"), deferred)
        label = "deferred (default)" if deferred else "eager (ONE_PEACE_DEFERRED_INIT=0)"
        print(f"| {args.size} | {file_gib:.2f} | {label} | {wall:.1f} | {rss:.2f} |", flush=True)


if __name__ == "__main__":
    main()
