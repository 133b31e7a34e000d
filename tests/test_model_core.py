"""Model core behaviour: sizes, attention paths, checkpointing, dtypes, input validation."""
import json

import pytest
import torch
from helpers import assert_scaled_close, load_fixture
from omegaconf import OmegaConf

from one_peace.models import OnePeacePretrainModel, OnePeaceRetrievalConfig, OnePeaceRetrievalModel
from one_peace.models.architectures import preset_config
from one_peace.models.attention import attention_core, reference_attention, set_attention_impl
from one_peace.models.checkpoint import load_into


def test_released_4b_model_size_on_meta_device():
    cfg = preset_config(OnePeaceRetrievalConfig, "4b")
    with torch.device("meta"):
        model = OnePeaceRetrievalModel(cfg, head_type="val", vocab_size=50264)
    assert sum(p.numel() for p in model.parameters()) == 3_884_740_545
    fusion = model.encoder_wrapper.fusion_model
    vision = sum(p.numel() for n, p in fusion.layers.named_parameters()
                 if not any(f"{m}_ffn" in n for m in ("text", "audio")))
    assert vision == 1_511_178_240


@pytest.fixture(scope="module")
def tiny_pretrain(fixtures_dir):
    cfg = json.loads((fixtures_dir / "config.json").read_text())["pretrain_cfg_image_text"]["model"]
    model = OnePeacePretrainModel(OmegaConf.create(cfg), vocab_size=256)
    return load_into(model, load_fixture("pretrain_state_dict.pt")).eval()


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_attention_paths_agree_with_official_outputs(tiny_pretrain, impl):
    inputs, ref = load_fixture("inputs.pt"), load_fixture("encoder_outputs.pt")
    set_attention_impl(impl)
    try:
        with torch.no_grad():
            _, feats = tiny_pretrain(src_audios=inputs["src_audios"], audio_padding_masks=inputs["audio_padding_masks"],
                                     encoder_type="audio")
    finally:
        set_attention_impl(None)
    assert_scaled_close(feats, ref['audio_features'], rel=1e-05)


def test_attention_core_padding_and_bias_gradients():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    bias = torch.randn(1, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 4:] = True
    out = attention_core(q, k, v, bias, pad)
    # padded keys get exactly zero weight
    v2 = v.detach().clone()
    v2[1, :, 4:] = 1e6
    torch.testing.assert_close(attention_core(q, k, v2, bias, pad)[1], out[1].detach())
    grads = torch.autograd.grad(out.sum(), (q, k, v, bias))
    set_attention_impl("sdpa")
    try:
        out32 = attention_core(*(t.float() for t in (q, k, v, bias)), pad)
    finally:
        set_attention_impl(None)
    assert_scaled_close(out32.double(), out, rel=1e-05)
    assert all(torch.isfinite(g).all() for g in grads)
    explicit = reference_attention(q, k, v, bias.masked_fill(pad[:, None, None, :], float("-inf")))
    torch.testing.assert_close(explicit, out)


def test_activation_checkpointing_gives_same_gradients(fixtures_dir):
    cfg = json.loads((fixtures_dir / "config.json").read_text())["pretrain_cfg_image_text"]["model"]
    inputs = load_fixture("inputs.pt")
    grads = []
    for flag in (False, True):
        cfg_flag = OmegaConf.create(cfg)
        cfg_flag.encoder.checkpoint_activations = flag
        model = load_into(OnePeacePretrainModel(cfg_flag, vocab_size=256), load_fixture("pretrain_state_dict.pt"))
        model.train()
        emb, _ = model(src_audios=inputs["src_audios"], audio_padding_masks=inputs["audio_padding_masks"],
                       encoder_type="audio")
        emb.square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert_scaled_close(grads[1][name], grads[0][name], rel=1e-5, msg=name)


def test_input_validation(tiny_pretrain):
    with pytest.raises(ValueError, match="needs src_images"):
        tiny_pretrain(src_tokens=torch.tensor([[5, 2]]), encoder_type="vl")
    with pytest.raises(ValueError, match="encoder_type"):
        tiny_pretrain(src_tokens=torch.tensor([[5, 2]]), encoder_type="val")
    with pytest.raises(ValueError, match="rel_bucket_size"):
        tiny_pretrain(src_images=torch.zeros(1, 3, 64, 64), encoder_type="image")
    with pytest.raises(TypeError, match="integer"):
        tiny_pretrain(src_tokens=torch.tensor([[5.0, 2.0]]), encoder_type="text")


def test_image_abs_positions_interpolate_for_other_sizes(fixtures_dir):
    """pos_embed is bucket 3 (48 px) but the fixture runs 32 px: resized every forward."""
    from one_peace.models.adapters.image import resize_grid_pos_embed

    table = torch.randn(10, 4)
    out = resize_grid_pos_embed(table, 2)
    assert out.shape == (5, 4) and torch.equal(out[0], table[0])
    assert torch.equal(resize_grid_pos_embed(table, 3), table)


def test_padding_frames_pass_no_gradient_unless_official_behaviour_is_asked_for(fixtures_dir):
    """Frames computed from zero padding go through zero-variance LayerNorms; the official code
    lets the conv positions back-propagate into them, inflating gradients by orders of magnitude."""
    cfg = json.loads((fixtures_dir / "config.json").read_text())["pretrain_cfg_image_text"]["model"]
    inputs = load_fixture("inputs.pt")
    mask = inputs["audio_padding_masks"]
    padded_frames = int(mask[1].sum())
    assert padded_frames > 4  # the fixture's second clip is padded
    results = {}
    for block in (True, False):
        cfg["encoder"]["audio_adapter"]["block_padding_gradient"] = block
        model = load_into(OnePeacePretrainModel(OmegaConf.create(cfg), vocab_size=256),
                          load_fixture("pretrain_state_dict.pt")).eval()
        audio = inputs["src_audios"].clone().requires_grad_()
        _, feats = model(src_audios=audio, audio_padding_masks=mask, encoder_type="audio")
        feats.sum().backward()
        results[block] = feats.detach(), audio.grad
    torch.testing.assert_close(results[True][0], results[False][0], atol=0, rtol=0)  # same forward
    # Waveform samples that only feed padded frames (320 samples per frame, 400-sample receptive field).
    inside_padding = slice(-(padded_frames - 2) * 320, None)
    assert torch.count_nonzero(results[True][1][1, inside_padding]) == 0
    assert results[False][1][1, inside_padding].abs().sum() > 0
    # The clip without padding is unaffected; the padded one gets sane gradients only when blocked.
    torch.testing.assert_close(results[True][1][0], results[False][1][0])
    assert results[False][1][1].abs().sum() > 50 * results[True][1][1].abs().sum()


def test_fairseq_nan_detector_names_the_first_module_with_a_nan(fixtures_dir, caplog):
    """fairseq's NaN diagnosis (forward and backward hooks on every module) runs through our
    modules' outputs and reports where the NaN first appears."""
    import logging

    from fairseq.nan_detector import NanDetector

    cfg = json.loads((fixtures_dir / "config.json").read_text())["pretrain_cfg_image_text"]["model"]
    model = load_into(OnePeacePretrainModel(OmegaConf.create(cfg), vocab_size=256), load_fixture("pretrain_state_dict.pt"))
    inputs = load_fixture("inputs.pt")
    audios = inputs["src_audios"].clone()
    audios[0, 50:60] = float("nan")
    with caplog.at_level(logging.WARNING, logger="fairseq.nan_detector"):
        with NanDetector(model):
            emb, feats = model(src_audios=audios, audio_padding_masks=inputs["audio_padding_masks"],
                               encoder_type="audio")
            (emb.sum() + feats.sum()).backward()
            text = model(src_tokens=inputs["src_tokens"], src_images=inputs["src_images"], encoder_type="vl")
            assert torch.isfinite(text[0]).all()
    assert "NaN detected in output of encoder_wrapper.audio_adapter.embed_audios" in caplog.text


def test_forward_intermediates_and_named_methods(tiny_pretrain):
    """forward_intermediates returns each chosen layer's tokens (the last one, through the final
    LayerNorm, equals the regular pass), image maps as NCHW; encode_* equal the flag-driven forward."""
    inputs = load_fixture("inputs.pt")
    images = inputs["src_images"]
    with torch.no_grad():
        layers = tiny_pretrain.forward_intermediates("image", indices=[0, -1], src_images=images)
        normed = tiny_pretrain.forward_intermediates("image", indices=1, norm=True, src_images=images)
        maps = tiny_pretrain.forward_intermediates("image", indices=1, output_fmt="NCHW", src_images=images)
        emb, feats = tiny_pretrain(src_images=images, encoder_type="image")
        encoded = tiny_pretrain.encode_image(images)
        text = tiny_pretrain.encode_text(inputs["src_tokens"])
        text_ref, _ = tiny_pretrain(src_tokens=inputs["src_tokens"], encoder_type="text")
    grid = images.size(-1) // 16
    assert [t.shape for t in layers["image"]] == [feats.shape, feats.shape]
    assert torch.equal(normed["image"][0], feats)
    assert not torch.equal(layers["image"][1], feats)  # without the final LayerNorm
    assert maps["image"][0].shape == (images.size(0), feats.size(-1), grid, grid)
    assert torch.equal(maps["image"][0].flatten(2).transpose(1, 2), layers["image"][1][:, 1:])
    assert torch.equal(encoded, emb) and torch.equal(text, text_ref)
    assert tiny_pretrain.logit_scale_exp().item() == pytest.approx(tiny_pretrain(return_logit_scale=True).item())
