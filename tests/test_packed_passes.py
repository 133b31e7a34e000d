"""Packed views (``model(views=[...])``): the pretraining criteria's views run through the shared layers as one
pass, with the values and gradients of one pass per view."""
import copy
import json

import pytest
import torch
from helpers import load_fixture
from omegaconf import OmegaConf

from one_peace.models import OnePeacePretrainModel
from one_peace.models.checkpoint import load_into
from one_peace.models.components import DropPath
from one_peace.models.fusion_encoder import TransformerEncoderLayer
from one_peace.models.packed_passes import pack


@pytest.fixture()
def model(fixtures_dir):
    cfg = json.loads((fixtures_dir / "config.json").read_text())["pretrain_cfg_image_text"]["model"]
    model = OnePeacePretrainModel(OmegaConf.create(cfg), vocab_size=256)
    return load_into(model, load_fixture("pretrain_state_dict.pt")).double().eval()


def views_of(kind):
    inputs, masks = load_fixture("inputs.pt"), load_fixture("pretrain_losses.pt")["masks"]
    text = dict(src_tokens=inputs["src_tokens"])
    if kind == "image_text":
        other = dict(src_images=inputs["src_images"].double())
        return [dict(text, encoder_type="text"), dict(other, encoder_type="image"),
                dict(text, text_preserve_ids=masks["text_preserve_ids"], encoder_type="text"),
                dict(other, image_preserve_ids=masks["image_preserve_ids"], encoder_type="image"),
                dict(text, **other, text_preserve_ids=masks["vl_text_preserve_ids"],
                     image_preserve_ids=masks["vl_image_preserve_ids"], encoder_type="vl")]
    other = dict(src_audios=inputs["src_audios"].double(), audio_padding_masks=inputs["audio_padding_masks"])
    return [dict(other, encoder_type="audio"),
            dict(other, audio_preserve_ids=masks["audio_preserve_ids"], encoder_type="audio"),
            dict(text, **other, text_preserve_ids=masks["al_text_preserve_ids"],
                 audio_preserve_ids=masks["al_audio_preserve_ids"], encoder_type="al")]


def flat(results):
    out = []
    for r in results:
        out += list(r) if isinstance(r, tuple) else [r]
    return out


def outputs_and_grads(model, compute):
    model.zero_grad(set_to_none=True)
    outputs = flat(compute())
    torch.manual_seed(0)  # the same random weighting of every output for both computations
    sum(torch.randn_like(o).mul(o).sum() for o in outputs).backward()
    return [o.detach() for o in outputs], {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture()
def packed_layer_calls(monkeypatch):
    calls = []
    original = TransformerEncoderLayer._forward_packed

    def counting(self, x, layout, biases):
        calls.append(len(layout.passes))
        return original(self, x, layout, biases)

    monkeypatch.setattr(TransformerEncoderLayer, "_forward_packed", counting)
    return calls


@pytest.mark.parametrize("kind", ["image_text", "audio_text"])
def test_packed_views_match_one_pass_per_view(model, kind, packed_layer_calls):
    views = views_of(kind)
    separate, separate_grads = outputs_and_grads(model, lambda: [model(**v) for v in views])
    assert not packed_layer_calls
    packed, packed_grads = outputs_and_grads(model, lambda: model(views=views))
    # Every encoder layer ran once over all views, every decoder layer once over the student views.
    students = sum(1 for v in views if any(k.endswith("_preserve_ids") for k in v))
    assert packed_layer_calls == ([len(views)] * len(model.encoder_wrapper.fusion_model.layers)
                                  + [students] * len(model.decoder_wrapper.fusion_model.layers))
    assert len(packed) == len(separate)
    for got, want in zip(packed, separate):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert packed_grads.keys() == separate_grads.keys()
    for name, want in separate_grads.items():
        torch.testing.assert_close(packed_grads[name], want, rtol=1e-9, atol=1e-12, msg=name)


def training_without_dropout(model, drop_path=0.0, layerdrop=0.0):
    model.train()
    encoder = model.encoder_wrapper.fusion_model
    encoder.layerdrop = layerdrop
    for layer in encoder.layers:
        layer.drop_path.p = drop_path
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def factors(batch, index, like):
    """Deterministic stand-in for stochastic depth's per-sample factors: every other sample dropped, the pattern
    shifted by the draw's index."""
    return ((torch.arange(batch) + index) % 2).to(like.dtype) * 2.0


def test_stochastic_depth_drops_each_views_samples_whole(model, packed_layer_calls, monkeypatch):
    """Stochastic depth in training: each view's samples are dropped per residual branch, all their rows (both
    segments of a fused view) alike.  Given the same per-sample factors, the packed views equal separate passes."""
    training_without_dropout(model, drop_path=0.5)
    views = views_of("image_text")
    layers = len(model.encoder_wrapper.fusion_model.layers)
    separate = []
    for v, view in enumerate(views):
        # the packed path draws layer by layer, branch by branch, view by view: view v's k-th draw is k * V + v
        draws = iter(range(v, 2 * layers * len(views), len(views)))
        monkeypatch.setattr(DropPath, "sample_scale", lambda self, batch, like, draws=draws: factors(batch, next(draws), like))
        separate += flat([model(**view)])
    packed_draws = iter(range(10 ** 6))
    monkeypatch.setattr(DropPath, "sample_scale", lambda self, batch, like: factors(batch, next(packed_draws), like))
    packed = flat(model(views=views))
    assert next(packed_draws) == 2 * layers * len(views)  # one draw per view and residual branch
    assert packed_layer_calls == [len(views)] * layers + [3] * len(model.decoder_wrapper.fusion_model.layers)
    for got, want in zip(packed, separate):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_layerdrop_runs_the_views_one_by_one(model, packed_layer_calls):
    """layerdrop skips whole layers per pass: in training with it on, the encoder runs the views one after
    another, drawing what separate calls draw."""
    training_without_dropout(model, layerdrop=0.5)
    views = views_of("image_text")
    torch.manual_seed(1)
    separate = flat([model(**v) for v in views])
    torch.manual_seed(1)
    packed = flat(model(views=views))
    # the decoder (no layerdrop) still packs its passes; the encoder does not
    assert packed_layer_calls == [3] * len(model.decoder_wrapper.fusion_model.layers)
    for got, want in zip(packed, separate):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_a_view_is_an_encoder_pass(model):
    with pytest.raises(ValueError, match="return_logit_scale cannot be part of one"):
        model(views=[dict(encoder_type="text", src_tokens=torch.ones(1, 3, dtype=torch.long)),
                     dict(return_logit_scale=True)])
    with pytest.raises(ValueError, match="needs image_preserve_ids"):
        model(views=[dict(encoder_type="vl", src_tokens=torch.ones(1, 3, dtype=torch.long),
                          src_images=torch.zeros(1, 3, 32, 32, dtype=torch.float64),
                          text_preserve_ids=torch.zeros(1, 2, dtype=torch.long))])


def test_backward_assembles_the_packed_gradient_once(model):
    """The layer's gradient through the per-pass attention is put together once.  Slicing each pass's rows out of
    the packed q, k and v made every slice's backward a zero-filled (N, D) matrix, summed over the slices, and
    copying each pass's heads into slices of one buffer cloned the whole gradient per copy: a few percent of a
    bf16 step (docs/BENCHMARKS.md)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    views = views_of("image_text")
    wrapper = model.encoder_wrapper
    x, layout = pack([wrapper.fusion_model._prepare(wrapper.embed(v["encoder_type"], v), modalities)
                      for v, modalities in ((views[0], ["text"]), (views[1], ["image"]), (views[4], ["text", "image"]))])
    x = x.detach().requires_grad_()
    out = wrapper.fusion_model.layers[0](x, layout, [p.bias(0) for p in layout.passes])
    per_slice = {torch.ops.aten.slice_backward, torch.ops.aten.new_empty_strided, torch.ops.aten.fill_,
                 torch.ops.aten.zero_, torch.ops.aten.zeros, torch.ops.aten.new_zeros}
    seen = []

    class FullSizeOps(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            if func.overloadpacket in per_slice and isinstance(result, torch.Tensor) and result.numel() >= x.numel():
                seen.append(str(func))
            return result

    with FullSizeOps():
        out.sum().backward()
    assert seen == []
    assert x.grad.shape == x.shape


def test_a_fused_pass_runs_each_modalitys_ffn_on_one_matrix(model):
    """A fused pass through frozen weights (stage 2's text tower, the hub's model): each segment's FFN multiplies
    one (B * n, D) matrix.  On the (B, n, D) slice, which is not contiguous, torch ran a linear with a weight that
    needs no gradient as a batched matmul over B copies of the weight (3.7% of a base stage-2 step)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    view = views_of("image_text")[4]
    wrapper = model.encoder_wrapper
    x, segments, key_padding_mask, bias_of = wrapper.fusion_model._prepare(wrapper.embed("vl", view), ["text", "image"])
    # bf16, where the batched matmul copies the weight B times (float32 and float64 read it with stride 0)
    layer, x, bias = copy.deepcopy(wrapper.fusion_model.layers[0]).bfloat16(), x.bfloat16(), bias_of(0).bfloat16()
    layer.requires_grad_(False)
    ffn_weight_shapes = {tuple(m.weight.t().shape) for m in layer.modules() if isinstance(m, torch.nn.Linear)}
    batched_weights = []

    class Matmuls(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket is torch.ops.aten.bmm and tuple(args[1].shape[1:]) in ffn_weight_shapes:
                batched_weights.append(tuple(args[1].shape))
            return func(*args, **(kwargs or {}))

    with Matmuls():
        out = layer(x, segments, bias, key_padding_mask)
    assert batched_weights == []
    assert out.shape == x.shape
