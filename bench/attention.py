"""Benchmark the attention core: fused Triton kernel vs torch SDPA vs explicit reference.

Forward and forward+backward time (median of CUDA-event timings), TFLOP/s and peak
extra memory, at ONE-PEACE shapes (B=8, H=24, head_dim=64; S = 257, 577, 751, 329),
fp16 and bf16, with a learned (1, H, S, S) bias that needs its gradient and a key
padding mask.  Prints a markdown table with the device and the date.

    python bench/attention.py                      # default shapes, fp16 + bf16
    python bench/attention.py --seq 577 --dtype bf16 --bias batch
    python bench/attention.py --bias bucket        # + in-kernel gathered bias (fused_bucketed)
    python bench/attention.py --sweep              # also time alternative fused tiles
    python bench/attention.py --cpu-sanity         # no GPU: tiny CPU timing of sdpa/reference

Without CUDA it says so and exits 0 (no numbers are made up).  The fused rows call the
kernels directly, whatever ``ONE_PEACE_ATTENTION`` says (the model only uses them when
it is ``fused``).  For a pass/fail check plus timing, run
``python -m one_peace.models.kernels_self_check``.
"""
import argparse
import datetime
import sys

import torch
import torch.nn.functional as F
from cuda_timing import cuda_time_ms, time_forward_backward  # bench/ is on sys.path when a script here runs

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def reference_attention(q, k, v, bias, mask):
    scores = q @ k.transpose(-1, -2)
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = scores.masked_fill(mask[:, None, None, :], float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def sdpa_attention(q, k, v, bias, mask):
    attn_mask = bias
    if mask is not None:
        base = bias if bias is not None else q.new_zeros(1, 1, q.shape[2], q.shape[2])
        attn_mask = base.masked_fill(mask[:, None, None, :], float("-inf"))
    if attn_mask is not None:
        attn_mask = attn_mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=1.0)


def fused(q, k, v, bias, mask):
    from one_peace.models.kernels import fused_attention

    return fused_attention(q, k, v, bias=bias, key_padding_mask=mask)


class Bucketed:
    """A (buckets, H) table + (S, S) index.  Dense implementations get the bias the way
    the model builds it -- ``table[index].permute(2, 0, 1)[None]``, inside the timed
    region; ``fused_bucketed`` gathers it inside the kernels."""

    def __init__(self, table, index):
        self.table, self.index = table, index

    def dense(self):
        return self.table[self.index].permute(2, 0, 1).unsqueeze(0)


def _dense(bias):
    return bias.dense() if isinstance(bias, Bucketed) else bias


def fused_bucketed(q, k, v, bias, mask):
    from one_peace.models.kernels import fused_attention_bucketed

    return fused_attention_bucketed(q, k, v, bias.table, bias.index, key_padding_mask=mask)


IMPLS = {
    "fused": lambda q, k, v, b, m: fused(q, k, v, _dense(b), m),
    "fused_bucketed": fused_bucketed,
    "sdpa": lambda q, k, v, b, m: sdpa_attention(q, k, v, _dense(b), m),
    "reference": lambda q, k, v, b, m: reference_attention(q, k, v, _dense(b), m),
}


def make_inputs(batch, heads, seq, dim, dtype, bias_kind, device):
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device=device, generator=gen) * scale).to(dtype).requires_grad_()

    q = rand(batch, heads, seq, dim, scale=dim ** -0.5)
    k, v = rand(batch, heads, seq, dim), rand(batch, heads, seq, dim)
    bias = None
    if bias_kind == "bucket":  # image-style 2-D relative-position buckets
        buckets = 2 * 47 * 47
        bias = Bucketed(rand(buckets, heads), torch.randint(0, buckets, (seq, seq), device=device, generator=gen))
    elif bias_kind != "none":
        bias = rand(1 if bias_kind == "bcast" else batch, heads, seq, seq)
    mask = torch.zeros(batch, seq, dtype=torch.bool, device=device)
    mask[batch // 2:, seq - seq // 4:] = True  # half the batch with a padded tail
    return q, k, v, bias, mask


def bench_one(impl, q, k, v, bias, mask, warmup, iters):
    fn = IMPLS[impl]
    leaves = [t for t in (q, k, v, bias.table if isinstance(bias, Bucketed) else bias) if t is not None]
    return time_forward_backward(lambda: fn(q, k, v, bias, mask), leaves, warmup, iters)


def max_err_vs_reference(impl, q, k, v, bias, mask):
    with torch.no_grad():
        dense = _dense(bias)
        ref = reference_attention(q.float(), k.float(), v.float(), None if dense is None else dense.float(), mask)
        out = IMPLS[impl](q, k, v, bias, mask)
    return (out.float() - ref).abs().max().item()


def sweep_configs(args, dtype, seq):
    """Time alternative fused tile configurations (forward and backward separately)."""
    from one_peace.models.kernels import attention as A

    KC = A.KernelConfig
    base = A._launch_config
    q, k, v, bias, mask = make_inputs(args.batch, args.heads, seq, args.head_dim, dtype, args.bias, "cuda")
    fwd_opts = [KC(128, 64, 8, 3), KC(128, 64, 4, 3), KC(64, 64, 4, 3), KC(128, 32, 8, 3), KC(128, 128, 8, 3)]
    bwd_opts = [KC(64, 64, 8, 2), KC(64, 64, 4, 2), KC(32, 64, 4, 2), KC(64, 32, 4, 2), KC(32, 128, 8, 2)]
    rows = []
    bias = _dense(bias)
    bias = bias.detach().requires_grad_() if bias is not None else None
    detached = [t.detach() if t is not None else None for t in (q, k, v, bias)]
    try:
        for fwd_cfg in fwd_opts:
            A._launch_config = lambda d, i, arch=90, f=fwd_cfg: base(d, i, arch)._replace(fwd=f)
            try:
                ms = cuda_time_ms(lambda: fused(*detached, mask), 3, 10)
                rows.append(("fwd", fwd_cfg, f"{ms:.3f}"))
            except Exception as exc:  # out of shared memory etc.
                rows.append(("fwd", fwd_cfg, f"failed: {type(exc).__name__}"))
        for bwd_cfg in bwd_opts:
            A._launch_config = lambda d, i, arch=90, b=bwd_cfg: base(d, i, arch)._replace(dkdv=b, dq=b, reduce=b)
            try:
                _, ms, _ = bench_one("fused", q, k, v, bias, mask, 3, 10)  # dense bias
                rows.append(("fwd+bwd", bwd_cfg, f"{ms:.3f}"))
            except Exception as exc:
                rows.append(("fwd+bwd", bwd_cfg, f"failed: {type(exc).__name__}"))
    finally:
        A._launch_config = base
    print(f"\nTile sweep, S={seq}, {dtype}: pass | BLOCK_M, BLOCK_N, warps, stages | ms")
    for kind, cfg, ms in rows:
        print(f"| {kind} | {tuple(cfg)} | {ms} |")


def cpu_sanity():
    print("No CUDA device: CPU sanity timing of sdpa/reference only (tiny shape, float32; "
          "not a GPU result, the fused kernel needs CUDA).")
    import time

    q, k, v, bias, mask = make_inputs(2, 4, 64, 16, torch.float32, "bcast", "cpu")
    for name in ("sdpa", "reference"):
        fn = IMPLS[name]
        out = fn(q, k, v, bias, mask)  # warm-up
        torch.autograd.grad(out, (q, k, v, bias), torch.ones_like(out))
        start = time.perf_counter()
        for _ in range(20):
            out = fn(q, k, v, bias, mask)
            torch.autograd.grad(out, (q, k, v, bias), torch.ones_like(out))
        print(f"| {name} | B=2 H=4 S=64 D=16 fp32 | fwd+bwd {1e3 * (time.perf_counter() - start) / 20:.2f} ms |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[257, 577, 751, 329])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", nargs="+", default=["fp16", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--bias", default="bcast", choices=["bcast", "batch", "bucket", "none"],
                        help="bcast: (1,H,S,S); batch: (B,H,S,S); bucket: table+index (adds fused_bucketed)")
    parser.add_argument("--impl", nargs="+", default=["fused", "fused_bucketed", "sdpa", "reference"],
                        choices=sorted(IMPLS))
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--sweep", action="store_true", help="also time alternative fused tile configs")
    parser.add_argument("--cpu-sanity", action="store_true", help="without CUDA, time sdpa/reference on CPU")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("CUDA is not available on this machine: the attention benchmark needs a GPU. Nothing measured.")
        if args.cpu_sanity:
            cpu_sanity()
        return 0

    from one_peace.models.kernels import fused_attention_supported

    props = torch.cuda.get_device_properties(0)
    print(f"# Attention core benchmark\n\ndevice: {props.name} (sm_{props.major}{props.minor}), "
          f"torch {torch.__version__}, date {datetime.date.today().isoformat()}")
    try:
        import triton

        print(f"triton {triton.__version__}")
    except ImportError:
        print("triton not installed: fused rows skipped")
    print(f"B={args.batch} H={args.heads} head_dim={args.head_dim} bias={args.bias} "
          f"(grad needed), key padding on half the batch; median of {args.iters} runs. "
          "TFLOP/s counts 4*B*H*S^2*D forward and 2.5x that backward (no recompute).\n")
    print("| S | dtype | impl | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | peak extra MiB | max err vs fp32 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for seq in args.seq:
        for dname in args.dtype:
            dtype = DTYPES[dname]
            q, k, v, bias, mask = make_inputs(args.batch, args.heads, seq, args.head_dim, dtype, args.bias, "cuda")
            flops = 4 * args.batch * args.heads * seq * seq * args.head_dim
            for impl in args.impl:
                if impl == "fused_bucketed" and args.bias != "bucket":
                    continue
                if impl.startswith("fused") and not fused_attention_supported(q):
                    print(f"| {seq} | {dname} | fused | unsupported here | | | | | |")
                    continue
                try:
                    fwd_ms, fb_ms, peak = bench_one(impl, q, k, v, bias, mask, args.warmup, args.iters)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    print(f"| {seq} | {dname} | {impl} | OOM | | | | | |")
                    continue
                err = f"{max_err_vs_reference(impl, q, k, v, bias, mask):.2e}" if impl.startswith("fused") else ""
                print(f"| {seq} | {dname} | {impl} | {fwd_ms:.3f} | {flops / fwd_ms / 1e9:.1f} | {fb_ms:.3f} "
                      f"| {3.5 * flops / fb_ms / 1e9:.1f} | {peak:.0f} | {err} |")
            del q, k, v, bias, mask
            torch.cuda.empty_cache()
    if args.sweep:
        for seq in args.seq:
            for dname in args.dtype:
                sweep_configs(args, DTYPES[dname], seq)
    return 0


if __name__ == "__main__":
    sys.exit(main())
