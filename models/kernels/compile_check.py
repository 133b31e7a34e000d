"""Ahead-of-time compile of every kernel for NVIDIA targets -- no GPU needed.

Runs the real Triton pipeline (TTIR -> TTGIR -> LLVM -> PTX -> ptxas cubin) for
sm_80 / sm_90 at the launch configurations the host code uses, then ``ptxas -v``
for registers, spills and shared memory.  Catches what the CPU interpreter cannot:
code-generator errors, layouts/shapes ``tl.dot`` rejects, shared-memory overflow and
register spills of the chosen tiles.

    python -m one_peace.models.kernels.compile_check [--arch 80 90] [--head-dims 64 128]
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

_ATTN = "one_peace.models.kernels._attention_triton"
_LN = "one_peace.models.kernels._layer_norm_triton"
_FP32_POINTERS = {"Lse", "Delta", "Mean", "Rstd", "DWp", "DBp", "W", "B"}
_ELEMENT_POINTERS = {"Q", "K", "V", "Out", "DO", "DQ", "DK", "DV", "Bias", "DBias", "X", "Y", "DX", "DY"}
# Strides that are 1 at every launch (the host makes the bias' last dim contiguous):
# triton specialises integer arguments equal to 1 into constants, so do the same here.
_UNIT_STRIDES = {"stride_bn": 1, "stride_gn": 1}


def _signature(fn, dtype: str, constexprs: dict):
    """Argument types and the 16-divisibility hints triton's launcher derives at run time:
    tensors are 16-byte aligned and q/k/v/out and row strides are multiples of
    head_dim / width (>= 16); bias strides (multiples of S), the table's row stride (H)
    and sizes get no hint."""
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
            continue
        if name == "Mask":
            sig[name] = "*u8"
        elif name == "Index":
            sig[name] = "*i32"
        elif name == "DBias" and constexprs.get("DBIAS_MODE") == 2:
            sig[name] = "*fp32"  # the bucketed table gradient is accumulated in float32
        elif name in _FP32_POINTERS:
            sig[name] = "*fp32"
        elif name in _ELEMENT_POINTERS:
            sig[name] = f"*{dtype}"
        elif name == "eps":
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
        aligned = sig[name].startswith("*") or (
            name.startswith("stride_") and name[len("stride_"):][:1] not in ("b", "g", "m", "t"))
        if aligned:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


def _ptxas_usage(ptx: str, arch: int):
    from triton.backends.nvidia.compiler import get_ptxas

    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        # Same register-allocation flag as triton's own ptxas call (spill counts differ without it).
        cmd = [get_ptxas(arch).path, "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu}", src, "-o",
               os.path.join(tmp, "k.o")]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    log = res.stdout + res.stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return (int(regs.group(1)) if regs else -1,
            int(spills.group(1)) + int(spills.group(2)) if spills else -1)


def compile_kernel(module_name: str, kernel: str, dtype: str, constexprs: dict, num_warps: int,
                   num_stages: int, arch: int):
    """Compile one kernel variant; returns a dict of resource usage (raises on failure)."""
    import triton
    from triton.backends.compiler import GPUTarget

    from ._triton_utils import kernel_module

    fn = getattr(kernel_module(module_name, interpret=False), kernel)
    constexprs = dict(constexprs, **{k: v for k, v in _UNIT_STRIDES.items() if k in fn.arg_names})
    sig, attrs = _signature(fn, dtype, constexprs)
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    target = GPUTarget("cuda", arch, 32)
    options = triton.compiler.make_backend(target).parse_options(
        dict(num_warps=num_warps, num_stages=num_stages, enable_fp_fusion=True))
    start = time.time()
    compiled = triton.compile(src, target=target, options=options.__dict__)
    regs, spills = _ptxas_usage(compiled.asm["ptx"], arch)
    return dict(kernel=kernel, arch=arch, dtype=dtype, shared=compiled.metadata.shared, regs=regs,
                spill_bytes=spills, seconds=time.time() - start,
                config=" ".join(f"{k}={v}" for k, v in constexprs.items() if k.startswith("BLOCK") or k == "HEAD_DIM")
                + (" bucketed" if constexprs.get("BIAS_MODE") == 2 else "") + f" w={num_warps} s={num_stages}")


def attention_variants(head_dim: int, arch: int):
    """(kernel, constexprs, KernelConfig) at the host's launch configuration for ``arch``."""
    from .attention import KernelConfig, _launch_config

    cfg = _launch_config(head_dim, interpret=False, arch=arch)
    flags = dict(BIAS_MODE=1, HAS_MASK=True, DOT_F32=False)
    # Bucketed bias: the (buckets, H) table is contiguous, so its head stride is 1.
    bucketed = dict(flags, BIAS_MODE=2, stride_bh=1)

    def tiles(c):
        return dict(HEAD_DIM=head_dim, BLOCK_M=c.block_m, BLOCK_N=c.block_n)

    yield "attn_fwd", dict(tiles(cfg.fwd), **flags), cfg.fwd
    yield "attn_bwd_delta", dict(HEAD_DIM=head_dim, BLOCK_M=cfg.dq.block_m), KernelConfig(cfg.dq.block_m, 0, 4, 1)
    yield "attn_bwd_dkdv", dict(tiles(cfg.dkdv), **flags), cfg.dkdv
    yield "attn_bwd_dq", dict(tiles(cfg.dq), DBIAS_MODE=1, **flags), cfg.dq
    yield "attn_fwd", dict(tiles(cfg.fwd), **bucketed), cfg.fwd
    yield "attn_bwd_dkdv", dict(tiles(cfg.dkdv), **bucketed), cfg.dkdv
    # Its float32 table gradient is (buckets, H) contiguous too: head stride 1.
    yield "attn_bwd_dq", dict(tiles(cfg.dq), DBIAS_MODE=2, stride_gh=1, **bucketed), cfg.dq
    yield "attn_bwd_dbias_reduce", dict(tiles(cfg.reduce), HAS_MASK=True, DOT_F32=False), cfg.reduce


def layer_norm_variants(width: int):
    from .layer_norm import _tiling

    block_d, rows, warps = _tiling(width, interpret=False)
    base = dict(BLOCK_D=block_d, ROWS=rows)
    yield "ln_fwd", dict(base, HAS_W=True, HAS_B=True), warps
    yield "ln_bwd", dict(base, HAS_W=True, NEED_DWB=True), warps


def run(archs=(80, 90), dtypes=("fp16", "bf16"), head_dims=(16, 32, 64, 128), widths=(1536, 6144), out=sys.stdout):
    rows = []
    for arch in archs:
        for dtype in dtypes:
            for head_dim in head_dims:
                for kernel, const, cfg in attention_variants(head_dim, arch):
                    rows.append(compile_kernel(_ATTN, kernel, dtype, const, cfg.num_warps, cfg.num_stages, arch))
            for width in widths:
                for kernel, const, warps in layer_norm_variants(width):
                    rows.append(compile_kernel(_LN, kernel, dtype, const, warps, 1, arch))
    print("| arch | dtype | kernel | config | regs | spill bytes | shared bytes | compile s |", file=out)
    print("|---|---|---|---|---|---|---|---|", file=out)
    for r in rows:
        print(f"| sm_{r['arch']} | {r['dtype']} | {r['kernel']} | {r['config']} | {r['regs']} | {r['spill_bytes']} "
              f"| {r['shared']} | {r['seconds']:.1f} |", file=out)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--dtype", nargs="+", default=["fp16", "bf16"])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--widths", type=int, nargs="+", default=[1536, 6144])
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    rows = run(args.arch, args.dtype, args.head_dims, args.widths)
    spilled = [r for r in rows if r["spill_bytes"] > 0]
    print(f"\n{len(rows)} variants compiled; {len(spilled)} with register spills.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
