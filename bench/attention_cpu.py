"""CPU attention core: SDPA against the explicit path (bf16 matmuls, float32 softmax), training and inference.

The case for ``auto``'s CPU rule in ``models/attention.py`` (``explicit_trains_faster``): for each
sequence length, dtype and bias kind (none; a fixed bias; a trained bias, whose gradient SDPA can only
get from its float32 math fallback), the time of forward (+ backward when training) of both paths,
measured side by side in one process.  B=8, H=12, head_dim=64 (the base model).

    python bench/attention_cpu.py
    python bench/attention_cpu.py --seq 65 257 --dtype bf16 --repeats 8

Prints a markdown table with the machine and the date.
"""
import argparse
import datetime
import os
import platform
import sys

import torch
import torch.nn.functional as F

from one_peace.models.attention import reference_attention

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rates import median_seconds  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def time_ms(dtype, path, seq, bias_kind, train, repeats, batch=8, heads=12, head_dim=64):
    q = torch.randn(batch, heads, seq, head_dim, dtype=dtype, requires_grad=train)
    k, v = torch.randn_like(q, requires_grad=train), torch.randn_like(q, requires_grad=train)
    bias = None if bias_kind == "none" else torch.randn(1, heads, seq, seq, dtype=dtype,
                                                        requires_grad=bias_kind == "trained")

    def run():
        if path == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        else:
            out = reference_attention(q, k, v, bias)
        if train:
            out.float().sum().backward()

    with torch.set_grad_enabled(train):
        return median_seconds(run, repeats) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[65, 257, 577])
    parser.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"CPU attention core, {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {datetime.date.today()}\n")
    print("| tokens | dtype | bias | pass | SDPA ms | explicit ms | explicit / SDPA |")
    print("|---|---|---|---|---|---|---|", flush=True)
    torch.manual_seed(0)
    for seq in args.seq:
        for name in args.dtype:
            for bias_kind, train in (("none", True), ("fixed", True), ("trained", True), ("none", False),
                                     ("fixed", False)):
                sdpa = time_ms(DTYPES[name], "sdpa", seq, bias_kind, train, args.repeats)
                explicit = time_ms(DTYPES[name], "explicit", seq, bias_kind, train, args.repeats)
                print(f"| {seq} | {name} | {bias_kind} | {'forward + backward' if train else 'forward'} "
                      f"| {sdpa:.1f} | {explicit:.1f} | {explicit / sdpa:.2f} |", flush=True)


if __name__ == "__main__":
    main()
