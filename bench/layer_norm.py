"""Benchmark the Triton LayerNorm (FusedLayerNorm with impl="fused") against plain torch.

Forward and forward+backward time (median of CUDA-event timings), effective GB/s
(bytes the op must read and write once) and peak extra memory, at ONE-PEACE widths
(1536 = 4B model, 6144 = its FFN LayerNorm) over B*S rows, fp16/bf16.  Prints a
markdown table with device and date.  Without CUDA it says so and exits 0.  The kernel
is forced (``impl="fused"``), whatever ``ONE_PEACE_LAYER_NORM`` says.

    python bench/layer_norm.py [--rows 4616 16448] [--width 1536 6144] [--dtype fp16 bf16]
"""
import argparse
import datetime
import sys

import torch
import torch.nn.functional as F
from cuda_timing import time_forward_backward  # bench/ is on sys.path when a script here runs

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[8 * 577, 64 * 257])
    parser.add_argument("--width", type=int, nargs="+", default=[1536, 6144])
    parser.add_argument("--dtype", nargs="+", default=["fp16", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("CUDA is not available on this machine: the LayerNorm benchmark needs a GPU. Nothing measured.")
        return 0

    from one_peace.models.kernels import FusedLayerNorm, triton_available

    props = torch.cuda.get_device_properties(0)
    print(f"# LayerNorm benchmark\n\ndevice: {props.name} (sm_{props.major}{props.minor}), "
          f"torch {torch.__version__}, date {datetime.date.today().isoformat()}, triton available: "
          f"{triton_available()}; median of {args.iters} runs.  GB/s = minimal bytes moved / time.\n")
    print("| op | rows x width | dtype | impl | fwd ms | fwd GB/s | fwd+bwd ms | fwd+bwd GB/s | peak extra MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rows in args.rows:
        for width in args.width:
            for dname in args.dtype:
                dtype = DTYPES[dname]
                size = torch.finfo(dtype).bits // 8
                n = rows * width
                x = torch.randn(rows, width, device="cuda", dtype=dtype, requires_grad=True)
                ln = FusedLayerNorm(width, impl="fused").to("cuda", dtype)
                cases = {
                    "fused": lambda ln=ln, x=x: ln(x),
                    "torch": lambda ln=ln, x=x, width=width: F.layer_norm(x, (width,), ln.weight, ln.bias, ln.eps),
                }
                # LN moves x in, y out (fwd); x, dy in, dx out (bwd).
                for impl, fn in cases.items():
                    f, fb, peak = time_forward_backward(fn, [x, ln.weight, ln.bias], args.warmup, args.iters)
                    print(f"| layer_norm | {rows} x {width} | {dname} | {impl} | {f:.4f} | {2 * n * size / f / 1e6:.0f} "
                          f"| {fb:.4f} | {5 * n * size / fb / 1e6:.0f} | {peak:.0f} |")
                del x, ln
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
