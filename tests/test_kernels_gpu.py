"""The GPU self-check script (``python -m one_peace.models.kernels_self_check``) and the compiled kernels at the
released model's shapes (``gpu`` marker: skipped without CUDA; ``bench/device_check.sh`` runs them on a lent GPU)."""
import subprocess
import sys

import pytest
import torch
from kernel_helpers import (
    assert_close,
    make_inputs,
    make_mask,
    needs_cuda,
    needs_triton,
    reference,
)

from one_peace.models.kernels import attention as attn_mod
from one_peace.models.kernels import (
    fused_attention,
    fused_attention_bucketed,
    fused_attention_supported,
    triton_available,
)

# ---------------------------------------------------------------- self-check script

def test_self_check_quick_end_to_end():
    """``python -m one_peace.models.kernels_self_check --quick``: correctness part at small
    shapes on the CPU interpreter, verdict line, exit code 0."""
    if not triton_available():
        pytest.skip("triton is not installed")
    res = subprocess.run([sys.executable, "-m", "one_peace.models.kernels_self_check", "--quick"],
                         capture_output=True, text=True, timeout=300)
    lines = res.stdout.strip().splitlines()
    assert res.returncode == 0, res.stdout + res.stderr
    assert lines[-1].startswith("self-check: PASS"), lines[-1]
    assert sum(line.startswith("  ok ") for line in lines) == 22  # 2 dtypes x (4 cases x 2 biases + 3 LN)


def test_self_check_reports_a_broken_kernel(monkeypatch):
    """A wrong kernel (here: the key padding mask dropped) is a FAIL naming the check, exit code 1."""
    import io

    from one_peace.models import kernels_self_check as self_check

    if not triton_available():
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # restored afterwards (main sets it)
    real = attn_mod.fused_attention_bucketed
    monkeypatch.setattr(attn_mod, "fused_attention_bucketed",
                        lambda q, k, v, table, index, key_padding_mask=None: real(q, k, v, table, index))
    out = io.StringIO()
    rc = self_check.main(["--quick", "--cases", "text", "--dtype", "fp16"], out=out)
    last = out.getvalue().strip().splitlines()[-1]
    assert rc == self_check.EXIT_FAIL
    assert last == "self-check: FAIL -- 1 of 5 correctness checks failed: attention text fp16 bucketed", last


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_self_check_without_cuda_says_so():
    res = subprocess.run([sys.executable, "-m", "one_peace.models.kernels_self_check"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 3, res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith("self-check: UNAVAILABLE")


# ---------------------------------------------------------------- GPU (compiled kernels)

def _gpu_reference_grads(q, k, v, bias, mask, grad_out):
    leaves = [t.detach().float().requires_grad_(t.requires_grad) if t is not None else None for t in (q, k, v, bias)]
    ref = reference(*leaves, key_padding_mask=mask, dtype=torch.float32)
    return ref, torch.autograd.grad(ref, [t for t in leaves if t is not None and t.requires_grad], grad_out.float())


@needs_cuda
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("seq,bias_kind", [(257, "bcast"), (577, "bcast"), (751, "bcast"), (329, "batch"),
                                           (329, "bcast")])
def test_gpu_full_shapes(compiled, dtype, seq, bias_kind):
    B, H, D = 8, 24, 64
    q, k, v, bias = make_inputs(B, H, seq, D, dtype, bias_kind, device="cuda", seed=seq)
    mask = make_mask("first_only", B, seq, device="cuda")
    out = fused_attention(q, k, v, bias=bias, key_padding_mask=mask)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to("cuda", dtype)
    grads = torch.autograd.grad(out, (q, k, v, bias), grad_out)
    ref, ref_grads = _gpu_reference_grads(q, k, v, bias, mask, grad_out)
    assert_close(out, ref, dtype, "out")
    for name, g, rg in zip(["dq", "dk", "dv", "dbias"], grads, ref_grads):
        assert_close(g, rg, dtype, name)
    # No atomics anywhere: a second backward is bitwise identical.
    grads2 = torch.autograd.grad(fused_attention(q, k, v, bias=bias, key_padding_mask=mask),
                                 (q, k, v, bias), grad_out)
    for g, g2 in zip(grads, grads2):
        assert torch.equal(g, g2)


@needs_cuda
@needs_triton
@pytest.mark.parametrize("dim", [16, 32, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gpu_head_dims(compiled, dim, dtype):
    q, k, v, bias = make_inputs(4, 4, 137, dim, dtype, "bcast", device="cuda", seed=dim)
    mask = make_mask("rows", 4, 137, device="cuda")
    out = fused_attention(q, k, v, bias=bias, key_padding_mask=mask)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v, bias), grad_out)
    ref, ref_grads = _gpu_reference_grads(q, k, v, bias, mask, grad_out)
    assert_close(out, ref, dtype, "out")
    for name, g, rg in zip(["dq", "dk", "dv", "dbias"], grads, ref_grads):
        assert_close(g, rg, dtype, name)


@needs_cuda
@needs_triton
def test_gpu_supported(compiled):
    q = torch.zeros(1, 2, 5, 64, dtype=torch.bfloat16, device="cuda")
    assert fused_attention_supported(q)
    assert not fused_attention_supported(q.float())  # fp32 on GPU goes to SDPA


@needs_triton
def test_kernels_compile_for_gpu_without_one():
    """AOT-compile (TTIR -> PTX -> ptxas cubin, no GPU needed) the attention kernels at
    head_dim 64 and the LayerNorm kernels at width 1536 for sm_90 with the
    launch configurations the host uses.  The interpreter cannot catch code-generator
    errors, unsupported dot shapes or shared-memory overflow; this does."""
    import warnings

    from one_peace.models.kernels import compile_check as cc

    try:
        from triton.backends.nvidia.compiler import get_ptxas

        assert get_ptxas(90).path
    except Exception as exc:  # a triton build without the NVIDIA backend / ptxas
        pytest.skip(f"no NVIDIA ptxas in this triton install: {exc!r}")
    rows = []
    for kernel, const, cfg in cc.attention_variants(64, arch=90):
        rows.append(cc.compile_kernel(cc._ATTN, kernel, "bf16", const, cfg.num_warps, cfg.num_stages, 90))
    for kernel, const, warps in cc.layer_norm_variants(1536):
        rows.append(cc.compile_kernel(cc._LN, kernel, "bf16", const, warps, 1, 90))
    assert len(rows) == 10
    for r in rows:
        assert r["shared"] <= 227 * 1024, f"{r['kernel']}: {r['shared']} bytes of shared memory > H100 limit"
        assert 0 < r["regs"] <= 255, r
        if r["spill_bytes"]:
            warnings.warn(f"{r['kernel']} spills {r['spill_bytes']} bytes of registers ({r['config']}): retune",
                          stacklevel=2)


@needs_cuda
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["image", "text"])
def test_gpu_bucketed_real_bucket_maps(compiled, dtype, kind):
    from one_peace.models import relative_position as rp

    if kind == "image":  # 24 x 24 patches + CLS = 577 tokens
        index, buckets = rp.make_image_bucket_position(24), rp.image_bucket_count(24)
    else:
        index, buckets = rp.make_token_bucket_position(256)[:72, :72], rp.token_bucket_count(256)
    seq = index.shape[0]
    B, H, D = 8, 24, 64
    q, k, v, _ = make_inputs(B, H, seq, D, dtype, None, device="cuda", seed=seq)
    table = (torch.randn(buckets, H, device="cuda")).to(dtype).requires_grad_()
    index = index.cuda()
    mask = make_mask("rows", B, seq, device="cuda")
    out = fused_attention_bucketed(q, k, v, table, index, key_padding_mask=mask)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v, table), grad_out)
    leaves = [t.detach().float().requires_grad_() for t in (q, k, v, table)]
    ref = reference(*leaves[:3], bias=leaves[3][index].permute(2, 0, 1)[None], key_padding_mask=mask,
                    dtype=torch.float32)
    ref_grads = torch.autograd.grad(ref, leaves, grad_out.float())
    assert_close(out, ref, dtype, "out")
    for name, g, rg in zip(["dq", "dk", "dv", "dtable"], grads, ref_grads):
        assert_close(g, rg, dtype, name)


@needs_cuda
@needs_triton
def test_gpu_self_check_correctness(compiled):
    """The self-check's correctness part at the released model's shapes (compiled kernels)."""
    res = subprocess.run([sys.executable, "-m", "one_peace.models.kernels_self_check", "--no-timing"],
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith("self-check: PASS"), res.stdout
