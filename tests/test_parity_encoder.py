"""Parity with the official implementation: encoder outputs and intermediates.

The fixture checkpoints are loaded through fairseq's own loader with the user dir,
exactly as users load official checkpoints.
"""
import pytest
import torch
from fairseq import checkpoint_utils
from helpers import FIXTURES, assert_scaled_close, load_fixture

TOL32 = 1e-5
TOL64 = 1e-9


@pytest.fixture(scope="module")
def inputs():
    return load_fixture("inputs.pt")


@pytest.fixture(scope="module")
def pretrain_model(user_dir, fixture_bpe_dir):
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(FIXTURES / "pretrain_checkpoint.pt")], arg_overrides={"bpe_dir": fixture_bpe_dir})
    return models[0].eval()


def run_all_calls(model, inputs, dtype=torch.float32):
    images, audios = inputs["src_images"].to(dtype), inputs["src_audios"].to(dtype)
    masks, tokens = inputs["audio_padding_masks"], inputs["src_tokens"]
    out = {}
    with torch.no_grad():
        out["text_logits"], out["text_features"] = model(src_tokens=tokens, encoder_type="text")
        out["image_logits"], out["image_features"] = model(src_images=images, encoder_type="image")
        out["audio_logits"], out["audio_features"] = model(src_audios=audios, audio_padding_masks=masks,
                                                           encoder_type="audio")
        if dtype == torch.float32:
            out["vl_text_features"], out["vl_image_features"] = model(src_tokens=tokens, src_images=images,
                                                                      encoder_type="vl")
            out["al_text_features"], out["al_audio_features"] = model(
                src_tokens=tokens, src_audios=audios, audio_padding_masks=masks, encoder_type="al")
    return out


def test_encoder_outputs_match_official(pretrain_model, inputs):
    ref = load_fixture("encoder_outputs.pt")
    out = run_all_calls(pretrain_model, inputs)
    for key, value in out.items():
        assert value.shape == ref[key].shape, key
        assert_scaled_close(value, ref[key], rel=TOL32, msg=key)
    with torch.no_grad():
        solo_logits, solo_features = pretrain_model(
            src_audios=ref["audio_solo_src_audios"],
            audio_padding_masks=torch.zeros(1, ref["audio_solo_features"].size(1), dtype=torch.bool),
            encoder_type="audio")
        scale = pretrain_model(return_logit_scale=True)
    assert_scaled_close(solo_logits, ref['audio_solo_logits'], rel=TOL32)
    assert_scaled_close(solo_features, ref['audio_solo_features'], rel=TOL32)
    assert_scaled_close(scale, ref['logit_scale_exp'], rel=TOL32)
    torch.testing.assert_close(pretrain_model.logit_scale.detach(), ref["logit_scale_param"], atol=0, rtol=0)
    assert_scaled_close(scale * out['image_logits'] @ out['text_logits'].T, ref['sim_image_text'], rel=TOL32)
    assert_scaled_close(scale * out['audio_logits'] @ out['text_logits'].T, ref['sim_audio_text'], rel=TOL32)


def test_float64_matches_official_float64_run(fixtures_dir, inputs):
    import json

    from omegaconf import OmegaConf

    from one_peace.models import OnePeacePretrainModel
    from one_peace.models.checkpoint import load_into

    cfg = json.loads((fixtures_dir / "config.json").read_text())["pretrain_cfg_image_text"]["model"]
    model = OnePeacePretrainModel(OmegaConf.create(cfg), vocab_size=len(inputs["dict_symbols"]))
    load_into(model, load_fixture("pretrain_state_dict.pt"))
    model = model.double().eval()
    ref = load_fixture("encoder_outputs_float64.pt")
    out = run_all_calls(model, inputs, dtype=torch.float64)
    assert set(out) == set(ref)
    for key, value in out.items():
        assert value.dtype == torch.float64, key
        assert_scaled_close(value, ref[key], rel=TOL64, msg=key)


def flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Recorder:
    """Forward hooks collecting adapter outputs, stage outputs and per-layer outputs."""

    def __init__(self, model):
        self.records, self.handles = {}, []
        wrapper = model.encoder_wrapper
        for name in ("text", "image", "audio"):
            adapter = getattr(wrapper, f"{name}_adapter")
            if adapter is not None:
                self.handles.append(adapter.register_forward_hook(self.adapter_hook(name)))
        image = wrapper.image_adapter
        if image is not None:
            self.handles.append(image.embed_images.register_forward_hook(self.tensor_hook("image_adapter.embed_images")))
        audio = wrapper.audio_adapter
        if audio is not None:
            self.handles.append(audio.embed_audios[0].register_forward_hook(
                self.tensor_hook("audio_adapter.embed_audios.0(conv_features_BCT)")))
            self.handles.append(audio.embed_audios.register_forward_hook(self.tensor_hook("audio_adapter.embed_audios")))
            self.handles.append(audio.embed_positions.register_forward_hook(
                self.tensor_hook("audio_adapter.embed_positions")))
        self.layer_outputs = []
        for layer in wrapper.fusion_model.layers:
            self.handles.append(layer.register_forward_hook(lambda m, a, out: self.layer_outputs.append(out)))
        self.fusion_inputs = None
        self.handles.append(wrapper.fusion_model.register_forward_pre_hook(self.fusion_hook))

    def adapter_hook(self, name):
        def hook(module, args, out):
            tables = module.num_tables
            bias = torch.stack([out.rel_bias(i)[0] for i in range(tables)]) if out.bucket is not None else None
            self.records[f"{name}_adapter.x"] = out.x
            self.records[f"{name}_adapter.padding_mask"] = out.padding_mask
            self.records[f"{name}_adapter.attn_bias"] = bias
        return hook

    def tensor_hook(self, key):
        def hook(module, args, out):
            self.records[key] = out
        return hook

    def fusion_hook(self, module, args):
        self.fusion_inputs = args

    def close(self):
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("call", ["text", "image", "audio", "vl", "al"])
def test_intermediates_match_official(pretrain_model, inputs, call):
    ref = load_fixture("intermediates.pt")
    ref = flatten(ref[call])
    kwargs = {"text": dict(src_tokens=inputs["src_tokens"]), "image": dict(src_images=inputs["src_images"]),
              "audio": dict(src_audios=inputs["src_audios"], audio_padding_masks=inputs["audio_padding_masks"])}
    call_kwargs = {}
    for part in {"vl": ("text", "image"), "al": ("text", "audio")}.get(call, (call,)):
        call_kwargs.update(kwargs[part])
    recorder = Recorder(pretrain_model)
    try:
        with torch.no_grad():
            pretrain_model(encoder_type=call, **call_kwargs)
            fused_bias = None
            if call == "vl":
                fusion = pretrain_model.encoder_wrapper.fusion_model
                adapters, _ = recorder.fusion_inputs
                pad = torch.cat([a.padding_mask for a in adapters], dim=1)
                length = pad.size(1)
                fused_bias = fusion.layer_bias(adapters, 0, length).expand(pad.size(0), -1, -1, -1)
                fused_bias = fused_bias.masked_fill(pad[:, None, None, :], float("-inf"))
    finally:
        recorder.close()
    got = dict(recorder.records)
    got["fusion_layer_outputs"] = torch.stack(recorder.layer_outputs)
    if fused_bias is not None:
        got["fusion_layer0_self_attn_bias"] = fused_bias
    assert ref, call
    for key, value in ref.items():
        assert key in got, f"{call}: no {key}"
        if value.dtype == torch.bool:
            assert torch.equal(got[key], value), key
        else:
            assert_scaled_close(got[key].float(), value, rel=TOL32, msg=f'{call}.{key}')
