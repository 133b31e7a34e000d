"""Checkpoint loading: fairseq's loader with the user dir, upgrades, and clear errors."""
import json

import pytest
import torch
from fairseq import checkpoint_utils
from helpers import FIXTURES, assert_scaled_close, load_fixture
from omegaconf import OmegaConf

from one_peace.models import OnePeaceClassifyModel, OnePeaceRetrievalModel
from one_peace.models.checkpoint import (
    CheckpointMismatchError,
    load_checkpoint_file,
    load_into,
    resize_image_rel_pos_table,
)


@pytest.fixture(scope="module")
def model_cfg(fixtures_dir):
    return OmegaConf.create(json.loads((fixtures_dir / "config.json").read_text())["retrieval_cfg"]["model"])


@pytest.mark.parametrize("name", ["audio", "vl"])
def test_classify_checkpoints_load_through_fairseq(user_dir, fixture_bpe_dir, name):
    ref = load_fixture(f"classify_{name}.pt")
    inputs = load_fixture("inputs.pt")
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(FIXTURES / f"classify_{name}_checkpoint.pt")], arg_overrides={"bpe_dir": fixture_bpe_dir})
    model = models[0].eval()
    assert cfg.task._name == ref["task"]
    with torch.no_grad():
        logits = model(**{k: inputs[k] for k in ref["call_kwargs"]})
    assert_scaled_close(logits, ref['logits'], rel=1e-05)


def test_shared_table_copied_to_per_layer_tables(model_cfg):
    """A shared-table checkpoint (like one-peace.pt) loads into a copy_rel_pos_table model."""
    state = load_fixture("pretrain_state_dict.pt")
    model = OnePeaceRetrievalModel(model_cfg, head_type="val", vocab_size=256, copy_rel_pos_table=True)
    load_into(model, state)
    shared = state["encoder_wrapper.text_adapter.rel_pos_table_list.0.weight"]
    for table in model.encoder_wrapper.text_adapter.rel_pos_table_list:
        assert torch.equal(table.weight, shared)
    # the omitted 1024x1024 buffers were rebuilt from bucket_size
    crops = load_fixture("rp_bucket_crops.pt")
    assert torch.equal(model.encoder_wrapper.text_adapter.rp_bucket[:112, :112],
                       crops["encoder_wrapper.text_adapter.rp_bucket"])


def test_pretraining_keys_and_absent_modalities_are_pruned(model_cfg):
    state = load_fixture("pretrain_state_dict.pt")
    model = OnePeaceRetrievalModel(model_cfg, head_type="al", vocab_size=256)
    load_into(model, state)  # decoder, mask heads and the image branch are dropped
    assert model.encoder_wrapper.image_adapter is None


def test_new_classification_head_starts_fresh(model_cfg, caplog):
    state = load_fixture("pretrain_state_dict.pt")
    cfg = OmegaConf.merge(model_cfg, {"head_scale_ratio": 2, "attn_pooling": True, "use_pooler": False,
                                      "pooler_dropout": 0.0, "use_image_features": False})
    model = OnePeaceClassifyModel(cfg, head_type="audio", num_classes=7, vocab_size=256)
    with caplog.at_level("WARNING"):
        load_into(model, state)
    assert "classify_head" in caplog.text


def test_wrong_kind_of_checkpoint_lists_keys(model_cfg):
    classify_state = load_fixture("classify_audio_checkpoint.pt")["model"]
    model = OnePeaceRetrievalModel(model_cfg, head_type="audio", vocab_size=256)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys .*classify_head\.norm\.weight"):
        load_into(model, classify_state)


def test_missing_and_misshaped_keys_are_listed(model_cfg):
    state = load_fixture("pretrain_state_dict.pt")
    model = OnePeaceRetrievalModel(model_cfg, head_type="val", vocab_size=256)
    broken = dict(state)
    del broken["encoder_wrapper.fusion_model.layers.1.self_attn.q_proj.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"missing keys .*layers\.1\.self_attn\.q_proj\.weight"):
        load_into(model, broken)
    broken = dict(state)
    broken["text_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointMismatchError, match=r"wrong shapes .*text_proj\.weight: checkpoint \(3, 3\)"):
        load_into(model, broken)


def test_files_that_are_not_checkpoints(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointMismatchError, match="not a ONE-PEACE/fairseq checkpoint"):
        load_checkpoint_file(str(path))
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_checkpoint_file(str(tmp_path / "nothing.pt"))


def test_empty_or_trunkless_state_dicts_are_errors_not_random_models(model_cfg):
    """Only a new classification head (or the documented stage-2 parts) may start fresh."""
    model = OnePeaceRetrievalModel(model_cfg, head_type="val", vocab_size=256)
    with pytest.raises(CheckpointMismatchError, match=r"absent components: .*shared.*text"):
        load_into(model, {})
    state = load_fixture("pretrain_state_dict.pt")
    without_audio = {k: v for k, v in state.items() if "audio_" not in k}
    with pytest.raises(CheckpointMismatchError, match=r"absent components: audio \(only none may start fresh"):
        load_into(model, without_audio)
    classify = OnePeaceClassifyModel(OmegaConf.merge(model_cfg, {"head_scale_ratio": 1, "attn_pooling": False,
                                                                 "use_pooler": False, "pooler_dropout": 0.0,
                                                                 "use_image_features": False}),
                                     head_type="audio", num_classes=3, vocab_size=256)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(42\): .*layers\.0\.self_attn"):
        load_into(classify, {k: v for k, v in state.items() if "fusion_model.layers" not in k})
    with pytest.raises(CheckpointMismatchError, match=r"only classify_head may start fresh"):
        load_into(classify, {})


def test_broken_files_say_what_is_wrong_without_suggesting_pickles(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.zeros(1000)}}, good)
    cases = {"empty.pt": b"", "garbage.pt": b"this is plain text, not a checkpoint",
             "truncated.pt": good.read_bytes()[:600]}
    expected = {"empty.pt": "the file is empty", "garbage.pt": "not a PyTorch checkpoint",
                "truncated.pt": "truncated or corrupt"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=expected[name]) as info:
            load_checkpoint_file(str(tmp_path / name))
        assert name in str(info.value) and "allow_pickle" not in str(info.value)


class Custom:
    pass


def test_arbitrary_pickles_need_opt_in(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"model": {}, "extra": Custom()}, path)
    with pytest.raises(ValueError, match="allow_pickle=True"):
        load_checkpoint_file(str(path))
    assert isinstance(load_checkpoint_file(str(path), allow_pickle=True)["extra"], Custom)


def test_image_rel_pos_table_resize_keeps_special_rows_and_centre():
    table = torch.randn((2 * 2 - 1) ** 2 + 3, 4)
    resized = resize_image_rel_pos_table(table, 3)
    assert resized.shape == ((2 * 3 - 1) ** 2 + 3, 4)
    assert torch.equal(resized[-3:], table[-3:])
    # the zero offset (grid centre) keeps its value: the spline interpolates through the knots
    assert_scaled_close(resized[5 * 5 // 2], table[3 * 3 // 2], rel=1e-05)
