"""Embedding speed of the exported ONNX encoders (onnxruntime, fp32) against the torch hub in fp32 and bf16 on CPU,
and of ``one-peace-index``'s embedding path with ``--backend onnx`` against ``--backend torch``.

A random-weight stand-in of the base model (``bench/load.py:ensure_stand_in``) is loaded twice (fp32 and
bf16); each modality is exported with ``one-peace-export``'s code and run by ``OnnxEncoder``.

* ``encoders``: preprocessed batches -- 16 texts of 4 to 20 words (padded) and 16 random 256 px images
  (``one-peace-index``'s default ``--batch-size``), 4 random 5 s clips.
* ``index``: what ``one-peace-index`` does per batch of 16 files (``search/embed.py:embed``: decode,
  preprocess, embed), on generated files (``bench/search.py:make_collection``: JPEGs of 500x375 to 1200x800,
  5 s FLAC clips, 12-word texts), with the torch hub and with ``search/onnx_backend.py:OnnxHub`` (every
  modality through onnxruntime here, to show which ones ``--backend onnx`` should take).

Backends run in turn inside each repetition.  The machine is shared, so two figures per backend: items/s of
the fastest repetition (wall clock), and CPU seconds per item (this process, all threads; median), which
other processes disturb much less.

    python bench/onnx_speed.py                               # base: encoders, then the index path
    python bench/onnx_speed.py --part encoders --modality text --repeats 5
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from load import bpe_dir, ensure_stand_in, machine  # noqa: E402 - bench/load.py beside this file


def batch_of(hub, modality, batch):
    rng = np.random.default_rng(0)
    if modality == "text":
        words = "a dog barks at the mailman while an elephant walks slowly through tall grass near a river".split()
        return hub.process("text", [" ".join(words[: 4 + (i * 5) % 17]) for i in range(batch)])
    if modality == "image":
        side = hub.patch_image_size
        return {"src_images": torch.from_numpy(rng.standard_normal((batch, 3, side, side)).astype("float32"))}
    samples = 5 * 16000
    frames = hub.model.encoder_wrapper.audio_adapter.num_frames(samples)
    return {"src_audios": torch.from_numpy(rng.standard_normal((batch, samples)).astype("float32")),
            "audio_padding_masks": torch.zeros(batch, frames + 1, dtype=torch.bool)}


def timed(runs, repeats, items):
    """{name: (items/s of the fastest repetition, median CPU s per item)}; the runs take turns."""
    wall, cpu = {name: [] for name in runs}, {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (items / min(wall[name]), statistics.median(cpu[name]) / items) for name in runs}


def export_all(hub, checkpoint, out, modalities, threads):
    from one_peace.hub.onnx_export import export_modality
    from one_peace.hub.onnx_runtime import OnnxEncoder, checkpoint_identity

    identity, encoders, seconds = checkpoint_identity(checkpoint), {}, {}
    for modality in modalities:
        start = time.perf_counter()
        graph = export_modality(hub, modality, out, identity)
        seconds[modality] = time.perf_counter() - start
        encoders[modality] = OnnxEncoder(graph, threads=threads)
    return encoders, seconds


def encoder_runs(hubs, encoder, modality, inputs):
    return {"fp32": lambda: hubs["float32"].extract_features(modality, **inputs),
            "bf16": lambda: hubs["bfloat16"].extract_features(modality, **inputs),
            "ort": lambda: encoder.embed(**inputs)}


def bench_encoders(args, hubs, encoders, export_s):
    print("| modality | batch | items/s torch fp32 / bf16 / ORT | CPU ms per item torch fp32 / bf16 / ORT | "
          "ORT vs torch fp32: wall, CPU | ORT vs torch bf16: wall, CPU | max abs diff ORT vs fp32 | export s |")
    print("|---|---|---|---|---|---|---|---|")
    for modality, encoder in encoders.items():
        batch = args.audio_batch_size if modality == "audio" else args.batch_size
        inputs = batch_of(hubs["float32"], modality, batch)
        runs = encoder_runs(hubs, encoder, modality, inputs)
        diff = float(np.abs(runs["ort"]() - runs["fp32"]().numpy()).max())
        runs["bf16"]()  # warm-up
        r = timed(runs, args.repeats, batch)
        print(f"| {modality} | {batch} | {r['fp32'][0]:.2f} / {r['bf16'][0]:.2f} / {r['ort'][0]:.2f} | "
              f"{1e3 * r['fp32'][1]:.3g} / {1e3 * r['bf16'][1]:.3g} / {1e3 * r['ort'][1]:.3g} | "
              f"{r['ort'][0] / r['fp32'][0]:.2f}x, {r['fp32'][1] / r['ort'][1]:.2f}x | "
              f"{r['ort'][0] / r['bf16'][0]:.2f}x, {r['bf16'][1] / r['ort'][1]:.2f}x | {diff:.1e} | "
              f"{export_s[modality]:.0f} |", flush=True)


def index_pass(embed, backend, modality, chunks, out, name):
    """One pass of the indexer's embedding over every batch of files; the vectors land in ``out[name]``."""
    def run():
        out[name] = np.concatenate([embed(backend, modality, chunk)[0] for chunk in chunks])
    return run


def bench_index(args, hub, encoders):
    from one_peace.search.embed import embed
    from one_peace.search.onnx_backend import ONNX_MODALITIES, OnnxHub
    from search import make_collection  # bench/search.py

    counts = {"image": args.index_images, "audio": args.index_clips, "text": args.index_texts}
    onnx_hub = OnnxHub(hub, encoders)
    print("| modality | files | files/s torch fp32 / onnx | CPU ms per file torch / onnx | onnx vs torch: wall, CPU | "
          "max abs diff | --backend onnx uses onnxruntime |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        make_collection(work, counts["image"], counts["audio"], counts["text"])
        for modality in encoders:
            paths = sorted(os.path.join(work, modality, n) for n in os.listdir(os.path.join(work, modality)))
            items = [open(p).read().strip() for p in paths] if modality == "text" else paths
            chunks = [items[i:i + args.batch_size] for i in range(0, len(items), args.batch_size)]
            out = {}
            runs = {name: index_pass(embed, backend, modality, chunks, out, name)
                    for name, backend in (("torch", hub), ("onnx", onnx_hub))}
            r = timed(runs, args.index_repeats, len(items))
            diff = float(np.abs(out["onnx"] - out["torch"]).max())
            print(f"| {modality} | {len(items)} | {r['torch'][0]:.2f} / {r['onnx'][0]:.2f} | "
                  f"{1e3 * r['torch'][1]:.3g} / {1e3 * r['onnx'][1]:.3g} | {r['onnx'][0] / r['torch'][0]:.2f}x, "
                  f"{r['torch'][1] / r['onnx'][1]:.2f}x | {diff:.1e} | {'yes' if modality in ONNX_MODALITIES else 'no'} |",
                  flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="encoders,index", help="encoders, index or both (comma-separated)")
    parser.add_argument("--size", default="base", choices=["tiny", "base"])
    parser.add_argument("--modality", default="text,image,audio")
    parser.add_argument("--batch-size", type=int, default=16, help="texts, images and files per batch (the indexer's "
                                                                   "default)")
    parser.add_argument("--audio-batch-size", type=int, default=4, help="5 s clips per batch (encoders part)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--index-images", type=int, default=32)
    parser.add_argument("--index-clips", type=int, default=8)
    parser.add_argument("--index-texts", type=int, default=128)
    parser.add_argument("--index-repeats", type=int, default=3)
    parser.add_argument("--workdir", default=os.path.expanduser("~/.cache/one_peace/bench"))
    args = parser.parse_args(argv)

    from one_peace import from_pretrained

    torch.set_num_threads(args.threads)
    checkpoint = ensure_stand_in(args.workdir, args.size)
    print(f"Machine: {machine()}; onnxruntime {__import__('onnxruntime').__version__}; {args.size} stand-in; "
          f"{args.threads} threads\n")
    hubs = {dtype: from_pretrained(checkpoint, device="cpu", dtype=dtype, bpe_dir=bpe_dir())
            for dtype in ("float32", "bfloat16")}
    with tempfile.TemporaryDirectory() as out:
        encoders, export_s = export_all(hubs["float32"], checkpoint, out, args.modality.split(","), args.threads)
        if "encoders" in args.part.split(","):
            bench_encoders(args, hubs, encoders, export_s)
            print()
        if "index" in args.part.split(","):
            bench_index(args, hubs["float32"], encoders)


if __name__ == "__main__":
    main()
