"""Pretraining parity: student forwards, every loss term and the gradients of the totals."""
import json

import pytest
import torch
from omegaconf import OmegaConf

from conftest import load_fixture
from one_peace.criterions.pretrain_loss import (AudioTextPretrainLossConfig, AudioTextPretrainLossCriterion,
                                                ImageTextPretrainLossConfig, ImageTextPretrainLossCriterion)
from one_peace.models import OnePeacePretrainModel
from one_peace.models.checkpoint import load_into

CASES = {
    "image_text": (ImageTextPretrainLossCriterion, ImageTextPretrainLossConfig, ("src_images",)),
    "audio_text": (AudioTextPretrainLossCriterion, AudioTextPretrainLossConfig,
                   ("src_audios", "audio_padding_masks")),
}


@pytest.fixture()
def model(fixtures_dir):
    cfg = json.loads((fixtures_dir / "config.json").read_text())["pretrain_cfg_image_text"]["model"]
    # The official gradients include what flows into frames computed from zero padding.
    cfg["encoder"]["audio_adapter"]["block_padding_gradient"] = False
    model = OnePeacePretrainModel(OmegaConf.create(cfg), vocab_size=256)
    return load_into(model, load_fixture("pretrain_state_dict.pt")).eval()


def sample_for(kind):
    inputs, losses = load_fixture("inputs.pt"), load_fixture("pretrain_losses.pt")
    net_input = {"src_tokens": inputs["src_tokens"], **{k: inputs[k] for k in CASES[kind][2]}, **losses["masks"]}
    return {"nsentences": 3, "net_input": net_input}


def test_student_forwards_match(model):
    inputs, ref = load_fixture("inputs.pt"), load_fixture("pretrain_losses.pt")
    masks = ref["masks"]
    calls = {
        "text": dict(src_tokens=inputs["src_tokens"], text_preserve_ids=masks["text_preserve_ids"]),
        "image": dict(src_images=inputs["src_images"], image_preserve_ids=masks["image_preserve_ids"]),
        "vl": dict(src_tokens=inputs["src_tokens"], src_images=inputs["src_images"],
                   text_preserve_ids=masks["vl_text_preserve_ids"], image_preserve_ids=masks["vl_image_preserve_ids"]),
        "audio": dict(src_audios=inputs["src_audios"], audio_padding_masks=inputs["audio_padding_masks"],
                      audio_preserve_ids=masks["audio_preserve_ids"]),
        "al": dict(src_tokens=inputs["src_tokens"], src_audios=inputs["src_audios"],
                   audio_padding_masks=inputs["audio_padding_masks"], text_preserve_ids=masks["al_text_preserve_ids"],
                   audio_preserve_ids=masks["al_audio_preserve_ids"]),
    }
    for call, kwargs in calls.items():
        with torch.no_grad():
            out = model.forward_student(encoder_type=call, **kwargs)
            heads = model(encoder_type=call, **kwargs)
        heads = heads if isinstance(heads, tuple) else (heads,)
        for (modality, got), head in zip(out.items(), heads):
            want = ref["student"][call]
            torch.testing.assert_close(got["encoder_features"],
                                       want[f"{modality}_encoder_features(preserved_tokens_only)"], atol=1e-5, rtol=0)
            torch.testing.assert_close(got["mask_head_output"], want[f"{modality}_mask_head_output"], atol=1e-5, rtol=0)
            assert torch.equal(head, got["mask_head_output"])


@pytest.mark.parametrize("kind", ["image_text", "audio_text"])
@pytest.mark.parametrize("smoothing", [0.1, 0.0])
def test_losses_match(model, kind, smoothing):
    criterion_cls, cfg_cls, _ = CASES[kind]
    criterion = criterion_cls(cfg_cls(label_smoothing=smoothing), task=None)
    with torch.no_grad():
        _, sample_size, log = criterion(model, sample_for(kind))
    ref = load_fixture("pretrain_losses.pt")["losses"][kind + ("" if smoothing else "_label_smoothing0")]
    assert sample_size == 1
    for key, value in ref.items():
        assert key in log, key
        assert abs(float(log[key]) - float(value)) <= 1e-5, (key, log[key], float(value))


@pytest.mark.parametrize("kind", ["image_text", "audio_text"])
def test_gradients_match(model, kind):
    criterion_cls, cfg_cls, _ = CASES[kind]
    criterion = criterion_cls(cfg_cls(label_smoothing=0.1), task=None)
    loss, _, _ = criterion(model, sample_for(kind))
    loss.backward()
    ref = load_fixture("pretrain_loss_grads.pt")[f"{kind}_total_loss"]
    params = dict(model.named_parameters())
    with_grad = {n for n, p in params.items() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == set(ref["l2_norm"]), with_grad ^ set(ref["l2_norm"])
    for name, norm in ref["l2_norm"].items():
        got = params[name].grad
        assert abs(got.norm().item() - float(norm)) <= 1e-4 * max(float(norm), 1e-6), name
        assert abs(got.sum().item() - float(ref["sum"][name])) <= 1e-4 * max(got.abs().sum().item(), 1e-6), name
    for name, full in ref["full"].items():
        torch.testing.assert_close(params[name].grad, full, atol=1e-4, rtol=0, msg=name)
