"""The image patch embedding and the audio front end in training: forward + backward of the matrix-multiply
path (what the adapters run) against the official convolutions (``forward_convs``), alternated in one process.

    python bench/front_ends.py                       # base width, batch 8 at 256 px, 4 clips of 5 s
    python bench/front_ends.py --threads 1 --reps 5
    python bench/front_ends.py --windows --precision bf16 fp32      # also the audio windows alone

Prints a markdown table: the fastest of ``--reps`` runs per path and precision, and conv time / matmul time.
``--windows`` adds the audio front end's overlapping windows of each layer alone, forward + backward:
``conv_windows`` (its strided backward) against ``unfold``'s copy (torch's generic backward).  With
``--windows`` the process keeps freed memory on the heap as training does (``models/host_memory.py``).
"""
import argparse
import datetime
import os
import platform
import time

import torch

from one_peace.data_utils.feature_spec import OFFICIAL_FEATURE_ENCODER_SPEC, parse_feature_encoder_spec
from one_peace.models.adapters.audio import ConvFeatureExtractor, _copy_windows, conv_windows
from one_peace.models.adapters.image import build_patch_embedding
from one_peace.models.host_memory import keep_freed_host_memory


def fastest(fn, x, reps):
    """The fastest forward + backward of ``fn(x)`` (a weighted sum as the loss) in seconds."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(x).float().square().mean().backward()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=768, help="model width (the patch embedding's output)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    parser.add_argument("--windows", action="store_true", help="also time the audio windows alone")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"Front ends, forward + backward, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {datetime.date.today()}\n")
    print("| front end | input | precision | convs ms | matmuls ms | convs / matmuls |")
    print("|---|---|---|---|---|---|")
    spec = parse_feature_encoder_spec(OFFICIAL_FEATURE_ENCODER_SPEC)
    for precision in args.precision:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        cases = [
            ("image patch embedding", f"{args.images} x {args.image_size} px",
             build_patch_embedding("hmlp", args.width).to(dtype),
             torch.randn(args.images, 3, args.image_size, args.image_size, dtype=dtype)),
            ("audio front end", f"{args.clips} x {args.seconds:g} s",
             ConvFeatureExtractor(spec).to(dtype), torch.randn(args.clips, int(args.seconds * 16000), dtype=dtype)),
        ]
        for name, shape, module, x in cases:
            fastest(module.forward, x, 1)  # warm-up of both paths
            fastest(module.forward_convs, x, 1)
            best = {"convs": float("inf"), "matmuls": float("inf")}
            for _ in range(args.reps):  # alternated: a burst of load hits both
                best["convs"] = min(best["convs"], fastest(module.forward_convs, x, 1))
                best["matmuls"] = min(best["matmuls"], fastest(module.forward, x, 1))
            print(f"| {name} | {shape} | {precision} | {best['convs'] * 1e3:.0f} | {best['matmuls'] * 1e3:.0f} "
                  f"| {best['convs'] / best['matmuls']:.2f}x |", flush=True)
    if args.windows:
        keep_freed_host_memory()
        time_windows(spec, args)


def windows_seconds(windows, x, kernel, stride, grad):
    """Seconds of ``windows(x, kernel, stride)`` forward and its input's gradient for ``grad``."""
    start = time.perf_counter()
    torch.autograd.grad(windows(x, kernel, stride), x, grad)
    return time.perf_counter() - start


def time_windows(spec, args):
    print("\n| layer input (B, T, C) | kernel, stride | precision | unfold ms | conv_windows ms | unfold / ours |")
    print("|---|---|---|---|---|---|")
    length, channels = int(args.seconds * 16000), 1
    for layer, (dim, kernel, stride) in enumerate(spec):
        frames = (length - kernel) // stride + 1
        if layer > 0 and kernel > stride:  # the first layer's input, the waveform, needs no gradient
            for precision in args.precision:
                dtype = torch.bfloat16 if precision == "bf16" else torch.float32
                x = torch.randn(args.clips, length, channels, dtype=dtype, requires_grad=True)
                grad = torch.randn(args.clips, frames, kernel * channels, dtype=dtype)
                paths = {"unfold": _copy_windows, "ours": conv_windows}
                best = {name: windows_seconds(fn, x, kernel, stride, grad) for name, fn in paths.items()}  # warm-up
                for _ in range(args.reps):
                    for name, fn in paths.items():
                        best[name] = min(best[name], windows_seconds(fn, x, kernel, stride, grad))
                print(f"| ({args.clips}, {length}, {channels}) | {kernel}, {stride} | {precision} | "
                      f"{best['unfold'] * 1e3:.1f} | {best['ours'] * 1e3:.1f} | {best['unfold'] / best['ours']:.1f}x |",
                      flush=True)
        length, channels = frames, dim

if __name__ == "__main__":
    main()
