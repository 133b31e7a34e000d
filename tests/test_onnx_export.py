"""one-peace-export: ONNX graphs of the text, image and audio encoders match the torch hub (fp32) within 1e-4,
at several batch sizes; they refuse another checkpoint; bad options are one clear error."""
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from helpers import REPO, write_fixture_media
from search_helpers import index_main, write_checkpoint, write_png, write_wav

from one_peace import from_pretrained
from one_peace.hub.onnx_export import export, main
from one_peace.hub.onnx_runtime import OnnxCheckpointMismatch, OnnxEncoder, checkpoint_identity

TOLERANCE = 1e-4
TEXTS = ["a dog", "an elephant walking slowly through the long grass near the river", "x"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, retrieval_checkpoint, fixture_bpe_dir):
    out = tmp_path_factory.mktemp("onnx")
    graphs = export(retrieval_checkpoint, "text,image,audio", str(out), bpe_dir=fixture_bpe_dir)
    return {os.path.basename(g)[:-len(".onnx")]: g for g in graphs}


@pytest.fixture(scope="module")
def hub(retrieval_checkpoint, fixture_bpe_dir):
    return from_pretrained(retrieval_checkpoint, device="cpu", dtype="float32", bpe_dir=fixture_bpe_dir)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """The fixture's three images and three clips of unequal length, as files."""
    images, audios = write_fixture_media(tmp_path_factory.mktemp("media"))
    return {"text": TEXTS, "image": images, "audio": audios}


@pytest.mark.parametrize("modality", ["text", "image", "audio"])
def test_graph_matches_torch_at_two_batch_sizes(exported, hub, media, retrieval_checkpoint, modality):
    encoder = OnnxEncoder(exported[modality], checkpoint=retrieval_checkpoint, threads=1)
    if modality == "audio":  # clips of unequal length: each must get the embedding it gets alone, as in the hub
        assert len(set((~hub.process("audio", media["audio"])["audio_padding_masks"]).sum(1).tolist())) > 1
    for items in (media[modality], media[modality][1:2]):
        net_input = hub.process(modality, items)
        expected = hub.extract_features(modality, **net_input).numpy()
        got = encoder.embed(**net_input)
        assert got.shape == expected.shape == (len(items), encoder.embed_dim)
        assert np.abs(got - expected).max() <= TOLERANCE
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        # the graph's own preprocessing (its config alone, no torch model) gives the hub's inputs
        assert np.abs(encoder.embed_items(items) - expected).max() <= TOLERANCE


def test_graph_records_its_checkpoint_and_a_dynamic_batch(exported, retrieval_checkpoint):
    identity = checkpoint_identity(retrieval_checkpoint)
    for modality, graph in exported.items():
        model = onnx.load(graph)
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["one_peace.checkpoint_sha256"] == identity["sha256"]
        assert meta["one_peace.modality"] == modality
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        config = json.loads(open(graph[:-len(".onnx")] + ".preprocessing.json").read())
        assert config["checkpoint"]["sha256"] == identity["sha256"] and config["embed_dim"] == 64
    text = json.loads(open(exported["text"][:-len(".onnx")] + ".preprocessing.json").read())
    assert text["inputs"][0] == {"name": "src_tokens", "dtype": "int64", "dynamic_axes": {"0": "batch", "1": "tokens"}}


def test_another_checkpoint_is_refused_naming_the_graph(exported, tmp_path, retrieval_checkpoint):
    other = write_checkpoint(tmp_path / "other.pt", perturb=True)
    with pytest.raises(OnnxCheckpointMismatch) as err:
        OnnxEncoder(exported["image"], checkpoint=other)
    message = str(err.value)
    assert exported["image"] in message and other in message
    assert checkpoint_identity(other)["sha256"][:16] in message
    assert checkpoint_identity(retrieval_checkpoint)["sha256"][:16] in message
    OnnxEncoder(exported["image"], checkpoint=checkpoint_identity(retrieval_checkpoint))  # an identity dict works too


def test_graph_and_config_of_different_exports_are_refused(exported, tmp_path):
    graph = tmp_path / "text.onnx"
    shutil.copy(exported["text"], graph)
    config = json.loads(open(exported["text"][:-len(".onnx")] + ".preprocessing.json").read())
    config["checkpoint"]["sha256"] = "0" * 64
    (tmp_path / "text.preprocessing.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="come from different exports"):
        OnnxEncoder(str(graph))
    os.remove(tmp_path / "text.preprocessing.json")
    with pytest.raises(FileNotFoundError, match="no preprocessing config"):
        OnnxEncoder(str(graph))


def test_bad_inputs_are_clear_errors(exported):
    image = OnnxEncoder(exported["image"])
    with pytest.raises(ValueError, match=r"src_images must be \(B, 3, 32, 32\)"):
        image.embed(src_images=torch.zeros(1, 3, 64, 64))
    text = OnnxEncoder(exported["text"])
    with pytest.raises(ValueError, match="outside the dictionary"):
        text.embed(src_tokens=torch.tensor([[5, 999, 2]]))
    with pytest.raises(ValueError, match="needs src_tokens"):
        text.embed(src_images=torch.zeros(1, 3, 32, 32))


def test_a_modality_the_checkpoint_lacks_is_one_error(tmp_path, fixture_bpe_dir):
    path = tmp_path / "text_image.pt"
    state = torch.load(write_checkpoint(tmp_path / "full.pt"), weights_only=True)
    state["model"] = {k: v for k, v in state["model"].items() if "audio" not in k}
    torch.save(state, path)
    with pytest.raises(ValueError, match="has no audio branch .*--modality text,image"):
        main([str(path), str(tmp_path / "out"), "--modality", "audio", "--bpe-dir", fixture_bpe_dir])
    assert not os.path.exists(tmp_path / "out" / "audio.onnx")


def _cli(*args):
    exe = os.path.join(os.path.dirname(sys.executable), "one-peace-export")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_cli_exports_and_bad_modality_is_one_line(tmp_path, retrieval_checkpoint, fixture_bpe_dir):
    proc = _cli(retrieval_checkpoint, tmp_path / "out", "--modality", "text", "--bpe-dir", fixture_bpe_dir)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["text.onnx", "text.preprocessing.json"]
    OnnxEncoder(str(tmp_path / "out" / "text.onnx"), checkpoint=retrieval_checkpoint)
    proc = _cli(retrieval_checkpoint, tmp_path / "out2", "--modality", "video", "--bpe-dir", fixture_bpe_dir)
    assert proc.returncode == 1
    assert proc.stderr.startswith("one-peace-export: error: --modality 'video': choose from text, image, audio")
    assert "Traceback" not in proc.stderr and not os.path.exists(tmp_path / "out2")


def _index_vectors(index):
    with sqlite3.connect(os.path.join(index, "index.sqlite")) as db:
        rows = db.execute("SELECT path, vector FROM vectors WHERE row IS NULL").fetchall()
    return {os.path.basename(p): np.frombuffer(v, np.float32) for p, v in rows}


def test_index_backend_onnx_gives_the_torch_vectors(exported, tmp_path, capsys, retrieval_checkpoint,
                                                    fixture_bpe_dir):
    files = tmp_path / "files"
    files.mkdir()
    (files / "note.txt").write_text("a dog barking at a cow\n")
    write_wav(files / "tone.wav", 440.0)
    write_wav(files / "long.wav", 220.0, seconds=1.7)
    write_png(files / "red.png", (220, 20, 20))
    vectors = {}
    for backend in ("torch", "onnx"):
        code, summary, err = index_main([tmp_path / backend, files, "--checkpoint", retrieval_checkpoint,
                                         "--bpe-dir", fixture_bpe_dir, "--backend", backend], capsys)
        assert code == 0 and summary["embedded"] == 4, err
        vectors[backend] = _index_vectors(tmp_path / backend)
    assert sorted(os.listdir(tmp_path / "onnx" / "onnx")) == sorted(  # images stay with torch (not faster)
        f"{m}.{ext}" for m in ("audio", "text") for ext in ("onnx", "preprocessing.json"))
    assert vectors["torch"].keys() == vectors["onnx"].keys() and len(vectors["onnx"]) == 4
    for name, vector in vectors["onnx"].items():
        assert np.abs(vector - vectors["torch"][name]).max() <= TOLERANCE, name

    # a graph from another checkpoint in the index's onnx folder is refused, naming it
    other = write_checkpoint(tmp_path / "other.pt", perturb=True)
    index = tmp_path / "other_index"
    code, _, err = index_main([index, files, "--checkpoint", other, "--bpe-dir", fixture_bpe_dir, "--modality",
                               "image"], capsys)
    assert code == 0, err
    os.makedirs(index / "onnx")
    for name in ("text.onnx", "text.preprocessing.json"):
        shutil.copy(os.path.join(os.path.dirname(exported["text"]), name), index / "onnx" / name)
    code, _, err = index_main([index, "--modality", "text", "--backend", "onnx"], capsys)
    assert code == 2 and f"ONNX graph {index / 'onnx' / 'text.onnx'} was exported from checkpoint" in err
    code, _, err = index_main([tmp_path / "bf16", files, "--checkpoint", other, "--bpe-dir", fixture_bpe_dir,
                               "--dtype", "bfloat16", "--backend", "onnx"], capsys)
    assert code == 2 and "--backend onnx runs float32 graphs" in err


def test_a_model_directory_exports_and_is_its_own_identity(hub, tmp_path, retrieval_checkpoint):
    directory = tmp_path / "model_dir"
    hub.save_pretrained(str(directory))
    graph = export(str(directory), "text", str(tmp_path / "out"))[0]
    encoder = OnnxEncoder(graph, checkpoint=str(directory))
    assert encoder.identity["path"] == str(directory)
    tokens = hub.process_text(TEXTS)
    assert np.abs(encoder.embed(src_tokens=tokens) - hub.extract_text_features(tokens).numpy()).max() <= TOLERANCE
    with pytest.raises(OnnxCheckpointMismatch):  # the same weights as a .pt file: another file, refused
        encoder.check_checkpoint(retrieval_checkpoint)


def test_audio_graph_alone_is_the_official_padded_forward(exported, media, retrieval_checkpoint, fixture_bpe_dir):
    """Fed a padded batch directly, the graph computes one padded forward (the official batching);
    OnnxEncoder.embed groups clips by length instead (the hub's default, tested above)."""
    official = from_pretrained(retrieval_checkpoint, device="cpu", dtype="float32", bpe_dir=fixture_bpe_dir,
                               official_padding=True)
    net_input = official.process("audio", media["audio"])
    expected = official.extract_features("audio", **net_input).numpy()
    session = OnnxEncoder(exported["audio"]).session
    got = session.run(None, {k: v.numpy() for k, v in net_input.items()})[0]
    assert np.abs(got - expected).max() <= TOLERANCE
