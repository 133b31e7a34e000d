"""The fused kernels inside the model: the tiny fixture model on the interpreter against the official
outputs and the plain-torch gradients, the opt-in dispatch (``ONE_PEACE_ATTENTION``, ``ONE_PEACE_LAYER_NORM``,
resolved once), and the bucketed bias against the dense layer bias.  The kernels alone: ``test_kernels.py``."""

import pytest
import torch
from helpers import assert_scaled_close

from one_peace.models.kernels import (
    fused_attention,
    fused_attention_bucketed,
    fused_attention_supported,
    triton_available,
)


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
