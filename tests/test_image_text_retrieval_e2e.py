"""Image-text retrieval end to end on generated data: Karpathy JSON -> converter -> fine-tune ->
evaluate, and zero-shot evaluation from a pretrained checkpoint, all through the run scripts."""
import json

import numpy as np
import pytest
from e2e_helpers import REPO, TINY, read_results, run, run_script_module, tiny_model
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (230, 220, 30),
           "purple": (140, 40, 170), "white": (240, 240, 240), "black": (10, 10, 10), "orange": (240, 140, 20),
           "grey": (128, 128, 128), "cyan": (30, 210, 220)}
SPLITS = ["train", "train", "train", "restval", "val", "val", "test", "test", "test", "train"]


def converter():
    return run_script_module("image_text_retrieval/convert_karpathy.py").main


@pytest.fixture(scope="module")
def karpathy(tmp_path_factory):
    root = tmp_path_factory.mktemp("karpathy")
    (root / "images" / "val2014").mkdir(parents=True)
    entries = []
    for i, ((name, rgb), split) in enumerate(zip(COLOURS.items(), SPLITS)):
        filename = f"img{i}.jpg"
        Image.fromarray(np.full((40, 48, 3), rgb, dtype=np.uint8)).save(root / "images" / "val2014" / filename)
        entries.append({"filepath": "val2014", "filename": filename, "split": split, "cocoid": 500 + i,
                        "sentences": [{"raw": f"A {name} picture."}, {"raw": f"something\tall {name}\n"}]})
    (root / "dataset_coco.json").write_text(json.dumps({"images": entries}))
    out = root / "tsv"
    converter()(["--karpathy", str(root / "dataset_coco.json"), "--image-root", str(root / "images"),
                 "--name", "coco", "--out-dir", str(out)])
    return out


def test_converter_layouts(karpathy):
    from one_peace.data_utils.tsv import TSVReader

    train = list(TSVReader(karpathy / "coco_train.tsv"))
    assert len(train) == 10 and {r["image_id"] for r in train} == {"500", "501", "502", "503", "509"}  # + restval
    assert train[1]["caption"] == "something all red"  # tabs and newlines flattened
    test = list(TSVReader(karpathy / "coco_test.tsv"))
    assert [r["image_id"] for r in test] == ["506", "507", "508"]
    assert json.loads((karpathy / "coco_test_texts.json").read_text())["506"] == ["A black picture.",
                                                                                  "something all black"]


def test_converter_names_a_missing_image(tmp_path):
    (tmp_path / "k.json").write_text(json.dumps({"images": [
        {"filename": "nope.jpg", "split": "test", "imgid": 1, "sentences": [{"raw": "a cat"}]}]}))
    with pytest.raises(SystemExit, match="nope.jpg"):
        converter()(["--karpathy", str(tmp_path / "k.json"), "--image-root", str(tmp_path), "--name", "x",
                     "--out-dir", str(tmp_path / "out")])


def test_finetune_and_evaluate_scripts(karpathy, tmp_path):
    script = "image_text_retrieval/finetune.sh"
    save_dir = tmp_path / "ckpt"
    env = dict(RETRIEVAL_DIR=str(karpathy), BATCH="2", UPDATE_FREQ="1", EPOCHS="1", SAVE_DIR=str(save_dir))
    log = run(["bash", str(REPO / "run_scripts" / script), tiny_model(script), *TINY], env, tmp_path)
    assert "txt_r1" in log and "img_r1" in log  # validation recall during training
    ckpt = save_dir / "checkpoint_best.pt"
    assert ckpt.is_file(), log[-3000:]
    results = tmp_path / "results"
    run(["bash", str(REPO / "run_scripts/image_text_retrieval/evaluate.sh"), "--cpu"],
        dict(RETRIEVAL_DIR=str(karpathy), CHECKPOINT=str(ckpt), RESULTS_DIR=str(results)), tmp_path)
    preds, metrics = read_results(results)
    assert {"txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean"} <= set(metrics)
    assert metrics["img_count"] == 3 and metrics["txt_count"] == 6
    assert [p["uniq_id"] for p in preds] == ["506", "507", "508"] and len(preds[0]["top_ids"]) == 6


def test_zero_shot_script(karpathy, tmp_path, fixture_bpe_dir):
    from test_evaluate import write_retrieval_checkpoint

    checkpoint = write_retrieval_checkpoint(tmp_path / "pretrained.pt")
    results = tmp_path / "zero_shot"
    run(["bash", str(REPO / "run_scripts/image_text_retrieval/zero_shot_evaluate.sh"), "--cpu",
         "--patch-image-size", "32"],
        dict(RETRIEVAL_DIR=str(karpathy), ONE_PEACE_CHECKPOINT=str(checkpoint), RESULTS_DIR=str(results),
             BPE_DIR=fixture_bpe_dir), tmp_path)
    preds, metrics = read_results(results, "coco_test")
    assert 0 <= metrics["txt_r1"] <= 100 and metrics["txt_r10"] == 100.0 and len(preds) == 3


def test_finetune_and_evaluate_from_a_model_directory(karpathy, tmp_path, fixture_bpe_dir):
    """A one-peace-convert directory is a checkpoint wherever a .pt is: fine-tuning starts from its
    weights (fairseq would otherwise train from scratch, saying only "no existing checkpoint") and
    one-peace-evaluate reads it."""
    import torch
    from test_evaluate import write_retrieval_checkpoint

    from one_peace.hub.convert import convert_checkpoint
    from one_peace.models.checkpoint import load_checkpoint_file

    model_dir = tmp_path / "pretrained"
    convert_checkpoint(str(write_retrieval_checkpoint(tmp_path / "pretrained.pt")), str(model_dir),
                       bpe_dir=fixture_bpe_dir)
    script = "image_text_retrieval/finetune.sh"
    save_dir = tmp_path / "ckpt"
    env = dict(RETRIEVAL_DIR=str(karpathy), BATCH="2", UPDATE_FREQ="1", EPOCHS="1", SAVE_DIR=str(save_dir),
               ONE_PEACE_CHECKPOINT=str(model_dir), BPE_DIR=fixture_bpe_dir)
    log = run(["bash", str(REPO / "run_scripts" / script), tiny_model(script), *TINY, "optimization.lr=[1e-20]", "lr_scheduler.min_lr=0",
               "+model.encoder.image_adapter.bucket_size=3"], env, tmp_path)  # the fixture model's geometry
    assert f"loading pretrained model from {model_dir}" in log, log[-3000:]
    start = load_checkpoint_file(str(model_dir))["model"]
    trained = load_checkpoint_file(str(save_dir / "checkpoint_last.pt"))["model"]
    shared = [k for k in start if k in trained]
    # lr 1e-20: the weights stay the pretrained ones (from scratch, they would be random)
    assert len(shared) > 20 and all(torch.allclose(start[k].float(), trained[k].float(), rtol=0, atol=1e-12)
                                    for k in shared)
    results = tmp_path / "results"
    run(["bash", str(REPO / "run_scripts/image_text_retrieval/zero_shot_evaluate.sh"), "--cpu",
         "--patch-image-size", "32"],
        dict(RETRIEVAL_DIR=str(karpathy), ONE_PEACE_CHECKPOINT=str(model_dir), RESULTS_DIR=str(results),
             BPE_DIR=fixture_bpe_dir), tmp_path)
    _, metrics = read_results(results, "coco_test")
    assert metrics["txt_r10"] == 100.0
