"""What loading and embedding through the hub costs a fresh process: imports, time, memory.

Each run is a fresh interpreter that times ``import`` of the hub, ``from_pretrained`` of an
official-format checkpoint and one ``extract_image_features``, then reports its peak RSS (VmHWM),
how many modules are loaded, and whether fairseq or our training layer was imported.

    python bench/hub_import.py                   # a base-size stand-in of one-peace.pt (bench/load.py's)
    python bench/hub_import.py --checkpoint one-peace.pt --repeats 5

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
except ImportError:  # before the hub had its own package
    from one_peace import from_pretrained
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


def run_once(checkpoint, bpe, image):
    out = subprocess.run([sys.executable, "-c", CHILD, checkpoint, bpe, image], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="official-format checkpoint (default: a generated stand-in)")
    parser.add_argument("--size", default="base", choices=("tiny", "base", "4b"), help="stand-in size")
    parser.add_argument("--workdir", default=os.path.expanduser("~/.cache/one_peace/bench"))
    parser.add_argument("--bpe-dir", default=os.path.join(SHARED, "assets", "bpe"))
    parser.add_argument("--image", default=os.path.join(SHARED, "assets", "media", "dog.JPEG"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.checkpoint is None:
        sys.path.insert(0, HERE)
        from load import make_stand_in, stand_in_path

        os.makedirs(args.workdir, exist_ok=True)
        args.checkpoint = stand_in_path(args.workdir, args.size)
        if not os.path.exists(args.checkpoint):
            make_stand_in(args.checkpoint, args.size)
    runs = [run_once(args.checkpoint, args.bpe_dir, args.image) for _ in range(args.repeats)]
    med = {k: statistics.median(r[k] for r in runs) for k in ("import_s", "load_s", "embed_s", "peak_rss_mib")}
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{datetime.date.today()}; `python bench/hub_import.py --repeats {args.repeats}` "
          f"({os.path.basename(args.checkpoint)}; medians)\n")
    print("| import s | from_pretrained s | first embedding s | peak RSS MiB | modules | ours | fairseq | tasks/criteria |")
    print("|---|---|---|---|---|---|---|---|")
    last = runs[-1]
    print(f"| {med['import_s']:.2f} | {med['load_s']:.2f} | {med['embed_s']:.3f} | {med['peak_rss_mib']:.0f} | "
          f"{last['modules']} | {last['ours']} | {'yes' if last['fairseq'] else 'no'} | "
          f"{'yes' if last['training_layer'] else 'no'} |")


if __name__ == "__main__":
    main()
