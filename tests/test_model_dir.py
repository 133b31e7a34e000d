"""The pickle-free model directory (issue #27): ``one-peace-convert``, ``save_pretrained``, ``from_pretrained(DIR)``
and ``from_pretrained("org/name")`` through the Hugging Face cache; every fixture checkpoint kind gives the outputs
of its ``.pt`` bit for bit, and bad input gets one error naming the file or key."""
import hashlib
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from helpers import FIXTURES, REPO, TASK_FIXTURES, load_fixture, load_task_fixture
from safetensors import safe_open

from one_peace import from_pretrained
from one_peace.hub.convert import convert_checkpoint, main
from one_peace.models.checkpoint import CheckpointMismatchError, load_checkpoint_file
from one_peace.models.model_dir import INDEX_FILE, save_model_dir

INPUTS = None


def inputs():
    global INPUTS
    if INPUTS is None:
        INPUTS = load_fixture("inputs.pt")
    return INPUTS


def _embeddings(hub):
    x = inputs()
    return [hub.extract_text_features(x["src_tokens"]), hub.extract_image_features(x["src_images"]),
            hub.extract_audio_features(x["src_audios"], x["audio_padding_masks"])]


def _fixture_inputs(name):
    """The inputs.pt tensors a classify fixture was called with (its call_kwargs names them)."""
    return {key: inputs()[key] for key in load_fixture(name)["call_kwargs"]}


def _vl_batch(name):
    return load_task_fixture(f"{name}.pt")["batch"]["net_input"]


def _logits(net_input):
    def run(hub):
        with torch.no_grad():
            return [hub.model(**net_input)]
    return run


def _vl_embeddings(hub):
    batch = load_task_fixture("image_text_retrieval.pt")["loss_batch"]["net_input"]
    return [hub.extract_text_features(batch["src_tokens"]), hub.extract_image_features(batch["src_images"])]


# kind -> (checkpoint path, model_type of the .pt load, outputs)
KINDS = {
    "retrieval_val": (None, "one_peace_retrieval", _embeddings),
    "pretrain": (FIXTURES / "pretrain_checkpoint.pt", "one_peace_pretrain", _embeddings),
    "classify_audio": (FIXTURES / "classify_audio_checkpoint.pt", "one_peace_classify",
                       lambda hub: _logits(_fixture_inputs("classify_audio.pt"))(hub)),
    "classify_vl": (FIXTURES / "classify_vl_checkpoint.pt", "one_peace_classify",
                    lambda hub: _logits(_fixture_inputs("classify_vl.pt"))(hub)),
    "retrieval_vl": (TASK_FIXTURES / "ckpt_retrieval.pt", "one_peace_retrieval", _vl_embeddings),
    "image_classify": (TASK_FIXTURES / "ckpt_image_classify.pt", "one_peace_classify",
                       lambda hub: [hub.extract_image_features(load_task_fixture("image_classify.pt")
                                                               ["image_classify"]["batch"]["net_input"]["src_images"])]),
    "image_classify_cls": (TASK_FIXTURES / "ckpt_image_classify_cls.pt", "one_peace_classify",
                           lambda hub: [hub.extract_image_features(inputs()["src_images"])]),
    "nlvr2": (TASK_FIXTURES / "ckpt_nlvr2.pt", "one_peace_classify", lambda hub: _logits(_vl_batch("nlvr2"))(hub)),
    "vqa": (TASK_FIXTURES / "ckpt_vqa.pt", "one_peace_classify", lambda hub: _logits(_vl_batch("vqa"))(hub)),
    "refcoco": (TASK_FIXTURES / "ckpt_refcoco_imgfeat.pt", "one_peace_classify",
                lambda hub: _logits(_vl_batch("refcoco"))(hub)),
}


def _path(kind, retrieval_checkpoint):
    path = KINDS[kind][0]
    return str(path) if path is not None else retrieval_checkpoint


def _assert_same(got, want):
    # The weights are the same bit for bit (``verified``), but a directory's tensors sit at the offsets the
    # safetensors file gives them, not at the allocator's 64-byte boundaries.  On an AVX2 AMD EPYC, a linear
    # over one row (the audio projection of one clip) sums in another order when its weight is not 64-byte
    # aligned, so the outputs can differ in the last bit (a Xeon with AVX-512 gave identical outputs).
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def retrieval_dir(retrieval_checkpoint, fixture_bpe_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "retrieval"
    convert_checkpoint(retrieval_checkpoint, str(out), bpe_dir=fixture_bpe_dir)
    return str(out)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_fixture_kind_converts_and_gives_the_same_outputs(kind, retrieval_checkpoint, fixture_bpe_dir,
                                                                 tmp_path):
    path, model_type, outputs = _path(kind, retrieval_checkpoint), KINDS[kind][1], KINDS[kind][2]
    summary = convert_checkpoint(path, str(tmp_path / "dir"), bpe_dir=fixture_bpe_dir)
    assert summary["verified"] and summary["model_type"] == model_type
    names = set(os.listdir(tmp_path / "dir"))
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "encoder.json", "vocab.bpe",
            "dict.txt"} <= names and not any(n.endswith(".pt") for n in names)
    want = outputs(from_pretrained(path, model_type=model_type, device="cpu", bpe_dir=fixture_bpe_dir))
    hub = from_pretrained(str(tmp_path / "dir"), device="cpu")  # model type and tokenizer from the directory
    assert hub.model_type == model_type
    _assert_same(outputs(hub), want)


def test_a_fairseq_train_checkpoint_keeps_only_the_model(fixture_bpe_dir, tmp_path):
    state = torch.load(TASK_FIXTURES / "ckpt_vqa.pt", weights_only=True)
    first = next(iter(state["model"].values()))
    state.update(optimizer_history=[{"criterion_name": "ClassifyCriterion", "optimizer_name": "AdjustAdam",
                                     "lr_scheduler_state": {"best": 0.5}, "num_updates": 12}],
                 last_optimizer_state={"state": {0: {"exp_avg": torch.ones_like(first)}}, "param_groups": []},
                 extra_state={"epoch": 3, "train_iterator": {"epoch": 3}}, task_state={})
    labels = ["yes", "no", "two", "three", "one", "red"]
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    state["cfg"]["task"]["label_file"] = str(tmp_path / "labels.json")
    torch.save(state, tmp_path / "checkpoint_best.pt")
    assert main([str(tmp_path / "checkpoint_best.pt"), str(tmp_path / "dir"), "--bpe-dir", fixture_bpe_dir]) == 0
    os.remove(tmp_path / "labels.json")  # the directory holds its own copy
    with safe_open(tmp_path / "dir" / "model.safetensors", framework="pt") as fh:
        assert set(fh.keys()) == set(state["model"])
    config = json.loads((tmp_path / "dir" / "config.json").read_text())
    assert set(config) == {"format_version", "model_type", "head_type", "torch_dtype", "model", "task"}
    assert config["model"]["encoder"]["embed_dim"] == 64 and config["task"]["_name"] == "vqa"
    run = _logits(_vl_batch("vqa"))
    want = run(from_pretrained(str(TASK_FIXTURES / "ckpt_vqa.pt"), model_type="one_peace_classify", device="cpu",
                               bpe_dir=fixture_bpe_dir))
    hub = from_pretrained(str(tmp_path / "dir"), device="cpu")
    assert hub.task.label_names == dict(enumerate(labels))
    _assert_same(run(hub), want)


def test_sharded_save_round_trips_with_a_hub_shaped_index(retrieval_dir, tmp_path):
    from huggingface_hub import load_torch_model

    hub = from_pretrained(retrieval_dir, device="cpu")
    hub.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    index = json.loads((tmp_path / "sharded" / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    state = hub.model.state_dict()
    assert set(index["weight_map"]) == set(state)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())
    # huggingface_hub's own sharded loader reads it into a model
    copy = from_pretrained(retrieval_dir, device="cpu").model
    with torch.no_grad():
        for p in copy.parameters():
            p.zero_()
    load_torch_model(copy, tmp_path / "sharded", strict=True)
    assert all(torch.equal(copy.state_dict()[k], v) for k, v in state.items())
    _assert_same(_embeddings(from_pretrained(str(tmp_path / "sharded"), device="cpu")), _embeddings(hub))
    # saving again unsharded removes the shards of the first save
    hub.save_pretrained(tmp_path / "sharded")
    assert sorted(n for n in os.listdir(tmp_path / "sharded") if "safetensors" in n) == ["model.safetensors"]


def test_bfloat16_conversion_loads_in_bfloat16(retrieval_checkpoint, fixture_bpe_dir, tmp_path, capsys):
    out = tmp_path / "bf16"
    assert main([retrieval_checkpoint, str(out), "--dtype", "bfloat16", "--bpe-dir", fixture_bpe_dir]) == 0
    assert "bfloat16" in capsys.readouterr().out
    with safe_open(out / "model.safetensors", framework="pt") as fh:
        dtypes = {fh.get_slice(k).get_dtype() for k in fh.keys()}
    assert {d for d in dtypes if d.startswith(("F", "BF"))} == {"BF16"}  # integer buffers stay integers
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    hub = from_pretrained(str(out), device="cpu", dtype="bfloat16")
    ref = from_pretrained(retrieval_checkpoint, device="cpu", dtype="bfloat16", bpe_dir=fixture_bpe_dir)
    assert all(p.dtype == torch.bfloat16 for p in hub.model.parameters())
    got, want = hub.model.state_dict(), ref.model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    _assert_same(_embeddings(hub), _embeddings(ref))


def test_loading_a_directory_unpickles_nothing(retrieval_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model directory was read through pickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    hub = from_pretrained(retrieval_dir, device="cpu")
    assert hub.extract_text_features(inputs()["src_tokens"]).shape == (3, 64)


def test_the_fairseq_loader_reads_a_directory(retrieval_dir, retrieval_checkpoint, user_dir):
    from fairseq import checkpoint_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task([retrieval_dir])
    assert task.cfg.bpe_dir == retrieval_dir  # the directory's own tokenizer files
    state = load_checkpoint_file(retrieval_checkpoint)["model"]
    got = models[0].state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())


# ---- the Hugging Face cache -------------------------------------------------------------------
def make_hf_cache(cache, repo_id, source_dir, revision="0123456789abcdef0123456789abcdef01234567"):
    """The layout huggingface_hub writes: blobs by hash, snapshots/<commit>/ of links to them, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name in sorted(os.listdir(source_dir)):
        data = open(os.path.join(source_dir, name), "rb").read()
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / name).symlink_to(os.path.join("..", "..", "blobs", blob))
    return snapshot


def test_a_hub_repo_loads_from_the_cache_offline(retrieval_dir, tmp_path):
    from huggingface_hub import scan_cache_dir

    snapshot = make_hf_cache(tmp_path / "hf", "org/one-peace-tiny", retrieval_dir)
    repos = {r.repo_id: r for r in scan_cache_dir(tmp_path / "hf").repos}
    assert {f.file_name for f in next(iter(repos["org/one-peace-tiny"].revisions)).files} == \
        set(os.listdir(retrieval_dir))
    code = ("import torch; from one_peace import from_pretrained; import sys\n"
            "hub = from_pretrained('org/one-peace-tiny', device='cpu')\n"
            "tokens = torch.load(sys.argv[1], weights_only=True)\n"
            "torch.save({'path': hub.task.cfg.bpe_dir, 'text': hub.extract_text_features(tokens)}, sys.argv[2])\n")
    torch.save(inputs()["src_tokens"], tmp_path / "tokens.pt")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hf"))
    env.pop("ONE_PEACE_BPE_DIR", None)
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "tokens.pt"), str(tmp_path / "out.pt")],
                          env=env, cwd=REPO.parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert out["path"] == str(snapshot)
    assert torch.equal(out["text"], from_pretrained(retrieval_dir, device="cpu").extract_text_features(
        inputs()["src_tokens"]))


def test_an_uncached_hub_repo_offline_says_what_to_do(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets when imported
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ValueError, match=r"Hub repo org/not-cached is not in the Hugging Face cache .*"
                                         r"HF_HUB_OFFLINE is set.*hf download org/not-cached"):
        from_pretrained("org/not-cached", device="cpu")
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*missing.pt"):
        from_pretrained(str(tmp_path / "missing.pt"), device="cpu")  # a path, not a repo name


# ---- bad input: one error naming the file or key -------------------------------------------------
def _copy_dir(src, dst):
    os.makedirs(dst)
    for name in os.listdir(src):
        with open(os.path.join(src, name), "rb") as fh, open(os.path.join(dst, name), "wb") as out:
            out.write(fh.read())
    return dst


def test_checkpoints_that_are_not_one_peace_are_refused(tmp_path, fixture_bpe_dir, capsys):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({"model": {"w": torch.ones(2)}}, tmp_path / "nocfg.pt")
    torch.save({"model": {"w": torch.ones(2)}, "cfg": {"model": {"_name": "transformer_lm"}, "task": {}}},
               tmp_path / "lm.pt")
    expected = {"list.pt": "list.pt is not a ONE-PEACE/fairseq checkpoint",
                "nocfg.pt": "nocfg.pt has no saved cfg",
                "lm.pt": "lm.pt is not a ONE-PEACE checkpoint: its cfg.model._name is 'transformer_lm'"}
    for name, message in expected.items():
        assert main([str(tmp_path / name), str(tmp_path / f"out-{name}"), "--bpe-dir", fixture_bpe_dir]) == 2
        err = capsys.readouterr().err
        assert err.startswith("one-peace-convert: error: ") and message in err and err.count("\n") == 1, err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main([str(TASK_FIXTURES / "ckpt_vqa.pt"), str(tmp_path / "busy"), "--bpe-dir", fixture_bpe_dir]) == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err


def test_broken_weight_files_name_the_file(retrieval_dir, tmp_path):
    truncated = _copy_dir(retrieval_dir, tmp_path / "truncated")
    weights = os.path.join(truncated, "model.safetensors")
    data = open(weights, "rb").read()
    open(weights, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read .*truncated/model.safetensors: .*truncated or corrupt"):
        from_pretrained(truncated, device="cpu")
    from_pretrained(retrieval_dir, device="cpu").save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    victim = sorted(n for n in os.listdir(tmp_path / "sharded") if n.startswith("model-"))[1]
    os.remove(tmp_path / "sharded" / victim)
    with pytest.raises(FileNotFoundError, match=rf"{INDEX_FILE} names shard {victim} .* does not exist"):
        from_pretrained(str(tmp_path / "sharded"), device="cpu")


def _edit_config(src, dst, edit, name="config.json"):
    _copy_dir(src, dst)
    path = os.path.join(dst, name)
    config = json.loads(open(path).read())
    edit(config)
    open(path, "w").write(json.dumps(config))
    return str(dst)


def test_a_config_that_does_not_fit_the_weights_is_named(retrieval_dir, tmp_path):
    wider = _edit_config(retrieval_dir, tmp_path / "wider", lambda c: c["model"]["encoder"].update(embed_dim=96))
    with pytest.raises(CheckpointMismatchError, match=r"model.safetensors \(with .*wider/config.json\) does not fit "
                                                      r"OnePeaceRetrievalModel[\s\S]*wrong shapes"):
        from_pretrained(wider, device="cpu")
    classify = _edit_config(retrieval_dir, tmp_path / "classify", lambda c: c.update(model_type="one_peace_classify"))
    with pytest.raises(ValueError, match=r"classify/config.json: model_type 'one_peace_classify' but the weights hold "
                                         r"no classify_head"):
        from_pretrained(classify, device="cpu")
    vl_only = _edit_config(retrieval_dir, tmp_path / "vl", lambda c: c.update(head_type="al"))
    os.remove(os.path.join(vl_only, "model.safetensors"))
    state = load_checkpoint_file(retrieval_dir)["model"]
    save_model_dir(vl_only, {k: v for k, v in state.items() if "audio" not in k},
                   json.loads(open(os.path.join(vl_only, "config.json")).read()))
    with pytest.raises(ValueError, match=r"vl/config.json: head_type 'al' needs the audio branch"):
        from_pretrained(vl_only, device="cpu")
    bad_json = _copy_dir(retrieval_dir, tmp_path / "badjson")
    open(os.path.join(bad_json, "config.json"), "w").write("{not json")
    with pytest.raises(ValueError, match=r"badjson/config.json is not valid JSON"):
        from_pretrained(bad_json, device="cpu")
    pre = _edit_config(retrieval_dir, tmp_path / "pre", lambda c: c.update(image_size=64), "preprocessor_config.json")
    with pytest.raises(ValueError, match=r"preprocessor_config.json: image_size is 64 but .*config.json sets "
                                         r"task.patch_image_size 32"):
        from_pretrained(pre, device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty is a directory without config.json"):
        from_pretrained(str(tmp_path / "empty"), device="cpu")


def test_shared_memory_is_written_as_separate_copies(tmp_path):
    base = torch.arange(12, dtype=torch.float32)
    weights = {"a": base, "b": base, "c": base[:4], "d": torch.ones(3)}
    config = {"format_version": 1, "model_type": "one_peace_retrieval", "model": {}, "task": {}}
    save_model_dir(str(tmp_path / "d"), weights, config)
    from safetensors.torch import load_file

    loaded = load_file(tmp_path / "d" / "model.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())
    assert base.tolist() == list(range(12))  # the source was not touched


def test_model_types_the_hub_does_not_build_convert_and_are_refused_by_name(retrieval_checkpoint, fixture_bpe_dir,
                                                                             tmp_path, capsys):
    state = torch.load(retrieval_checkpoint, weights_only=True)
    weights = {k: v for k, v in state["model"].items() if "image" in k or "fusion_model" in k}
    weights["seg_head.conv_seg.weight"] = torch.randn(4, 8, 1, 1)
    cfg = {"model": dict(state["cfg"]["model"], _name="one_peace_segmentation_tiny"),
           "task": {"_name": "semantic_segmentation", "num_classes": 4, "patch_image_size": 32}}
    torch.save({"cfg": cfg, "model": weights}, tmp_path / "seg.pt")
    assert main([str(tmp_path / "seg.pt"), str(tmp_path / "seg"), "--bpe-dir", fixture_bpe_dir]) == 0
    assert "the hub does not build one_peace_segmentation" in capsys.readouterr().out
    config = json.loads((tmp_path / "seg" / "config.json").read_text())
    assert config["model_type"] == "one_peace_segmentation"
    assert config["model"]["seg_channels"] == 512 and config["model"]["encoder"]["embed_dim"] == 64  # every field
    with pytest.raises(ValueError, match=r"seg/config.json says model_type 'one_peace_segmentation': "
                                         r"from_pretrained builds .*fairseq layer"):
        from_pretrained(str(tmp_path / "seg"), device="cpu")
