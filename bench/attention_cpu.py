"""CPU attention core: SDPA against the explicit path (bf16 matmuls, float32 softmax), training and inference.

The case for ``auto``'s CPU rule in ``models/attention.py`` (``explicit_trains_faster``): for each
sequence length, dtype and bias kind (none; a fixed bias; a trained bias, whose gradient SDPA can only
get from its float32 math fallback), the time of forward (+ backward when training) of both paths,
measured side by side in one process.  B=8, H=12, head_dim=64 (the base model).

    python bench/attention_cpu.py
    python bench/attention_cpu.py --seq 65 257 --dtype bf16 --repeats 8

``--small``: the explicit path in bf16 training with its matmuls in bf16 against float32 (bf16 inputs cast up,
the output cast back), at the tiny and base presets' head shapes: the case for ``SMALL_HEADS_FLOAT32_MAX``.

Prints a markdown table with the machine and the date.
"""
import argparse
import datetime
import os
import platform
import sys

import torch
import torch.nn.functional as F

from one_peace.models.attention import SMALL_HEADS_FLOAT32_MAX, reference_attention

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


# (batch, heads, tokens, head dim): the tiny preset's text views and images, the base preset's text and images
SMALL_SHAPES = ((32, 4, 5, 16), (32, 4, 11, 16), (32, 4, 24, 16), (32, 4, 65, 16), (8, 12, 30, 64), (8, 12, 65, 64),
                (8, 12, 257, 64))


def small_heads_ms(shape, compute_dtype, repeats):
    """Forward + backward of the explicit path on bf16 inputs with a fixed bias, its matmuls in ``compute_dtype``."""
    q = torch.randn(*shape, dtype=torch.bfloat16, requires_grad=True)
    k, v = torch.randn_like(q, requires_grad=True), torch.randn_like(q, requires_grad=True)
    bias = torch.randn(1, shape[1], shape[2], shape[2], dtype=torch.bfloat16)

    def run():
        out = reference_attention(*(t.to(compute_dtype) for t in (q, k, v, bias))).to(torch.bfloat16)
        out.float().sum().backward()

    return median_seconds(run, repeats) * 1e3


def main_small(repeats):
    print("| batch x heads x tokens x head dim | matmuls in bf16, ms | in float32, ms | bf16 / float32 "
          "| the rule picks |")
    print("|---|---|---|---|---|", flush=True)
    for shape in SMALL_SHAPES:
        bf16, fp32 = (small_heads_ms(shape, dtype, repeats) for dtype in (torch.bfloat16, torch.float32))
        picked = "float32" if shape[2] * shape[3] <= SMALL_HEADS_FLOAT32_MAX else "bf16"
        print(f"| {' x '.join(map(str, shape))} | {bf16:.2f} | {fp32:.2f} | {bf16 / fp32:.2f} | {picked} |",
              flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[65, 257, 577])
    parser.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="bf16 training: the explicit path's matmuls in bf16 "
                        "against float32, at the presets' head shapes")
    args = parser.parse_args()
    print(f"CPU attention core, {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {datetime.date.today()}\n")
    if args.small:
        return main_small(args.repeats)
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
