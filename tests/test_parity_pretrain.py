"""Pretraining parity: student forwards, every loss term and the gradients of the totals."""
import json

import pytest
import torch
from helpers import assert_logging_output, assert_scaled_close, load_fixture
from omegaconf import OmegaConf

from one_peace.criterions.pretrain_loss import (
    AudioTextPretrainLossConfig,
    AudioTextPretrainLossCriterion,
    ImageTextPretrainLossConfig,
    ImageTextPretrainLossCriterion,
)
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
            assert_scaled_close(got['encoder_features'], want[f'{modality}_encoder_features(preserved_tokens_only)'], rel=1e-05)
            assert_scaled_close(got['mask_head_output'], want[f'{modality}_mask_head_output'], rel=1e-05)
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
    assert_logging_output(log, ref, rel=0)


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
        assert_scaled_close(params[name].grad, full, rel=0.0001, msg=name)


def shared_front_end_views(kind):
    """(the modality's inputs, the call that embeds them once, its net_input key, the criterion's views)."""
    inputs, masks = load_fixture("inputs.pt"), load_fixture("pretrain_losses.pt")["masks"]
    tokens = inputs["src_tokens"]
    if kind == "audio":
        given = dict(src_audios=inputs["src_audios"], audio_padding_masks=inputs["audio_padding_masks"])
        views = [dict(encoder_type="audio"), dict(encoder_type="al", src_tokens=tokens),
                 dict(encoder_type="audio", audio_preserve_ids=masks["audio_preserve_ids"]),
                 dict(encoder_type="al", src_tokens=tokens, text_preserve_ids=masks["al_text_preserve_ids"],
                      audio_preserve_ids=masks["al_audio_preserve_ids"])]
        return given, dict(src_audios=inputs["src_audios"], return_audio_frames=True), "audio_frames", views
    given = dict(src_images=inputs["src_images"])
    views = [dict(encoder_type="image"), dict(encoder_type="vl", src_tokens=tokens),
             dict(encoder_type="image", image_preserve_ids=masks["image_preserve_ids"]),
             dict(encoder_type="vl", src_tokens=tokens, text_preserve_ids=masks["vl_text_preserve_ids"],
                  image_preserve_ids=masks["vl_image_preserve_ids"])]
    return given, dict(src_images=inputs["src_images"], return_image_patches=True), "image_patches", views


@pytest.mark.parametrize("kind, front_end", [("audio", "embed_audios"), ("image", "embed_images")])
def test_views_sharing_one_front_end_pass_equal_separate_passes(model, kind, front_end):
    """The pretraining criteria run the audio front end (stage 2) and the image patch embedding (stage 1)
    once for their four views (the official code runs them per view): same outputs bit for bit, same
    parameter gradients."""
    given, embed_once, key, views = shared_front_end_views(kind)
    calls = []
    module = getattr(model.encoder_wrapper.adapter(kind), front_end)
    hook = module.register_forward_hook(lambda *args: calls.append(1))

    def run(shared):
        model.zero_grad()
        calls.clear()
        embedded = model(**embed_once) if shared else None
        outputs = []
        for view in views:
            out = model(**given, **view, **{key: embedded})
            outputs.extend(out if isinstance(out, tuple) else (out,))
        weights = torch.Generator().manual_seed(0)
        loss = sum((o * torch.randn(o.shape, generator=weights)).sum() for o in outputs)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        assert len(calls) == (1 if shared else len(views))  # the front end ran once for all views
        return [o.detach() for o in outputs], grads

    try:
        separate_out, separate_grads = run(shared=False)
        shared_out, shared_grads = run(shared=True)
    finally:
        hook.remove()
    for a, b in zip(separate_out, shared_out):
        assert torch.equal(a, b)
    assert separate_grads.keys() == shared_grads.keys()
    assert any(front_end in name for name in shared_grads)
    for name, grad in separate_grads.items():
        # Summation order differs (one backward through the front end instead of four): float32 noise.
        assert (shared_grads[name] - grad).norm() <= 1e-5 * grad.norm() + 1e-8, name


def test_image_patches_of_another_batch_are_refused(model):
    images = load_fixture("inputs.pt")["src_images"]
    shared = model(src_images=images, return_image_patches=True)
    assert shared.shape == (images.size(0), (images.size(-1) // 16) ** 2,
                            model.encoder_wrapper.adapter("image").embed_dim)
    with pytest.raises(ValueError, match="image_patches must be"):
        model(src_images=images[:1], image_patches=shared, encoder_type="image")


def test_token_embeddings_of_another_batch_are_refused(model):
    tokens = load_fixture("inputs.pt")["src_tokens"]
    shared = model(src_tokens=tokens, return_token_embeddings=True)
    assert shared.shape == (*tokens.shape, model.encoder_wrapper.adapter("text").embed_dim)
    with pytest.raises(ValueError, match="token_embeddings must be"):
        model(src_tokens=tokens[:, :-1], token_embeddings=shared, encoder_type="text")
