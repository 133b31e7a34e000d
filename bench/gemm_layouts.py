"""The three matrix multiplies of a linear layer in training, at the model's shapes, against the 2048³ rate.

A ``linear`` of T tokens, ``in`` to ``out`` features, runs ``x Wᵀ`` forward, ``dY W`` for its input's gradient
and ``dYᵀ x`` for its weight's gradient: the last reads both operands along their rows.  This times each, as
autograd calls them (``torch.mm`` on the same views), in bf16 and fp32, and reports GFLOP/s and the share of a
2048³ ``torch.mm`` in the same precision timed in the same process (``bench/rates.py``).  Also: the weight
gradient with ``dYᵀ`` copied contiguous first.

    python bench/gemm_layouts.py
    python bench/gemm_layouts.py --tokens 2056 --precision bf16

Prints a markdown table with the machine and the date.
"""
import argparse
import datetime
import os
import platform
import sys
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rates import gemm_rate, median_seconds  # noqa: E402

# (in, out) of the base model's linears: q/k/v/out projections, the FFN's inputs and output
BASE_LINEARS = ((768, 768), (768, 2048), (2048, 768))


def weight_grad_copied_first(grad, x):
    return torch.mm(grad.t().contiguous(), x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[2056],
                        help="rows: batch x tokens (base stage 1: 8 x 257)")
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    if min(args.tokens) < 1 or args.reps < 1:
        parser.error("--tokens and --reps must be positive")
    print(f"Linear-layer GEMMs, {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {datetime.date.today()}\n")
    print("| precision | tokens | in -> out | x Wᵀ GFLOP/s | dY W GFLOP/s | dYᵀ x GFLOP/s | dYᵀ x, dYᵀ copied first, ms "
          "(as is) | 2048³ GFLOP/s | shares of it (x Wᵀ / dY W / dYᵀ x) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for precision in args.precision:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        peak = gemm_rate(dtype)
        for tokens in args.tokens:
            for fan_in, fan_out in BASE_LINEARS:
                x = torch.randn(tokens, fan_in).to(dtype)
                weight = torch.randn(fan_out, fan_in).to(dtype)
                grad = torch.randn(tokens, fan_out).to(dtype)
                flops = 2 * tokens * fan_in * fan_out
                products = (partial(torch.mm, x, weight.t()), partial(torch.mm, grad, weight),
                            partial(torch.mm, grad.t(), x))
                rates = [flops / median_seconds(fn, args.reps) / 1e9 for fn in products]
                copied = median_seconds(partial(weight_grad_copied_first, grad, x), args.reps)
                shares = " / ".join(f"{r / peak:.0%}" for r in rates)
                print(f"| {precision} | {tokens} | {fan_in} -> {fan_out} | {rates[0]:.0f} | {rates[1]:.0f} | "
                      f"{rates[2]:.0f} | {copied * 1e3:.2f} ({flops / rates[2] / 1e6:.2f}) | {peak:.0f} | {shares} |",
                      flush=True)


if __name__ == "__main__":
    main()
