"""Loading a released-size checkpoint: time to a first embedding, peak RSS, and CPU embedding throughput.

A stand-in of ``one-peace.pt`` is generated first (the official file layout: ``model`` with the
retrieval-relevant keys of the tri-modal model, one shared rel-pos table per adapter, derived
buffers omitted, and a saved ``cfg``; random bf16 values, as the released files were written by a
bf16 trainer).  Keys and shapes come from the model built on the meta device, so no float32 copy
of the weights is ever allocated.  Each measurement then runs in a fresh process so its peak RSS
(``VmHWM``, which counts the memory-mapped file pages it touched) is its own.  (Not ``ru_maxrss``:
it survives ``exec`` and would report the parent's size at ``fork``.)

    python bench/load.py                                   # base and 4b, bfloat16 and float32 loads
    python bench/load.py --size base --dtype bfloat16
    python bench/load.py --throughput --size base          # embeddings/s, fp32 vs bf16 (CPU)

Prints markdown tables with the machine, torch version and date.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def bpe_dir():
    from one_peace.data_utils.bpe import resolve_bpe_dir

    shared = os.path.join(HERE, "..", "..", "shared", "assets", "bpe")
    return resolve_bpe_dir(os.environ.get("ONE_PEACE_BPE_DIR") or (shared if os.path.isdir(shared) else None))


def stand_in_path(workdir, size):
    return os.path.join(workdir, f"one-peace-{size}-standin.pt")


def ensure_stand_in(workdir, size):
    """The stand-in of ``size`` under ``workdir``, written first if absent (other benches embed with it)."""
    os.makedirs(workdir, exist_ok=True)
    path = stand_in_path(workdir, size)
    if not os.path.exists(path):
        make_stand_in(path, size)
    return path


def make_stand_in(path, size, vocab_size=50264, seed=0):
    """Write a random bf16 checkpoint in the official layout for the ``size`` preset."""
    from omegaconf import OmegaConf

    from one_peace.models import OnePeaceRetrievalModel
    from one_peace.models.architectures import preset_config
    from one_peace.models.config import OnePeaceRetrievalConfig

    cfg = preset_config(OnePeaceRetrievalConfig, size)
    with torch.device("meta"):
        model = OnePeaceRetrievalModel(cfg, head_type="val", vocab_size=vocab_size)
    buffers = {name for name, _ in model.named_buffers()}
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, tensor in model.state_dict().items():
        if name in buffers:
            continue  # derived (rel-pos bucket maps, position ids, version): official files omit them
        weights[name] = (torch.randn(tensor.shape, generator=generator, dtype=torch.bfloat16) * 0.02)
    model_cfg = OmegaConf.to_container(OmegaConf.structured(cfg))
    model_cfg["_name"] = "one_peace_retrieval"
    task_cfg = {"_name": "base_task", "bpe_dir": "../../utils/BPE", "head_type": "val", "patch_image_size": 256,
                "max_src_length": 70, "max_duration": 15}
    torch.save({"model": weights, "cfg": {"model": model_cfg, "task": task_cfg}}, path)
    return sum(t.numel() for t in weights.values())


def peak_rss_gib() -> float:
    """This process image's peak resident set (VmHWM), in GiB."""
    with open("/proc/self/status") as fh:
        kib = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    return kib / 2 ** 20


def measure_load(path, dtype):
    """In this process: from_pretrained + one text embedding; returns a result dict."""
    from one_peace import from_pretrained

    start = time.perf_counter()
    hub = from_pretrained(path, model_type="one_peace_retrieval", device="cpu", dtype=dtype, bpe_dir=bpe_dir())
    loaded = time.perf_counter()
    emb = hub.extract_text_features(hub.process_text(["a dog barks at the mailman"]))
    done = time.perf_counter()
    assert torch.isfinite(emb.float()).all()
    return {"load_s": loaded - start, "first_embedding_s": done - start,
            "peak_rss_gib": peak_rss_gib(),
            "params": sum(p.numel() for p in hub.model.parameters())}


def measure_throughput(path, dtype, seconds_audio=5.0, iters=2):
    """Embeddings per second of texts (batch 8), images (batch 2, 256 px) and clips (batch 2)."""
    import numpy as np

    from one_peace import from_pretrained

    torch.manual_seed(0)
    hub = from_pretrained(path, model_type="one_peace_retrieval", device="cpu", dtype=dtype, bpe_dir=bpe_dir())
    tokens = hub.process_text(["a dog barks at the mailman on a sunny afternoon"] * 8)
    images = torch.randn(2, 3, 256, 256).to(hub.dtype)
    samples = int(16000 * seconds_audio)
    frames = hub.model.encoder_wrapper.audio_adapter.num_frames(samples)
    audios = torch.from_numpy(np.random.default_rng(0).standard_normal((2, samples)).astype("float32")).to(hub.dtype)
    masks = torch.zeros(2, frames + 1, dtype=torch.bool)
    out = {}
    for name, run, count in (("texts", lambda: hub.extract_text_features(tokens), 8),
                             ("images", lambda: hub.extract_image_features(images), 2),
                             ("clips", lambda: hub.extract_audio_features(audios, masks), 2)):
        run()  # warm-up
        start = time.perf_counter()
        for _ in range(iters):
            run()
        out[f"{name}_per_s"] = count * iters / (time.perf_counter() - start)
    return out


def run_child(mode, path, dtype):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--path", path, "--dtype", dtype]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, torch {torch.__version__}, "
            f"{datetime.date.today().isoformat()}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", action="append", choices=["tiny", "base", "4b"])
    parser.add_argument("--dtype", action="append", choices=["bfloat16", "float32"])
    parser.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "one_peace_load"))
    parser.add_argument("--throughput", action="store_true", help="measure embeddings/s instead of loading")
    parser.add_argument("--keep", action="store_true", help="keep the stand-in checkpoints")
    parser.add_argument("--child", choices=["load", "throughput"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = (measure_load if args.child == "load" else measure_throughput)(args.path, args.dtype[0])
        print(json.dumps(result))
        return
    sizes, dtypes = args.size or ["base", "4b"], args.dtype or ["bfloat16", "float32"]
    os.makedirs(args.workdir, exist_ok=True)
    print(f"Machine: {machine()}\n")
    if args.throughput:
        print("| size | dtype | texts/s (batch 8) | images/s (batch 2, 256 px) | 5 s clips/s (batch 2) |")
        print("|---|---|---|---|---|")
    else:
        print("| size | params (B) | file GiB | dtype | load s | first embedding s | peak RSS GiB | "
              "RSS / file | RSS / fp32 weights |")
        print("|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        path = stand_in_path(args.workdir, size)
        if not os.path.isfile(path):
            start = time.perf_counter()
            count = make_stand_in(path, size)
            print(f"<!-- stand-in {size}: {count / 1e9:.3f} B parameters written in "
                  f"{time.perf_counter() - start:.0f} s -->", flush=True)
        file_gib = os.path.getsize(path) / 2 ** 30
        for dtype in dtypes:
            if args.throughput:
                r = run_child("throughput", path, dtype)
                print(f"| {size} | {dtype} | {r['texts_per_s']:.2f} | {r['images_per_s']:.3f} | "
                      f"{r['clips_per_s']:.3f} |", flush=True)
                continue
            r = run_child("load", path, dtype)
            fp32_gib = r["params"] * 4 / 2 ** 30
            print(f"| {size} | {r['params'] / 1e9:.3f} | {file_gib:.2f} | {dtype} | {r['load_s']:.1f} | "
                  f"{r['first_embedding_s']:.1f} | {r['peak_rss_gib']:.2f} | {r['peak_rss_gib'] / file_gib:.2f} | "
                  f"{r['peak_rss_gib'] / fp32_gib:.2f} |", flush=True)
        if not args.keep:
            os.remove(path)


if __name__ == "__main__":
    main()
