"""Fused attention kernel: output and every gradient against a float64 reference.

CPU: the Triton kernels run under Triton's interpreter.  ``TRITON_INTERPRET=1`` is set
per test (``interpret`` fixture) rather than for the whole process: the kernels pick
compiled or interpreted code at launch time (see ``kernels/_triton_utils.py``), so the
order in which pytest imported triton does not matter, and other test modules are not
silently switched to the interpreter.

GPU (``torch.cuda.is_available()``): full ONE-PEACE shapes, compiled kernels.
"""
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import assert_scaled_close

from one_peace.models.kernels import attention as attn_mod
from one_peace.models.kernels import (
    fused_attention,
    fused_attention_bucketed,
    fused_attention_supported,
    triton_available,
)

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")
_skip_no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton kernels)")


def needs_cuda(test):  # the project's ``gpu`` marker + skipped (with the reason) without CUDA
    return pytest.mark.gpu(_skip_no_cuda(test))

# Max abs error allowed, relative to max(1, max |reference|): a few units of the dtype's
# rounding step (fp32 runs exact dots in the interpreter; half rounds P and dS).
TOL = {torch.float32: 2e-5, torch.float16: 6e-3, torch.bfloat16: 4.7e-2}


@pytest.fixture
def interpret(monkeypatch):
    if not triton_available():
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def compiled(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def reference(q, k, v, bias=None, key_padding_mask=None, dtype=torch.float64):
    scores = q.to(dtype) @ k.to(dtype).transpose(-1, -2)
    if bias is not None:
        scores = scores + bias.to(dtype)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1) @ v.to(dtype)


def make_mask(kind, batch, seq, device="cpu"):
    if kind == "none":
        return None
    mask = torch.zeros(batch, seq, dtype=torch.bool, device=device)
    if kind == "rows":  # the last sample has its last third padded
        mask[-1, seq - seq // 3:] = True
    elif kind == "first_only":  # the first sample keeps only its first key
        mask[0, 1:] = True
        mask[-1, seq - seq // 2:] = True
    else:
        raise ValueError(kind)
    return mask


def make_inputs(batch, heads, seq, dim, dtype, bias_kind, device="cpu", seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype).requires_grad_()

    q = rand(batch, heads, seq, dim, scale=dim ** -0.5 * 2)  # pre-scaled q, somewhat peaky softmax
    k, v = rand(batch, heads, seq, dim), rand(batch, heads, seq, dim)
    bias_shape = {None: None, "bcast": (1, heads, seq, seq), "batch": (batch, heads, seq, seq),
                  "bcast_all": (1, 1, seq, seq), "2d": (seq, seq)}[bias_kind]
    bias = rand(*bias_shape) if bias_shape is not None else None
    return q, k, v, bias


def assert_close(actual, expected, dtype, name):
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    err = (actual.double() - expected.double()).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    assert err <= TOL[dtype] * scale, f"{name}: max abs err {err:.3e} > {TOL[dtype] * scale:.3e} ({dtype})"


def check_against_reference(q, k, v, bias, mask, dtype, bias_dtype=None):
    out = fused_attention(q, k, v, bias=bias, key_padding_mask=mask)
    assert out.dtype == q.dtype and out.shape == q.shape
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device, out.dtype)
    inputs = [t for t in (q, k, v, bias) if t is not None and t.requires_grad]
    grads = torch.autograd.grad(out, inputs, grad_out)

    leaves = [t.detach().double().requires_grad_(t.requires_grad) if t is not None else None for t in (q, k, v, bias)]
    ref = reference(*leaves, key_padding_mask=mask)
    ref_inputs = [t for t in leaves if t is not None and t.requires_grad]
    ref_grads = torch.autograd.grad(ref, ref_inputs, grad_out.double())

    assert_close(out, ref, dtype, "out")
    names = ["dq", "dk", "dv", "dbias"]
    for name, g, rg, t in zip(names, grads, ref_grads, inputs):
        assert g.dtype == t.dtype, f"{name} dtype {g.dtype} != {t.dtype}"
        assert_close(g, rg, bias_dtype if (name == "dbias" and bias_dtype) else dtype, name)
    return out, grads


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


@pytest.fixture(scope="module")
def tiny_pretrain(fixtures_dir):
    import json

    from helpers import load_fixture
    from omegaconf import OmegaConf

    from one_peace.models import OnePeacePretrainModel
    from one_peace.models.checkpoint import load_into

    cfg = json.loads((fixtures_dir / "config.json").read_text())["pretrain_cfg_image_text"]["model"]
    model = OnePeacePretrainModel(OmegaConf.create(cfg), vocab_size=256)
    return load_into(model, load_fixture("pretrain_state_dict.pt")).eval()


@pytest.fixture
def kernel_switches():
    """Restores both switches to the environment's choice after the test."""
    from one_peace.models.kernels import set_attention_impl, set_layer_norm_impl

    yield set_attention_impl, set_layer_norm_impl
    set_attention_impl(None)
    set_layer_norm_impl(None)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls of the dense and the bucketed fused attention and of the LayerNorm kernel."""
    from one_peace.models.kernels import layer_norm as ln_mod

    calls = {"dense": 0, "bucketed": 0, "layer_norm": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr("one_peace.models.kernels.fused_attention", counted("dense", fused_attention))
    monkeypatch.setattr("one_peace.models.kernels.fused_attention_bucketed",
                        counted("bucketed", fused_attention_bucketed))
    monkeypatch.setattr(ln_mod, "_kernel_layer_norm", counted("layer_norm", ln_mod._kernel_layer_norm))
    return calls


@pytest.mark.parametrize("call", ["image", "vl"])
def test_interpreter_tiny_model_matches_official_and_reference_grads(interpret, monkeypatch, tiny_pretrain,
                                                                     kernel_switches, kernel_calls, call):
    """The whole tiny fixture model with ONE_PEACE_ATTENTION=fused and ONE_PEACE_LAYER_NORM=fused,
    both on the interpreter (float32): official outputs, and every parameter gradient --
    relative-position tables included -- equal to the plain-torch reference run.  Every
    attention call gets the bucketed (table, bucket map) bias; for vl the table is
    [text ; image ; zero row] with a block-diagonal map (and padded text keys)."""
    from helpers import load_fixture

    set_attention_impl, set_layer_norm_impl = kernel_switches
    inputs, official = load_fixture("inputs.pt"), load_fixture("encoder_outputs.pt")
    model = tiny_pretrain
    kwargs = {"image": dict(src_images=inputs["src_images"]),
              "vl": dict(src_tokens=inputs["src_tokens"], src_images=inputs["src_images"])}[call]
    expected = {"image": [official["image_features"]],
                "vl": [official["vl_text_features"], official["vl_image_features"]]}[call]

    def features():
        out = model(encoder_type=call, **kwargs)
        return [out[1]] if call == "image" else list(out)

    def run_with_grads():
        model.zero_grad()
        feats = features()
        loss = sum((f * torch.linspace(-1, 1, f.numel()).view_as(f)).sum() for f in feats)
        loss.backward()
        return [f.detach() for f in feats], {n: p.grad.clone() for n, p in model.named_parameters()
                                             if p.grad is not None}

    set_attention_impl("fused")
    set_layer_norm_impl("fused")
    try:
        with torch.no_grad():
            _, text = model(src_tokens=inputs["src_tokens"], encoder_type="text")
        feats, grads = run_with_grads()
        layers = len(model.encoder_wrapper.fusion_model.layers)
        assert kernel_calls["dense"] == 0 and kernel_calls["bucketed"] == 2 * layers, kernel_calls
        assert kernel_calls["layer_norm"] > 0
        monkeypatch.delenv("TRITON_INTERPRET")  # reference run: torch attention and LayerNorm
        set_attention_impl("reference")
        set_layer_norm_impl(None)
        ref_feats, ref_grads = run_with_grads()
    finally:
        model.zero_grad()
    assert_scaled_close(text, official['text_features'], rel=1e-05)
    for f, o, r in zip(feats, expected, ref_feats):
        assert_scaled_close(f, o, rel=1e-05)
        assert_scaled_close(f, r, rel=1e-05)
    assert set(grads) == set(ref_grads)
    tables = {n for n in grads if "rel_pos" in n}
    assert tables == ({"encoder_wrapper.image_adapter.rel_pos_table_list.0.weight"} if call == "image" else
                      {f"encoder_wrapper.{m}_adapter.rel_pos_table_list.0.weight" for m in ("text", "image")})
    for name, g in grads.items():
        scale = ref_grads[name].abs().max().item()
        assert (g - ref_grads[name]).abs().max().item() <= 2e-5 * max(scale, 1e-6), name


# ---------------------------------------------------------------- dispatch (opt-in, resolved once)

def test_auto_never_picks_the_kernels(interpret, kernel_switches, kernel_calls, tiny_pretrain):
    """Even where the kernels could run (TRITON_INTERPRET=1, fp16/fp32), ``auto`` is SDPA
    and FusedLayerNorm is F.layer_norm (bitwise); float64 and dropout take the reference."""
    from helpers import load_fixture

    from one_peace.models.attention import select_attention_impl
    from one_peace.models.kernels import FusedLayerNorm, invalidate_kernel_caches

    invalidate_kernel_caches()
    q = torch.zeros(1, 2, 5, 16)
    assert fused_attention_supported(q) and fused_attention_supported(q.half())
    assert select_attention_impl(q) == select_attention_impl(q.half()) == "sdpa"
    assert select_attention_impl(q.double()) == "reference"
    assert select_attention_impl(q, dropout_p=0.1) == "reference"
    ln = FusedLayerNorm(16)
    x = torch.randn(3, 16)
    assert torch.equal(ln(x), torch.nn.functional.layer_norm(x, (16,), ln.weight, ln.bias))
    inputs = load_fixture("inputs.pt")
    with torch.no_grad():
        tiny_pretrain(src_tokens=inputs["src_tokens"], src_images=inputs["src_images"], encoder_type="vl")
    assert kernel_calls == {"dense": 0, "bucketed": 0, "layer_norm": 0}


def test_explicit_fused_with_dropout_uses_reference(interpret, kernel_switches, kernel_calls):
    from one_peace.models.attention import MultiheadSelfAttention, select_attention_impl

    set_attention_impl, _ = kernel_switches
    set_attention_impl("fused")
    q = torch.zeros(1, 2, 5, 16)
    assert select_attention_impl(q) == "fused"
    assert select_attention_impl(q, dropout_p=0.1) == "reference"
    attn = MultiheadSelfAttention(32, 2, dropout=0.1).train()
    attn(torch.randn(2, 5, 32)).sum().backward()
    assert kernel_calls["dense"] == 0
    attn.eval()(torch.randn(2, 5, 32))
    assert kernel_calls["dense"] == 1


def test_explicit_fused_raises_where_the_kernels_cannot_run(monkeypatch, kernel_switches):
    from one_peace.models.attention import MultiheadSelfAttention
    from one_peace.models.kernels import FusedLayerNorm

    set_attention_impl, set_layer_norm_impl = kernel_switches
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    set_attention_impl("fused")
    set_layer_norm_impl("fused")
    reason = "needs CUDA" if triton_available() else "triton is not installed"
    with pytest.raises(RuntimeError, match=f"ONE_PEACE_ATTENTION=fused.*{reason}"):
        MultiheadSelfAttention(32, 2)(torch.randn(2, 5, 32))
    with pytest.raises(RuntimeError, match=f"ONE_PEACE_LAYER_NORM=fused.*{reason}"):
        FusedLayerNorm(8)(torch.randn(2, 8))
    if triton_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        set_attention_impl("fused")  # re-resolve under the interpreter
        with pytest.raises(RuntimeError, match="dtype torch.float64"):
            MultiheadSelfAttention(32, 2).double()(torch.randn(2, 5, 32, dtype=torch.float64))


def test_switches_validate_and_read_the_environment_once(monkeypatch, kernel_switches):
    from one_peace.models.kernels import invalidate_kernel_caches, requested_attention_impl, requested_layer_norm_impl

    set_attention_impl, set_layer_norm_impl = kernel_switches
    with pytest.raises(ValueError, match="attention impl"):
        set_attention_impl("flash")
    with pytest.raises(ValueError, match="layer norm impl"):
        set_layer_norm_impl("apex")
    monkeypatch.setenv("ONE_PEACE_ATTENTION", "reference")
    monkeypatch.setenv("ONE_PEACE_LAYER_NORM", "Fused")
    invalidate_kernel_caches()
    assert requested_attention_impl() == "reference" and requested_layer_norm_impl() == "fused"
    monkeypatch.setenv("ONE_PEACE_ATTENTION", "bogus")  # not read again until invalidated
    assert requested_attention_impl() == "reference"
    set_attention_impl("sdpa")  # the forced choice wins over the environment
    assert requested_attention_impl() == "sdpa"
    set_attention_impl(None)
    with pytest.raises(ValueError, match="ONE_PEACE_ATTENTION must be one of"):
        requested_attention_impl()
    monkeypatch.delenv("ONE_PEACE_ATTENTION")
    monkeypatch.delenv("ONE_PEACE_LAYER_NORM")
    invalidate_kernel_caches()
    assert requested_attention_impl() == "auto" and requested_layer_norm_impl() == "auto"


def test_modules_resolve_once_until_a_switch_changes(monkeypatch, kernel_switches):
    """MultiheadSelfAttention and FusedLayerNorm resolve on their first forward and then per
    (device type, dtype, dropout active) key; set_attention_impl invalidates every cache."""
    from one_peace.models import attention as A
    from one_peace.models.kernels import FusedLayerNorm
    from one_peace.models.kernels import switches as S

    set_attention_impl, _ = kernel_switches
    resolved, requested_ln = [], []
    real_select, real_ln = A.select_attention_impl, S.requested_layer_norm_impl
    monkeypatch.setattr(A, "select_attention_impl",
                        lambda q, p=0.0, bias=None: resolved.append(q.dtype) or real_select(q, p, bias))
    monkeypatch.setattr(S, "requested_layer_norm_impl", lambda: requested_ln.append(1) or real_ln())
    attn, ln = A.MultiheadSelfAttention(32, 2, dropout=0.1).eval(), FusedLayerNorm(32)
    x = torch.randn(2, 5, 32)
    for _ in range(3):
        attn(x)
        ln(x)
    assert resolved == [torch.float32] and requested_ln == [1]
    attn.double()(x.double())
    ln.double()(x.double())
    assert resolved == [torch.float32, torch.float64] and len(requested_ln) == 2
    attn.train()(x.double())  # dropout becomes active: a new key
    assert len(resolved) == 3
    attn(x.double())
    set_attention_impl("sdpa")
    attn(x.double())
    ln(x.double())
    assert len(resolved) == 4 and len(requested_ln) == 3


class _FakeAdapter(torch.nn.Module):
    """Just what the fusion encoder reads from an adapter: its tables and the dense lookup."""

    def __init__(self, buckets, heads, tables, seed):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.rel_pos_table_list = torch.nn.ModuleList(torch.nn.Embedding(buckets, heads) for _ in range(tables))
        for t in self.rel_pos_table_list:
            t.weight.data = torch.randn(buckets, heads, generator=gen)

    @property
    def num_tables(self):
        return len(self.rel_pos_table_list)

    def rel_bias_from_bucket(self, bucket, layer_idx):
        from one_peace.models.adapters.base import ModalityAdapter

        return ModalityAdapter.rel_bias_from_bucket(self, bucket, layer_idx)


@pytest.mark.parametrize("layout", ["single", "single_per_sample", "vl", "frames_and_none", "per_layer_tables"])
def test_bucketed_bias_equals_dense_layer_bias(tiny_pretrain, layout):
    """FusionEncoder.bucket_layout + bucketed_bias describe exactly the dense layer_bias:
    one input; per-sample buckets; two modalities (combined table + zero row); several
    inputs sharing one adapter (video frames) next to one without rel-pos bias; one
    table per layer.  Gradients reach every table identically."""
    from one_peace.models.adapters.base import AdapterOutput

    fusion = tiny_pretrain.encoder_wrapper.fusion_model
    B, H = 3, 4
    gen = torch.Generator().manual_seed(0)
    text = _FakeAdapter(10, H, 2 if layout == "per_layer_tables" else 1, seed=1)
    image = _FakeAdapter(7, H, 2 if layout == "per_layer_tables" else 1, seed=2)

    def inp(adapter, seq, buckets, per_sample=False, bucket=True):
        shape = (B, seq, seq) if per_sample else (seq, seq)
        return AdapterOutput(torch.zeros(B, seq, 8), torch.zeros(B, seq, dtype=torch.bool),
                             torch.randint(0, buckets, shape, generator=gen) if bucket else None, adapter)

    inputs = {
        "single": [inp(image, 6, 7)],
        "single_per_sample": [inp(text, 5, 10, per_sample=True)],
        "vl": [inp(text, 5, 10), inp(image, 6, 7)],
        "frames_and_none": [inp(text, 4, 10, per_sample=True), inp(image, 6, 7), inp(image, 6, 7),
                            inp(text, 3, 10, bucket=False)],
        "per_layer_tables": [inp(text, 5, 10), inp(image, 6, 7, per_sample=True)],
    }[layout]
    length = sum(i.x.size(1) for i in inputs)
    bucket_layout = fusion.bucket_layout(inputs, length)
    index = bucket_layout[0]
    assert index.dtype == torch.int32 and index.is_contiguous()
    for layer_idx in range(2):
        dense = fusion.layer_bias(inputs, layer_idx, length)
        bucketed = fusion.bucketed_bias(bucket_layout, layer_idx)
        got = bucketed.dense()
        assert torch.equal(got.expand_as(dense), dense) and got.shape[1:] == dense.shape[1:]
        weight = torch.randn(dense.shape, generator=gen)
        params = [p for a in (text, image) for p in a.parameters()]
        g_dense = torch.autograd.grad((dense * weight).sum(), params, allow_unused=True)
        g_bucketed = torch.autograd.grad((got.expand_as(dense) * weight).sum(), params, allow_unused=True)
        for a, b in zip(g_dense, g_bucketed):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b)
    assert fusion.bucket_layout([inp(text, 5, 10, bucket=False)], 5) is None


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
