"""Loading from a model directory (config.json + safetensors) beside loading the ``.pt``: time and peak RSS.

The stand-in of ``one-peace.pt`` from ``bench/load.py`` (random bf16 weights in the official layout) is
converted with ``one-peace-convert``'s code into a directory per ``--dir-dtype`` (one at a time: each is
deleted before the next is written), and each load -- ``from_pretrained(PATH, dtype=...)`` plus one text
embedding -- runs in a fresh process so its peak RSS (``VmHWM``, which counts the mapped file pages it
touched) is its own.  The conversion's own time and peak RSS are measured the same way.

    python bench/model_dir.py                    # 4b: .pt vs bf16 and fp32 directories, bf16 and fp32 loads
    python bench/model_dir.py --size base --dir-dtype bfloat16

Prints a markdown table with the machine, torch version and date.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from load import bpe_dir, machine, make_stand_in, peak_rss_gib, stand_in_path  # noqa: E402


def child_convert(path, out, dtype):
    from one_peace.hub.convert import convert_checkpoint

    start = time.perf_counter()
    summary = convert_checkpoint(path, out, dtype=dtype, bpe_dir=bpe_dir())
    return {"convert_s": time.perf_counter() - start, "peak_rss_gib": peak_rss_gib(), "files": summary["files"],
            "verified": summary["verified"]}


def child_load(path, dtype):
    from one_peace import from_pretrained

    start = time.perf_counter()
    # a directory brings its own tokenizer files; the .pt's saved bpe_dir does not exist here
    hub = from_pretrained(path, device="cpu", dtype=dtype, bpe_dir=None if os.path.isdir(path) else bpe_dir())
    loaded = time.perf_counter()
    emb = hub.extract_text_features(hub.process_text(["a dog barks at the mailman"]))
    done = time.perf_counter()
    assert torch.isfinite(emb.float()).all()
    return {"load_s": loaded - start, "first_embedding_s": done - start, "peak_rss_gib": peak_rss_gib(),
            "embedding": emb.float().tolist()}


def run_child(*args):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def disk_gib(path):
    if os.path.isfile(path):
        return os.path.getsize(path) / 2 ** 30
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path)) / 2 ** 30


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="4b", choices=["tiny", "base", "4b"])
    parser.add_argument("--dir-dtype", action="append", choices=["bfloat16", "float32"])
    parser.add_argument("--load-dtype", action="append", choices=["bfloat16", "float32"])
    parser.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "one_peace_load"))
    parser.add_argument("--keep", action="store_true", help="keep the stand-in checkpoint")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        print(json.dumps(child_convert(*rest) if kind == "convert" else child_load(*rest)))
        return
    dir_dtypes, load_dtypes = args.dir_dtype or ["bfloat16", "float32"], args.load_dtype or ["bfloat16", "float32"]
    os.makedirs(args.workdir, exist_ok=True)
    pt = stand_in_path(args.workdir, args.size)
    if not os.path.isfile(pt):
        make_stand_in(pt, args.size)
    print(f"Machine: {machine()}\n")
    print("| source | on disk GiB | load dtype | load s | first embedding s | peak RSS GiB | same embedding as .pt |")
    print("|---|---|---|---|---|---|---|")
    reference = {}
    for dtype in load_dtypes:
        r = run_child("load", pt, dtype)
        reference[dtype] = r["embedding"]
        print(f"| `.pt` (bf16) | {disk_gib(pt):.2f} | {dtype} | {r['load_s']:.1f} | {r['first_embedding_s']:.1f} | "
              f"{r['peak_rss_gib']:.2f} | - |", flush=True)
    conversions = []
    for dir_dtype in dir_dtypes:
        out = os.path.join(args.workdir, f"one-peace-{args.size}-{dir_dtype}-dir")
        shutil.rmtree(out, ignore_errors=True)
        c = run_child("convert", pt, out, dir_dtype)
        conversions.append((dir_dtype, c, disk_gib(out)))
        for dtype in load_dtypes:
            r = run_child("load", out, dtype)
            same = "yes" if r["embedding"] == reference[dtype] else "no"
            print(f"| directory ({dir_dtype}, {len(c['files'])} file(s)) | {disk_gib(out):.2f} | {dtype} | "
                  f"{r['load_s']:.1f} | {r['first_embedding_s']:.1f} | {r['peak_rss_gib']:.2f} | {same} |", flush=True)
        shutil.rmtree(out)
    print("\n| conversion (`one-peace-convert`, read back and verified) | seconds | peak RSS GiB | directory GiB |")
    print("|---|---|---|---|")
    for dir_dtype, c, size in conversions:
        print(f"| `.pt` -> {dir_dtype} directory | {c['convert_s']:.1f} | {c['peak_rss_gib']:.2f} | {size:.2f} |")
    if not args.keep:
        os.remove(pt)


if __name__ == "__main__":
    main()
