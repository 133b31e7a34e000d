"""Loading without initialising what the checkpoint provides (models/deferred_init.py, issue #13).

The hub, ``one-peace-evaluate`` and fairseq's ``load_model_ensemble_and_task`` build the model
with its initialisation deferred, adopt the checkpoint's tensors, and initialise only
the parts the checkpoint lacks.  The result must equal the eager path bit for bit, and the same
errors must be raised for checkpoints that do not fit.
"""
import json

import pytest
import torch
from helpers import FIXTURES, load_fixture, scaled_error
from test_deferred_init import ParameterWrites, init_functions_unpatched

from one_peace import from_pretrained
from one_peace.models.checkpoint import CheckpointMismatchError, load_into


@pytest.fixture(scope="module")
def retrieval_checkpoint(tmp_path_factory):
    from test_evaluate import write_retrieval_checkpoint

    return str(write_retrieval_checkpoint(tmp_path_factory.mktemp("fast") / "retrieval.pt"))


def eager_model(checkpoint, model_cls, **kwargs):
    """The eager path: build (with initialisation), then copy the checkpoint in."""
    from omegaconf import OmegaConf

    state = torch.load(checkpoint, weights_only=True)
    model = model_cls(OmegaConf.create(state["cfg"]["model"]), vocab_size=256, **kwargs)
    return load_into(model, state["model"]).eval()


def test_no_initialiser_runs_for_weights_the_checkpoint_holds(retrieval_checkpoint, fixture_bpe_dir):
    with ParameterWrites() as writes:
        hub = from_pretrained(retrieval_checkpoint, device="cpu", dtype="float32", bpe_dir=fixture_bpe_dir)
    assert writes.targets == [] and init_functions_unpatched()
    # and the model equals the eager path bit for bit
    from one_peace.models import OnePeaceRetrievalModel

    eager = eager_model(retrieval_checkpoint, OnePeaceRetrievalModel, head_type="val")
    got, want = hub.model.state_dict(), eager.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key


def test_fresh_parts_alone_are_initialised_as_the_eager_build_does(fixture_bpe_dir, tmp_path):
    """A classification model from a pretraining checkpoint: only the new head is initialised."""
    cfg = json.loads((FIXTURES / "config.json").read_text())["classify_cfgs"]
    name, classify_cfg = next((k, v) for k, v in cfg.items() if v["task"].get("head_type") == "audio")
    weights = load_fixture("pretrain_state_dict.pt")
    path = tmp_path / "pretrain_as_classify.pt"
    torch.save({"cfg": classify_cfg, "model": weights}, path)
    with ParameterWrites() as writes:
        hub = from_pretrained(str(path), model_type="one_peace_classify", device="cpu", bpe_dir=fixture_bpe_dir)
    head = {p.untyped_storage().data_ptr() for p in hub.model.classify_head.parameters()}
    initialised = {t.untyped_storage().data_ptr() for t in writes.targets}
    assert initialised and initialised <= head, f"{name}: initialisers ran outside the new head"
    # the head starts like an eager build's: LayerNorms at 1/0, Linear biases 0, weights ~0.02 std
    classifier = hub.model.classify_head.classifier
    assert torch.equal(classifier[1].weight, torch.ones_like(classifier[1].weight))
    assert torch.equal(classifier[0].bias, torch.zeros_like(classifier[0].bias))
    assert 0.005 < classifier[0].weight.std() < 0.03
    # everything else is the checkpoint's
    for key, value in hub.model.state_dict().items():
        if not key.startswith("classify_head.") and key in weights:
            assert torch.equal(value, weights[key]), key


def test_bf16_load_equals_casting_the_eager_model(retrieval_checkpoint, fixture_bpe_dir):
    from one_peace.models import OnePeaceRetrievalModel

    hub = from_pretrained(retrieval_checkpoint, device="cpu", dtype="bfloat16", bpe_dir=fixture_bpe_dir)
    eager = eager_model(retrieval_checkpoint, OnePeaceRetrievalModel, head_type="val").to(torch.bfloat16)
    for key, value in eager.state_dict().items():
        assert torch.equal(hub.model.state_dict()[key], value), key
    assert all(p.dtype == torch.bfloat16 for p in hub.model.parameters())


def test_bf16_embeddings_within_bf16_tolerance_of_fp32(retrieval_checkpoint, fixture_bpe_dir):
    inputs = load_fixture("inputs.pt")
    out = {}
    for dtype in ("float32", "bfloat16"):
        hub = from_pretrained(retrieval_checkpoint, device="cpu", dtype=dtype, bpe_dir=fixture_bpe_dir)
        out[dtype] = (hub.extract_text_features(inputs["src_tokens"]).float(),
                      hub.extract_image_features(inputs["src_images"].to(hub.dtype)).float(),
                      hub.extract_audio_features(inputs["src_audios"].to(hub.dtype), inputs["audio_padding_masks"]).float())
    for fp32, bf16 in zip(out["float32"], out["bfloat16"]):
        assert scaled_error(bf16, fp32) < 0.05  # bf16 keeps 8 bits of mantissa
        assert (torch.nn.functional.cosine_similarity(bf16, fp32, dim=-1) > 0.995).all()


def test_checkpoints_that_do_not_fit_still_raise_on_the_deferred_path(retrieval_checkpoint, fixture_bpe_dir,
                                                                      tmp_path):
    state = torch.load(retrieval_checkpoint, weights_only=True)
    broken = dict(state, model={k: v for k, v in state["model"].items() if "layers.1.self_attn.q_proj" not in k})
    path = tmp_path / "broken.pt"
    torch.save(broken, path)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys .*layers\.1\.self_attn\.q_proj"):
        from_pretrained(str(path), device="cpu", bpe_dir=fixture_bpe_dir)
    extra = dict(state, model=dict(state["model"], **{"encoder_wrapper.bogus.weight": torch.zeros(2)}))
    torch.save(extra, path)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys .*bogus"):
        from_pretrained(str(path), device="cpu", bpe_dir=fixture_bpe_dir)


def test_fairseq_train_start_detection_and_never_loaded_fallback(tmp_path, caplog):
    """``fairseq-train`` builds deferred exactly when it will load a checkpoint (read from the
    config as fairseq's load_checkpoint reads it); a deferred model that is never loaded
    initialises everything at its first forward instead of running on garbage."""
    from omegaconf import OmegaConf

    from one_peace.models import OnePeaceRetrievalModel
    from one_peace.models.architectures import preset_config
    from one_peace.models.config import OnePeaceRetrievalConfig
    from one_peace.models.deferred_init import awaiting_load, build_for_loading, checkpoint_to_be_loaded, memory_map_for

    ckpt = tmp_path / "pretrained.pt"
    ckpt.write_bytes(b"x")
    root = OmegaConf.create({"checkpoint": {"save_dir": str(tmp_path / "run"), "restore_file": "checkpoint_last.pt",
                                            "finetune_from_model": None}, "model": {"_name": "x"}})
    assert checkpoint_to_be_loaded(root.model) is None
    root.checkpoint.finetune_from_model = str(ckpt)
    assert checkpoint_to_be_loaded(root.model) == str(ckpt)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint_last.pt").write_bytes(b"x")
    assert checkpoint_to_be_loaded(root.model) == str(tmp_path / "run" / "checkpoint_last.pt")

    cfg = preset_config(OnePeaceRetrievalConfig, "tiny")
    torch.manual_seed(0)
    model = build_for_loading(lambda: OnePeaceRetrievalModel(cfg, head_type="text", vocab_size=256), root.model)
    assert hasattr(model, "_deferred_init")
    last = str(tmp_path / "run" / "checkpoint_last.pt")
    assert not memory_map_for(last)  # only while fairseq's Trainer.load_checkpoint reads it for this model
    with awaiting_load(model, last):
        assert memory_map_for(last)
    with caplog.at_level("WARNING"):
        emb = model.encode_text(torch.tensor([[5, 6, 2]]))
    assert "none was loaded before its first forward" in caplog.text and torch.isfinite(emb).all()
    assert not hasattr(model, "_deferred_init")
    with awaiting_load(model, last):
        assert not memory_map_for(last)  # filled: awaits nothing
    layer_norm = model.encoder_wrapper.fusion_model.text_layer_norm
    assert torch.equal(layer_norm.weight, torch.ones_like(layer_norm.weight))
    assert 0.01 < model.text_proj.weight.std() < 0.03
