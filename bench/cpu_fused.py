"""The fused CPU kernels against torch's ops, alternated in one process (models/kernels/cpu_fused.py).

For each shape and dtype: the GeGLU + sub-LayerNorm chain alone (``layer_norm(gelu(a) * b)``) and a whole
modality FFN (its three matrix multiplies included), forward + backward and forward under ``no_grad``, run
alternately through torch's ops (``ONE_PEACE_CPU_FUSED=torch``) and the kernel.  Prints a markdown table of
medians and the median of the paired ratios (torch / fused), and the bytes a FFN's forward keeps for its
backward each way (``torch.autograd.graph.saved_tensors_hooks``).  Rows: the base preset's image tokens (257 per
image, width 768, FFN 2048) and the 4B preset's (width 1536, FFN 6144).

    python bench/cpu_fused.py
    python bench/cpu_fused.py --threads 1 --batch 2 8 --repeats 15
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from one_peace.models.components import modality_ffn
from one_peace.models.kernels import cpu_fused, switches

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import machine  # noqa: E402 -- the machine line of bench/load.py

SHAPES = {"base": (768, 2048), "4b": (1536, 6144)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired(run, repeats):
    """run(fused) alternated, the order swapped every other pair; medians and the median paired ratio."""
    times = {False: [], True: []}
    for i in range(repeats + 2):
        for fused in ((False, True) if i % 2 == 0 else (True, False)):
            t = timed(lambda fused=fused: run(fused))
            if i >= 2:
                times[fused].append(t)
    ratios = [a / b for a, b in zip(times[False], times[True])]
    return statistics.median(times[False]), statistics.median(times[True]), statistics.median(ratios)


def saved_bytes(ffn, x, fused):
    """Bytes of the distinct tensors a forward of ``ffn`` keeps for its backward (parameters excluded)."""
    params = {p.data_ptr() for p in ffn.parameters()}
    kept = {}

    def pack(t):
        if t.data_ptr() not in params:
            kept[t.data_ptr()] = t.untyped_storage().nbytes()
        return t

    switches.set_cpu_fused_impl("fused" if fused else "torch")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ffn(x)
    return sum(kept.values())


def cases(width, ffn_dim, rows, dtype):
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(rows, ffn_dim, generator=gen).to(dtype).requires_grad_() for _ in range(2))
    weight = torch.ones(ffn_dim, dtype=dtype, requires_grad=True)
    bias = torch.zeros(ffn_dim, dtype=dtype, requires_grad=True)
    dy = torch.randn(rows, ffn_dim, generator=gen).to(dtype)
    ffn = modality_ffn(width, ffn_dim, 0.0, scale_fc=True).to(dtype)
    x = torch.randn(rows, width, generator=gen).to(dtype).requires_grad_()
    dx = torch.randn(rows, width, generator=gen).to(dtype)

    def chain(fused):
        y = cpu_fused.geglu_norm(a, b, weight, bias) if fused else F.layer_norm(F.gelu(a) * b, (ffn_dim,), weight, bias)
        return y

    def chain_step(fused):
        chain(fused).backward(dy)

    def chain_infer(fused):
        with torch.no_grad():
            chain(fused)

    def ffn_step(fused):
        switches.set_cpu_fused_impl("fused" if fused else "torch")
        ffn(x).backward(dx)

    def ffn_infer(fused):
        switches.set_cpu_fused_impl("fused" if fused else "torch")
        with torch.no_grad():
            ffn(x)

    saved = {fused: saved_bytes(ffn, x, fused) for fused in (False, True)}
    return {"chain, fwd+bwd": chain_step, "chain, no_grad": chain_infer, "FFN, fwd+bwd": ffn_step,
            "FFN, no_grad": ffn_infer}, saved


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", nargs="+", choices=sorted(SHAPES), default=["base", "4b"])
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--batch", nargs="+", type=int, default=[8], help="images of 257 tokens per batch")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"Machine: {machine()}, {torch.get_num_threads()} torch threads\n")
    print("| size | dtype | rows | case | torch ms | fused ms | paired ratio |\n|---|---|---|---|---|---|---|")
    memory = []
    try:
        for size in args.size:
            for dtype in args.dtype:
                for batch in args.batch:
                    rows = batch * 257
                    runs, saved = cases(*SHAPES[size], rows, DTYPES[dtype])
                    memory.append(f"| {size} | {dtype} | {rows} | {saved[False] / 2 ** 20:.1f} | "
                                  f"{saved[True] / 2 ** 20:.1f} | {saved[True] / saved[False]:.2f} |")
                    for name, run in runs.items():
                        torch_s, fused_s, ratio = paired(run, args.repeats)
                        print(f"| {size} | {dtype} | {rows} | {name} | {torch_s * 1e3:.2f} | {fused_s * 1e3:.2f} | "
                              f"{ratio:.2f}x |", flush=True)
    finally:
        switches.set_cpu_fused_impl(None)
    print("\nKept for the backward by one FFN's forward (MiB):\n\n| size | dtype | rows | torch | fused | fused / torch |\n"
          "|---|---|---|---|---|---|\n" + "\n".join(memory))


if __name__ == "__main__":
    main()
