"""Fused attention kernel: output and every gradient against a float64 reference.

CPU: the Triton kernels run under Triton's interpreter.  ``TRITON_INTERPRET=1`` is set
per test (``interpret`` fixture) rather than for the whole process: the kernels pick
compiled or interpreted code at launch time (see ``kernels/_triton_utils.py``), so the
order in which pytest imported triton does not matter, and other test modules are not
silently switched to the interpreter.  The kernels inside the model: ``test_kernel_dispatch.py``; the
self-check script and the compiled kernels at full ONE-PEACE shapes on a GPU: ``test_kernels_gpu.py``.
"""
import subprocess
import sys
import textwrap

import pytest
import torch
from kernel_helpers import (
    assert_close,
    check_against_reference,
    make_inputs,
    make_mask,
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

# (S, padding, bias): every S, padding pattern and bias shape appears; S = 33 and 70
# span several 32-wide interpreter tiles with a ragged last one.
CASES = [
    (1, "none", None),
    (1, "rows", "batch"),
    (5, "rows", "bcast"),
    (5, "first_only", "batch"),
    (17, "none", "batch"),
    (17, "first_only", "bcast"),
    (33, "rows", None),
    (33, "first_only", "bcast"),
    (70, "rows", "batch"),
    (70, "first_only", "bcast"),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("seq,pad,bias_kind", CASES)
def test_interpreter_matches_reference(interpret, dtype, seq, pad, bias_kind):
    q, k, v, bias = make_inputs(2, 2, seq, 16, dtype, bias_kind)
    check_against_reference(q, k, v, bias, make_mask(pad, 2, seq), dtype)


@pytest.mark.parametrize("dim", [32, 64, 128])
def test_interpreter_head_dims(interpret, dim):
    # bias (1, 1, S, S) with B = 2: the dbias reduction over batch and heads.
    q, k, v, bias = make_inputs(2, 1, 19, dim, torch.float16, "bcast_all", seed=dim)
    check_against_reference(q, k, v, bias, make_mask("rows", 2, 19), torch.float16)


@pytest.mark.parametrize("bias_kind", ["bcast_all", "2d"])
def test_interpreter_broadcast_bias_shapes(interpret, bias_kind):
    q, k, v, bias = make_inputs(2, 3, 20, 16, torch.bfloat16, bias_kind, seed=3)
    check_against_reference(q, k, v, bias, make_mask("first_only", 2, 20), torch.bfloat16)


def test_interpreter_float32_bias_with_half_inputs(interpret):
    q, k, v, _ = make_inputs(2, 2, 21, 16, torch.float16, None, seed=4)
    bias = torch.randn(1, 2, 21, 21, dtype=torch.float32, requires_grad=True)
    _, grads = check_against_reference(q, k, v, bias, make_mask("rows", 2, 21), torch.float16,
                                       bias_dtype=torch.float16)
    assert grads[3].dtype == torch.float32


def test_interpreter_bias_without_grad(interpret):
    q, k, v, bias = make_inputs(2, 2, 9, 16, torch.float16, "batch", seed=5)
    bias.requires_grad_(False)
    check_against_reference(q, k, v, bias, None, torch.float16)


def test_interpreter_small_tiles(interpret, monkeypatch):
    # 16-wide tiles: S = 33 gives three query and key blocks (last one of a single row).
    tile = attn_mod.KernelConfig(16, 16, 4, 1)
    cfg = attn_mod.LaunchConfig(tile, tile, tile, tile)
    monkeypatch.setattr(attn_mod, "_launch_config", lambda *args, **kwargs: cfg)
    q, k, v, bias = make_inputs(2, 2, 33, 16, torch.float16, "bcast", seed=6)
    check_against_reference(q, k, v, bias, make_mask("rows", 2, 33), torch.float16)


def test_interpreter_model_layout_and_table_grad(interpret):
    """The encoder's call: q/k/v are transposed views of (B, S, H, Dh) and the bias is
    ``table(bucket).permute(2, 0, 1)[None]`` (non-contiguous); the table gets the grad."""
    torch.manual_seed(7)
    B, S, H, D, buckets = 2, 23, 3, 16, 11
    dtype = torch.float16
    x = torch.randn(B, S, 3, H, D).to(dtype)
    table = torch.randn(buckets, H, dtype=dtype, requires_grad=True)
    bucket = torch.randint(0, buckets, (S, S))
    mask = make_mask("rows", B, S)

    def run(fn, q_src, tab):
        q, k, v = (q_src[:, :, i].transpose(1, 2) for i in range(3))
        bias = tab[bucket].permute(2, 0, 1).unsqueeze(0)
        return fn(q, k, v, bias, mask)

    xs = x.clone().requires_grad_()
    out = run(lambda q, k, v, b, m: fused_attention(q, k, v, bias=b, key_padding_mask=m), xs, table)
    assert out.transpose(1, 2).is_contiguous()  # (B, S, H, D) memory order: the reshape is free
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    dx, dtable = torch.autograd.grad(out, (xs, table), g)

    xr = x.double().requires_grad_()
    tr = table.detach().double().requires_grad_()
    ref = run(reference, xr, tr)
    rdx, rdtable = torch.autograd.grad(ref, (xr, tr), g.double())
    assert_close(out, ref, dtype, "out")
    assert_close(dx, rdx, dtype, "dqkv")
    assert_close(dtable, rdtable, dtype, "dtable")


def test_interpreter_fully_masked_sample(interpret):
    # Every key of sample 0 padded: its rows return 0 and its gradients are 0 (not NaN).
    q, k, v, bias = make_inputs(2, 2, 12, 16, torch.float16, "bcast", seed=8)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0] = True
    mask[1, 7:] = True
    out = fused_attention(q, k, v, bias=bias, key_padding_mask=mask)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).double()
    dq, dk, dv, dbias = torch.autograd.grad((out.double() * weight).sum(), (q, k, v, bias))
    for name, t in zip(["out", "dq", "dk", "dv", "dbias"], [out, dq, dk, dv, dbias]):
        assert torch.isfinite(t).all(), name
    assert out[0].abs().max() == 0 and dq[0].abs().max() == 0
    assert dk[0].abs().max() == 0 and dv[0].abs().max() == 0
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v, bias)]
    ref = reference(leaves[0][1:], leaves[1][1:], leaves[2][1:], leaves[3], mask[1:])
    rdq, rdk, rdv, rdbias = torch.autograd.grad((ref * weight[1:]).sum(), leaves)
    assert_close(out[1:], ref, torch.float16, "out")
    for name, g, rg in zip(["dq", "dk", "dv"], [dq, dk, dv], [rdq, rdk, rdv]):
        assert_close(g[1:], rg[1:], torch.float16, name)
    assert_close(dbias, rdbias, torch.float16, "dbias")


@pytest.mark.parametrize("dtype,seq,per_sample,pad", [
    (torch.float16, 70, True, "rows"),
    (torch.bfloat16, 17, False, "first_only"),
    (torch.bfloat16, 33, True, "first_only"),
    (torch.float32, 33, False, "none"),
], ids=str)
def test_interpreter_bucketed_bias(interpret, dtype, seq, per_sample, pad):
    """bias[b, h, i, j] = table[index[(b,) i, j], h] gathered in-kernel; d(table) via atomics."""
    B, H, D, buckets = 2, 2, 16, 13
    q, k, v, _ = make_inputs(B, H, seq, D, dtype, None, seed=seq)
    gen = torch.Generator().manual_seed(seq + 1)
    table = torch.randn(buckets, H, generator=gen).to(dtype).requires_grad_()
    index = torch.randint(0, buckets, (B, seq, seq) if per_sample else (seq, seq), generator=gen)
    mask = make_mask(pad, B, seq)
    out = fused_attention_bucketed(q, k, v, table, index, key_padding_mask=mask)
    grad_out = torch.randn(out.shape, generator=gen).to(dtype)
    grads = torch.autograd.grad(out, (q, k, v, table), grad_out)

    leaves = [t.detach().double().requires_grad_() for t in (q, k, v, table)]
    bias = leaves[3][index]  # (.., S, S, H)
    bias = bias.permute(2, 0, 1)[None] if bias.dim() == 3 else bias.permute(0, 3, 1, 2)
    ref = reference(*leaves[:3], bias=bias, key_padding_mask=mask)
    ref_grads = torch.autograd.grad(ref, leaves, grad_out.double())
    assert_close(out, ref, dtype, "out")
    for name, g, rg, t in zip(["dq", "dk", "dv", "dtable"], grads, ref_grads, (q, k, v, table)):
        assert g.dtype == t.dtype, name
        assert_close(g, rg, dtype, name)


def test_bucketed_errors(monkeypatch):
    if not triton_available():
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q = torch.zeros(2, 3, 5, 16)
    table = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="table must be"):
        fused_attention_bucketed(q, q, q, torch.zeros(4, 2), torch.zeros(5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        fused_attention_bucketed(q, q, q, table, torch.zeros(5, 5))
    with pytest.raises(ValueError, match="bucket_index must be"):
        fused_attention_bucketed(q, q, q, table, torch.zeros(3, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"lie in \[0, 4\)"):
        fused_attention_bucketed(q, q, q, table, torch.full((5, 5), 4))


def test_supported_and_errors(monkeypatch):
    q = torch.zeros(1, 2, 5, 16, dtype=torch.float16)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not fused_attention_supported(q)  # CPU, no interpreter (or no triton)
    with pytest.raises(ValueError, match="needs CUDA" if triton_available() else "triton is not installed"):
        fused_attention(q, q, q)
    if not triton_available():
        return
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert fused_attention_supported(q)
    assert fused_attention_supported(q.bfloat16()) and fused_attention_supported(q.float())
    assert not fused_attention_supported(q.double())
    odd = torch.zeros(1, 2, 5, 48, dtype=torch.float16)
    assert not fused_attention_supported(odd)
    with pytest.raises(ValueError, match="head_dim 48"):
        fused_attention(odd, odd, odd)
    with pytest.raises(ValueError, match="bias must be"):
        fused_attention(q, q, q, bias=torch.zeros(1, 3, 5, 5))
    with pytest.raises(ValueError, match="key_padding_mask must be bool"):
        fused_attention(q, q, q, key_padding_mask=torch.zeros(1, 5))
    with pytest.raises(ValueError, match="same dtype"):
        fused_attention(q, q.float(), q)


@needs_triton
def test_kernel_modes_are_independent_of_import_order(monkeypatch):
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    from one_peace.models.kernels._triton_utils import kernel_module

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the compiled copy must ignore this
    compiled_mod = kernel_module(attn_mod._KERNELS, interpret=False)
    monkeypatch.delenv("TRITON_INTERPRET")
    interpreted_mod = kernel_module(attn_mod._KERNELS, interpret=True)
    assert isinstance(compiled_mod.attn_fwd, JITFunction)
    assert isinstance(interpreted_mod.attn_fwd, InterpretedFunction)
    assert "TRITON_INTERPRET" not in __import__("os").environ  # env restored


def test_import_without_triton():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "triton" or name.startswith("triton."):
                    raise ImportError("triton blocked for this test")
        sys.meta_path.insert(0, Block())
        import torch
        import one_peace.models.kernels as K
        assert not K.triton_available()
        q = torch.zeros(1, 1, 3, 16, dtype=torch.float16)
        assert not K.fused_attention_supported(q)
        ln = K.FusedLayerNorm(8)
        x = torch.randn(2, 8)
        assert torch.equal(ln(x), torch.nn.functional.layer_norm(x, (8,), ln.weight, ln.bias))
        try:
            K.FusedLayerNorm(8, impl="fused")(x)
            raise AssertionError("an explicit fused LayerNorm without triton must raise")
        except RuntimeError as exc:
            assert "triton is not installed" in str(exc)
        from one_peace.models import attention as A
        assert A.select_attention_impl(q) == "sdpa"
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stdout + res.stderr
