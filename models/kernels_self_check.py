"""GPU self-check of the Triton kernels: correctness at the released model's shapes, then speed.

    python -m one_peace.models.kernels_self_check            # CUDA: correctness + timing
    python -m one_peace.models.kernels_self_check --quick    # CPU: correctness at small shapes
                                                              # under TRITON_INTERPRET=1

The kernels are opt-in (``ONE_PEACE_ATTENTION=fused``, ``ONE_PEACE_LAYER_NORM=fused``);
run this on a GPU before switching them on.

Correctness: for fp16 and bf16, the fused attention at the 4B model's attention shape
(24 heads, head_dim 64) and its sequence lengths -- text 72 (71 tokens + CLS), image
257 (256 px), vision-language 329 (text ; image, block-diagonal bias) and audio 751
(15 s) -- with the real relative-position bucket maps and key padding, both with a
dense bias and with the bucketed (table, bucket map) bias the model passes under
``fused``: the output and every gradient (q, k, v, dense bias, table) against a
float64 reference.  LayerNorm at widths 1536 and 6144: y, dx, dweight, dbias.  Errors
are scale-aware: ``max|x - ref| / max|ref|`` and ``||x - ref|| / ||ref||``; each must
stay under ``max(floor, 4 x torch's own error in the same dtype)`` (torch's error:
the model's explicit attention / ``F.layer_norm`` run in fp16/bf16, measured on the
same inputs).

Timing (CUDA, after every correctness check passed): forward and forward+backward of
what the model runs per layer -- fused attention with the bucketed bias against SDPA
with the dense bias and padding mask (the ``sdpa`` path, bias built once outside the
timed region as the model shares it across layers); Triton LayerNorm against
``F.layer_norm``.

The last line is the verdict (``self-check: PASS ...`` / ``self-check: FAIL ...``).
Exit codes: 0 pass, 1 a check failed (or raised), 3 nothing could be checked (no CUDA
without ``--quick``, or triton not installed).
"""
import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List

import torch
import torch.nn.functional as F

EXIT_PASS, EXIT_FAIL, EXIT_UNAVAILABLE = 0, 1, 3
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# Error floors (max-relative, l2-relative): about 6 and 4 units of the dtype's rounding
# step (2**-11 for fp16, 2**-8 for bf16).  Measured under the interpreter the fused errors
# are within about 2x of torch's own explicit computation in the same dtype.
FLOORS = {torch.float16: (3e-3, 2e-3), torch.bfloat16: (2.4e-2, 1.6e-2)}
BASELINE_FACTOR = 4.0


@dataclass
class Shapes:
    heads: int
    head_dim: int
    text_len: int  # tokens + CLS
    text_bucket_size: int
    image_grid: int  # patches per side (+ CLS)
    audio_len: int
    audio_bucket_size: int
    batch: dict  # case name -> batch size
    ln_widths: tuple
    ln_rows: int


FULL = Shapes(heads=24, head_dim=64, text_len=72, text_bucket_size=256, image_grid=16, audio_len=751,
              audio_bucket_size=512, batch=dict(text=32, image=16, vl=8, audio=8), ln_widths=(1536, 6144),
              ln_rows=8 * 257)
QUICK = Shapes(heads=2, head_dim=64, text_len=12, text_bucket_size=8, image_grid=4, audio_len=40,
               audio_bucket_size=16, batch=dict(text=2, image=2, vl=2, audio=2), ln_widths=(48, 160), ln_rows=34)


@dataclass
class Result:
    name: str  # full description of the check
    ok: bool
    detail: str
    errors: dict = field(default_factory=dict)
    label: str = ""  # short name for the verdict line


# ------------------------------------------------------------------ inputs

@dataclass
class AttentionCase:
    name: str
    batch: int
    index: torch.Tensor  # (S, S) bucket ids into the case's table
    num_buckets: int
    pad: torch.Tensor  # (B, S) bool key padding mask
    per_sample: bool  # dense bias (B, H, S, S) and bucket map (B, S, S) instead of shared ones
    zero_row: bool = False  # the table's last row is the (fixed) zero row of a combined table

    @property
    def seq(self) -> int:
        return self.index.shape[-1]


def attention_cases(shapes: Shapes, device) -> List[AttentionCase]:
    from .relative_position import (
        image_bucket_count,
        make_image_bucket_position,
        make_token_bucket_position,
        token_bucket_count,
    )

    text_idx = make_token_bucket_position(shapes.text_bucket_size, max(1024, shapes.text_len))
    text_idx = text_idx[:shapes.text_len, :shapes.text_len]
    text_n = token_bucket_count(shapes.text_bucket_size)
    image_idx, image_n = make_image_bucket_position(shapes.image_grid), image_bucket_count(shapes.image_grid)
    audio_idx = make_token_bucket_position(shapes.audio_bucket_size, max(1024, shapes.audio_len))
    audio_idx = audio_idx[:shapes.audio_len, :shapes.audio_len]
    audio_n = token_bucket_count(shapes.audio_bucket_size)
    # Vision-language: one table = [text ; image ; zero row], block-diagonal map with
    # cross-modal entries on the zero row (what the fusion encoder passes under ``fused``).
    t, i = text_idx.shape[0], image_idx.shape[0]
    vl_idx = torch.full((t + i, t + i), text_n + image_n, dtype=torch.long)
    vl_idx[:t, :t] = text_idx
    vl_idx[t:, t:] = image_idx + text_n

    def tail_pad(batch, seq, stop=None):
        # The second half of the batch has the second half of keys [1, stop) padded
        # (for vl: the tail of the text block); stop=0: no padding (images).
        stop = seq if stop is None else stop
        pad = torch.zeros(batch, seq, dtype=torch.bool)
        if stop:
            pad[batch // 2:, 1 + (stop - 1) // 2:stop] = True
        return pad

    b = shapes.batch
    cases = [
        AttentionCase("text", b["text"], text_idx, text_n, tail_pad(b["text"], t), False),
        AttentionCase("image", b["image"], image_idx, image_n, tail_pad(b["image"], i, 0), False),
        AttentionCase("vl", b["vl"], vl_idx, text_n + image_n + 1, tail_pad(b["vl"], t + i, t), True, True),
        AttentionCase("audio", b["audio"], audio_idx, audio_n, tail_pad(b["audio"], audio_idx.shape[0]), False),
    ]
    for case in cases:
        case.index, case.pad = case.index.to(device), case.pad.to(device)
    return cases


def make_attention_inputs(case: AttentionCase, shapes: Shapes, dtype, device, seed: int):
    gen = torch.Generator().manual_seed(seed)
    B, H, S, D = case.batch, shapes.heads, case.seq, shapes.head_dim

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    q = rand(B, H, S, D, scale=2 * D ** -0.5)  # pre-scaled q, a somewhat peaky softmax
    k, v = rand(B, H, S, D), rand(B, H, S, D)
    table = rand(case.num_buckets, H)
    if case.zero_row:
        table[-1] = 0
    index = case.index.expand(B, S, S).contiguous() if case.per_sample else case.index
    dense = F.embedding(index, table)  # (.., S, S, H)
    dense = dense.permute(0, 3, 1, 2) if dense.dim() == 4 else dense.permute(2, 0, 1)[None]
    dense = dense.contiguous()
    return q, k, v, table, index, dense, rand(B, H, S, D)


# ------------------------------------------------------------------ error measures

def rel_errors(actual: torch.Tensor, ref: torch.Tensor):
    """(max |a - r| / max |r|, ||a - r|| / ||r||); inf when a is not finite."""
    if not torch.isfinite(actual).all():
        return math.inf, math.inf
    diff = actual.double() - ref.double()
    ref_max = ref.abs().max().item()
    ref_norm = ref.double().norm().item()
    return diff.abs().max().item() / max(ref_max, 1e-30), diff.norm().item() / max(ref_norm, 1e-30)


def judge(name: str, dtype, got: dict, ref: dict, base: dict) -> Result:
    floor_max, floor_l2 = FLOORS[dtype]
    parts, failures, errors = [], [], {}
    for key, value in got.items():
        e_max, e_l2 = rel_errors(value, ref[key])
        b_max, b_l2 = rel_errors(base[key], ref[key])
        lim_max = max(floor_max, BASELINE_FACTOR * b_max)
        lim_l2 = max(floor_l2, BASELINE_FACTOR * b_l2)
        errors[key] = (e_max, e_l2, b_max, b_l2)
        parts.append(f"{key} {e_max:.1e}/{e_l2:.1e} (torch {b_max:.1e}/{b_l2:.1e})")
        if not (e_max <= lim_max and e_l2 <= lim_l2):
            failures.append(f"{key} max {e_max:.2e} (limit {lim_max:.2e}), l2 {e_l2:.2e} (limit {lim_l2:.2e}); "
                            f"torch {b_max:.2e}/{b_l2:.2e}")
    if failures:
        return Result(name, False, "; ".join(failures), errors)
    worst = max(max(e[0] / max(FLOORS[dtype][0], BASELINE_FACTOR * e[2]),
                    e[1] / max(FLOORS[dtype][1], BASELINE_FACTOR * e[3])) for e in errors.values())
    return Result(name, True, " ".join(parts) + f"  (worst {worst:.2f} of limit)", errors)


# ------------------------------------------------------------------ correctness

def _grads(out, leaves, grad_out):
    return dict(zip([n for n, _ in leaves], torch.autograd.grad(out, [t for _, t in leaves], grad_out)))


def check_attention(case: AttentionCase, shapes: Shapes, dtype, dname: str, device, bucketed: bool) -> Result:
    from .attention import reference_attention
    from .kernels.attention import fused_attention, fused_attention_bucketed

    form = "bucketed" if bucketed else "dense"
    bias_shape = "(B,S,S) map" if (bucketed and case.per_sample) else "(S,S) map" if bucketed else \
        "(B,H,S,S)" if case.per_sample else "(1,H,S,S)"
    name = f"attention {case.name:<5} {dname} {form:<8} {bias_shape:<10} B={case.batch} S={case.seq}"
    q, k, v, table, index, dense, grad_out = make_attention_inputs(case, shapes, dtype, device, seed=case.seq)
    mask = case.pad

    def run(qq, kk, vv, bias_leaf, fn):
        leaves = [("out", None), ("dq", qq), ("dk", kk), ("dv", vv), ("dtable" if bucketed else "dbias", bias_leaf)]
        out = fn(qq, kk, vv, bias_leaf)
        res = {"out": out.detach()}
        res.update(_grads(out, leaves[1:], grad_out.to(out.dtype)))
        return res

    def leaf(t, dt):
        return t.detach().to(dt).requires_grad_()

    def dense_of(tab):
        b = F.embedding(index, tab)
        return b.permute(0, 3, 1, 2) if b.dim() == 4 else b.permute(2, 0, 1)[None]

    bias_src = table if bucketed else dense
    if bucketed:
        def fused_fn(qq, kk, vv, tab):
            return fused_attention_bucketed(qq, kk, vv, tab, index, key_padding_mask=mask)

        def torch_fn(qq, kk, vv, tab):
            return reference_attention(qq, kk, vv, dense_of(tab), mask)
    else:
        def fused_fn(qq, kk, vv, bias):
            return fused_attention(qq, kk, vv, bias=bias, key_padding_mask=mask)

        def torch_fn(qq, kk, vv, bias):
            return reference_attention(qq, kk, vv, bias, mask)

    got = run(*(leaf(t, dtype) for t in (q, k, v, bias_src)), fused_fn)
    ref = run(*(leaf(t, torch.float64) for t in (q, k, v, bias_src)), torch_fn)
    base = run(*(leaf(t, dtype) for t in (q, k, v, bias_src)), torch_fn)
    for key, value in got.items():
        if value.dtype != dtype or value.shape != ref[key].shape:
            return Result(name, False, f"{key}: {value.dtype} {tuple(value.shape)}, expected {dtype} "
                                       f"{tuple(ref[key].shape)}")
    return judge(name, dtype, got, ref, base)


def check_layer_norm(width: int, rows: int, dtype, dname: str, device, param_dtype=None) -> Result:
    """``FusedLayerNorm(impl="fused")`` -- the module the model builds -- against float64 torch."""
    from .kernels.layer_norm import FusedLayerNorm

    param_dtype = param_dtype or dtype
    pname = "" if param_dtype == dtype else f" {str(param_dtype).replace('torch.', '')} params"
    name = f"layer_norm width={width} rows={rows} {dname}{pname}"
    gen = torch.Generator().manual_seed(width)
    x = (torch.randn(rows, width, generator=gen) * 3 + 0.5).to(device, dtype)
    w = (1 + 0.5 * torch.randn(width, generator=gen)).to(device, param_dtype)
    b = (0.5 * torch.randn(width, generator=gen)).to(device, param_dtype)
    grad_out = torch.randn(rows, width, generator=gen).to(device, dtype)

    def run(impl, dt, pdt):
        ln = FusedLayerNorm(width, impl="torch" if impl == "torch_cast" else impl).to(device, pdt)
        with torch.no_grad():
            ln.weight.copy_(w)
            ln.bias.copy_(b)
        xx = x.detach().to(dt).requires_grad_()
        if impl == "torch_cast":  # parameters cast to the input dtype (the gradients flow back through the cast)
            y = F.layer_norm(xx, (width,), ln.weight.to(dt), ln.bias.to(dt), ln.eps)
        else:
            y = ln(xx)
        res = {"y": y.detach()}
        res.update(_grads(y, [("dx", xx), ("dweight", ln.weight), ("dbias", ln.bias)], grad_out.to(y.dtype)))
        return res

    got = run("fused", dtype, param_dtype)
    ref = run("torch", torch.float64, torch.float64)
    try:
        base = run("torch", dtype, param_dtype)
    except RuntimeError:  # torch versions whose CUDA layer_norm rejects fp32 parameters with a half input
        base = run("torch_cast", dtype, param_dtype)
    for key, value in got.items():
        expected = dtype if key in ("y", "dx") else param_dtype
        if value.dtype != expected:
            return Result(name, False, f"{key}: dtype {value.dtype}, expected {expected}")
    return judge(name, dtype, got, ref, base)


# ------------------------------------------------------------------ timing

def time_attention(case: AttentionCase, shapes: Shapes, dtype, dname: str, device, warmup: int, iters: int):
    from .attention import BucketedBias, _fused_impl, _sdpa_impl
    from .kernels.timing import time_forward_backward

    q, k, v, table, index, dense, _ = make_attention_inputs(case, shapes, dtype, device, seed=1)
    q, k, v, table, dense = (t.requires_grad_() for t in (q, k, v, table, dense))
    mask = case.pad
    bucketed = BucketedBias(table, index)
    fused = time_forward_backward(lambda: _fused_impl(q, k, v, bucketed, mask, 0.0), [q, k, v, table], warmup, iters)
    sdpa = time_forward_backward(lambda: _sdpa_impl(q, k, v, dense, mask, 0.0), [q, k, v, dense], warmup, iters)
    return fused, sdpa


def time_layer_norm(width: int, rows: int, dtype, device, warmup: int, iters: int):
    from .kernels.layer_norm import FusedLayerNorm
    from .kernels.timing import time_forward_backward

    x = torch.randn(rows, width, device=device, dtype=dtype, requires_grad=True)
    ln = FusedLayerNorm(width, impl="fused").to(device, dtype)
    fused = time_forward_backward(lambda: ln(x), [x, ln.weight, ln.bias], warmup, iters)
    ref = time_forward_backward(lambda: F.layer_norm(x, (width,), ln.weight, ln.bias, ln.eps),
                                [x, ln.weight, ln.bias], warmup, iters)
    return fused, ref


def geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


def speed_phrase(what: str, ratio: float, against: str) -> str:
    if ratio >= 1.0:
        return f"{what} {ratio:.2f}x faster than {against}"
    return f"{what} {1 / ratio:.2f}x slower than {against}"


# ------------------------------------------------------------------ driver

def _guarded(fn: Callable[[], Result], name: str) -> Result:
    try:
        return fn()
    except Exception as exc:  # a compile error, OOM or launch failure is a failed check
        return Result(name, False, f"raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def run_correctness(shapes: Shapes, dtypes, device, cases_wanted, out) -> List[Result]:
    cases = [c for c in attention_cases(shapes, device) if c.name in cases_wanted]
    print(f"[correctness] errors: max-relative/l2-relative to a float64 reference; limit = max(floor, "
          f"{BASELINE_FACTOR:g} x torch's own error in the same dtype)", file=out)
    checks = []  # (label, thunk)
    for dname in dtypes:
        dtype = DTYPES[dname]
        for case in cases:
            for bucketed in (False, True):
                checks.append((f"attention {case.name} {dname} {'bucketed' if bucketed else 'dense'}",
                               lambda c=case, d=dtype, n=dname, bk=bucketed:
                               check_attention(c, shapes, d, n, device, bk)))
        for width in shapes.ln_widths:
            checks.append((f"layer_norm {width} {dname}",
                           lambda w=width, d=dtype, n=dname: check_layer_norm(w, shapes.ln_rows, d, n, device)))
        # fp32 parameters with a half input (mixed precision without casting the module).
        width = shapes.ln_widths[0]
        checks.append((f"layer_norm {width} {dname} fp32 params",
                       lambda w=width, d=dtype, n=dname: check_layer_norm(w, shapes.ln_rows, d, n, device,
                                                                          torch.float32)))
    results = []
    for label, thunk in checks:
        start = time.perf_counter()
        res = _guarded(thunk, label)
        res.label = label
        results.append(res)
        print(f"  {'ok  ' if res.ok else 'FAIL'} {res.name}: {res.detail} [{time.perf_counter() - start:.1f} s]",
              file=out, flush=True)
    return results


def run_timing(shapes: Shapes, dtypes, device, cases_wanted, warmup, iters, out):
    print("\n[timing] median ms (CUDA events); fused = bucketed-bias kernel, sdpa = "
          "F.scaled_dot_product_attention with the dense bias + padding (the model's sdpa path)", file=out)
    print("| case | dtype | B | S | fused fwd | sdpa fwd | speedup | fused fwd+bwd | sdpa fwd+bwd | speedup |", file=out)
    print("|---|---|---|---|---|---|---|---|---|---|", file=out)
    attn, ln = [], []
    for dname in dtypes:
        dtype = DTYPES[dname]
        for case in [c for c in attention_cases(shapes, device) if c.name in cases_wanted]:
            (f_fwd, f_fb, _), (s_fwd, s_fb, _) = time_attention(case, shapes, dtype, dname, device, warmup, iters)
            torch.cuda.empty_cache()
            attn.append(s_fb / f_fb)
            print(f"| {case.name} | {dname} | {case.batch} | {case.seq} | {f_fwd:.3f} | {s_fwd:.3f} | "
                  f"{s_fwd / f_fwd:.2f}x | {f_fb:.3f} | {s_fb:.3f} | {s_fb / f_fb:.2f}x |", file=out, flush=True)
    print("\n| layer_norm | dtype | rows | fused fwd | torch fwd | speedup | fused fwd+bwd | torch fwd+bwd | speedup |",
          file=out)
    print("|---|---|---|---|---|---|---|---|---|", file=out)
    for dname in dtypes:
        dtype = DTYPES[dname]
        for width in shapes.ln_widths:
            (f_fwd, f_fb, _), (t_fwd, t_fb, _) = time_layer_norm(width, shapes.ln_rows, dtype, device, warmup, iters)
            ln.append(t_fb / f_fb)
            print(f"| {width} | {dname} | {shapes.ln_rows} | {f_fwd:.4f} | {t_fwd:.4f} | {t_fwd / f_fwd:.2f}x | "
                  f"{f_fb:.4f} | {t_fb:.4f} | {t_fb / f_fb:.2f}x |", file=out, flush=True)
    return attn, ln


def main(argv=None, out=None) -> int:
    out = out or sys.stdout
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", "--interpret", dest="quick", action="store_true",
                        help="correctness only, small shapes, on CPU under TRITON_INTERPRET=1 (for CI)")
    parser.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--cases", nargs="+", default=["text", "image", "vl", "audio"],
                        choices=["text", "image", "vl", "audio"])
    parser.add_argument("--no-timing", action="store_true", help="skip the timing part")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args(argv)

    from .kernels._triton_utils import triton_available

    if args.quick:
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        os.environ.pop("TRITON_INTERPRET", None)  # a GPU check must run the compiled kernels
    from .kernels.switches import invalidate_kernel_caches

    invalidate_kernel_caches()
    if not triton_available():
        print("self-check: UNAVAILABLE -- triton is not installed; nothing checked", file=out)
        return EXIT_UNAVAILABLE
    if not args.quick and not torch.cuda.is_available():
        print("self-check: UNAVAILABLE -- no CUDA device (torch.cuda.is_available() is False); nothing checked. "
              "Run with --quick for the CPU interpreter check at small shapes.", file=out)
        return EXIT_UNAVAILABLE

    import triton

    shapes = QUICK if args.quick else FULL
    device = torch.device("cpu") if args.quick else torch.device("cuda")
    where = "CPU, Triton interpreter, small shapes" if args.quick else \
        f"{torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))})"
    print(f"ONE-PEACE kernel self-check: {where}; torch {torch.__version__}, triton {triton.__version__}; "
          f"heads {shapes.heads}, head_dim {shapes.head_dim}", file=out)
    start = time.perf_counter()
    results = run_correctness(shapes, args.dtype, device, args.cases, out)
    failed = [r for r in results if not r.ok]
    if failed:
        names = ", ".join(r.label for r in failed)
        print(f"\nself-check: FAIL -- {len(failed)} of {len(results)} correctness checks failed: {names}", file=out)
        return EXIT_FAIL
    summary = f"all {len(results)} correctness checks passed"
    if args.quick or args.no_timing:
        mode = "interpreter, small shapes, " if args.quick else ""
        print(f"\nself-check: PASS -- {summary} ({mode}no timing; {time.perf_counter() - start:.0f} s)", file=out)
        return EXIT_PASS
    try:
        attn, ln = run_timing(shapes, args.dtype, device, args.cases, args.warmup, args.iters, out)
    except Exception as exc:
        print(f"\nself-check: FAIL -- {summary}, but timing raised {type(exc).__name__}: {exc}", file=out)
        return EXIT_FAIL
    a, lr = geomean(attn), geomean(ln)
    advice = "" if a >= 1.0 else " (keep ONE_PEACE_ATTENTION=auto)"
    print(f"\nself-check: PASS -- {speed_phrase('fused attention', a, 'SDPA with bias')} "
          f"(fwd+bwd, geometric mean of {len(attn)} shapes, {min(attn):.2f}x-{max(attn):.2f}x){advice}; "
          f"{speed_phrase('fused LayerNorm', lr, 'torch')}; {summary}", file=out)
    return EXIT_PASS


if __name__ == "__main__":
    sys.exit(main())
