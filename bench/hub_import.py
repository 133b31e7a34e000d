"""What loading and embedding through the hub costs a fresh process: imports, time, memory.

Each run is a fresh interpreter that times ``import`` of the hub, ``from_pretrained`` of an
official-format checkpoint and one ``extract_image_features``, then reports its peak RSS (VmHWM),
how many modules are loaded, and whether fairseq or our training layer was imported.

    python bench/hub_import.py                   # a base-size stand-in of one-peace.pt (bench/load.py's)
    python bench/hub_import.py --checkpoint one-peace.pt --repeats 5
    git worktree add /tmp/before 937f9e0 && mkdir -p /tmp/before_pkg && ln -s /tmp/before /tmp/before_pkg/one_peace
    python bench/hub_import.py --baseline-tree /tmp/before_pkg   # old and new code, runs alternating

Prints a markdown table with the machine, torch version and date.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("ONE_PEACE_SHARED", os.path.join(HERE, "..", "..", "shared"))

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
try:
    from one_peace.hub import from_pretrained
except ImportError:  # a tree from before the hub had its own package (--baseline-tree)
    from one_peace.models import from_pretrained
t1 = time.perf_counter()
hub = from_pretrained(sys.argv[1], device="cpu", bpe_dir=sys.argv[2])
t2 = time.perf_counter()
features = hub.extract_image_features(hub.process_image([sys.argv[3]]))
t3 = time.perf_counter()
with open("/proc/self/status") as fh:
    rss = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
mods = list(sys.modules)
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "embed_s": t3 - t2, "peak_rss_mib": rss,
                  "modules": len(mods), "ours": sum(m.startswith("one_peace") for m in mods),
                  "fairseq": any(m == "fairseq" or m.startswith("fairseq.") for m in mods),
                  "training_layer": any(m.startswith(("one_peace.tasks", "one_peace.criterions")) for m in mods)}))
"""


def run_once(checkpoint, bpe, image, tree=None):
    env = dict(os.environ)
    if tree:  # a folder holding ``one_peace`` (a link to another checkout): found before the installed one
        env["PYTHONPATH"] = os.pathsep.join([tree] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    out = subprocess.run([sys.executable, "-c", CHILD, checkpoint, bpe, image], capture_output=True, text=True,
                         check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="official-format checkpoint (default: a generated stand-in)")
    parser.add_argument("--size", default="base", choices=("tiny", "base", "4b"), help="stand-in size")
    parser.add_argument("--workdir", default=os.path.expanduser("~/.cache/one_peace/bench"))
    parser.add_argument("--bpe-dir", default=os.path.join(SHARED, "assets", "bpe"))
    parser.add_argument("--image", default=os.path.join(SHARED, "assets", "media", "dog.JPEG"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline-tree", help="folder whose one_peace/ is an older checkout, measured too")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.checkpoint is None:
        sys.path.insert(0, HERE)
        from load import ensure_stand_in

        args.checkpoint = ensure_stand_in(args.workdir, args.size)
    trees = {"this tree": None}
    if args.baseline_tree:
        trees = {"baseline": args.baseline_tree, "this tree": None}
    runs = {name: [] for name in trees}
    for _ in range(args.repeats):  # alternating, so both see the same machine load
        for name, tree in trees.items():
            runs[name].append(run_once(args.checkpoint, args.bpe_dir, args.image, tree))
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{datetime.date.today()}; `python bench/hub_import.py --repeats {args.repeats}"
          f"{' --baseline-tree ' + args.baseline_tree if args.baseline_tree else ''}` "
          f"({os.path.basename(args.checkpoint)}; medians)\n")
    print("| code | import s | from_pretrained s | first embedding s | peak RSS MiB | modules | ours | fairseq "
          "| tasks/criteria |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, results in runs.items():
        med = {k: statistics.median(r[k] for r in results) for k in ("import_s", "load_s", "embed_s", "peak_rss_mib")}
        last = results[-1]
        print(f"| {name} | {med['import_s']:.2f} | {med['load_s']:.2f} | {med['embed_s']:.3f} | "
              f"{med['peak_rss_mib']:.0f} | {last['modules']} | {last['ours']} | {'yes' if last['fairseq'] else 'no'} "
              f"| {'yes' if last['training_layer'] else 'no'} |")


if __name__ == "__main__":
    main()
