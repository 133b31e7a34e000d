"""``image_text_retrieval`` against the official fine-tuning fixtures (official-parity-tasks §a).

The official checkpoint is loaded through fairseq's loader with our user dir; dataset items are
built from the raw images and captions by our own preprocessing; the criterion's loss, logging
and gradients, the embeddings and the evaluation metrics must match the official values.
"""
import json

import numpy as np
import pytest
import torch
from helpers import TASK_FIXTURES, assert_logging_output, assert_scaled_close, load_task_fixture
from PIL import Image


@pytest.fixture(scope="module")
def official():
    return load_task_fixture("image_text_retrieval.pt")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, fixture_bpe_dir, user_dir):
    """(task, model, criterion) from the official checkpoint; the raw inputs written as files."""
    from fairseq import checkpoint_utils

    inputs = load_task_fixture("task_inputs.pt")
    bpe_symbols = [line.split()[0] for line in open(f"{fixture_bpe_dir}/dict.txt", encoding="utf-8")]
    assert bpe_symbols == inputs["dict_symbols"][4:], "the task fixtures use the pretraining fixtures' dictionary"
    raw = inputs["raw"]["retrieval"]
    out = tmp_path_factory.mktemp("retrieval")
    rows = ["image_id\timage\tcaption"]
    for image_id, array, captions in zip(raw["image_ids"], raw["images_uint8_HWC"], raw["captions"]):
        path = out / f"{image_id}.png"
        Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
        # A TSV cell holds no tab or newline: those become spaces (cleaning collapses whitespace anyway).
        caption = captions[0].replace("\t", " ").replace("\n", " ")
        rows.append(f"{image_id}\t{path}\t{caption}")
    (out / "valid.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (out / "valid.json").write_text(json.dumps({str(i): c for i, c in zip(raw["image_ids"], raw["captions"])}))
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(TASK_FIXTURES / "ckpt_retrieval.pt")],
        arg_overrides={"bpe_dir": fixture_bpe_dir, "valid_data": str(out / "valid.tsv"),
                       "valid_file": str(out / "valid.json")})
    task.load_dataset("valid")
    return task, models[0].eval(), task.build_criterion(cfg.criterion)


def test_dataset_items_from_raw_inputs(loaded, official):
    task, _, _ = loaded
    dataset = task.dataset("valid")
    assert len(dataset) == len(official["dataset_items"])
    for i, want in enumerate(official["dataset_items"]):
        got = dataset[i]
        assert int(got["uniq_id"]) == want["id"]
        assert torch.equal(got["source_text"], want["source_text"]), i
        assert_scaled_close(got["source_image"], want["source_image"], rel=1e-6, msg=f"image {i}")
    # the evaluation captions (valid_file) tokenise as the official begin_valid_epoch does
    bank = task.load_bank()
    assert bank.captions == official["valid_file_texts"]
    for text, tokens in zip(bank.captions, official["valid_file_text_tokens"]):
        assert torch.equal(task.tokenizer.encode(task.caption(text), clean=True), tokens), text


def test_criterion_loss_logging_and_gradients(loaded, official):
    task, model, criterion = loaded
    dataset = task.dataset("valid")
    batch = dataset.collater([dataset[i] for i in range(4)])
    want_batch = official["loss_batch"]
    assert torch.equal(batch["net_input"]["src_tokens"], want_batch["net_input"]["src_tokens"])
    assert_scaled_close(batch["net_input"]["src_images"], want_batch["net_input"]["src_images"], rel=1e-6)
    model.zero_grad()
    loss, sample_size, log = criterion(model, batch)
    want = official["criterion_ls0"]
    assert sample_size == want["sample_size"] == 1
    assert_scaled_close(loss.detach(), want["loss"], rel=1e-5, msg="loss")
    assert_logging_output(log, want["logging_output"])
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    norm = torch.sqrt(sum(g.double().pow(2).sum() for g in grads.values()))
    assert norm.item() == pytest.approx(want["grads"]["full_grad_l2_norm"].item(), rel=1e-4)
    for name, value in want["grads"]["l2_norm"].items():
        got = grads[name].double().norm() if name in grads else torch.zeros((), dtype=torch.float64)
        assert got.item() == pytest.approx(value.item(), rel=1e-4, abs=1e-9), name
    for name, value in want["grads"]["full"].items():
        assert_scaled_close(grads[name], value, rel=1e-4, msg=name)
    model.zero_grad()
    criterion.label_smoothing = 0.1
    try:
        with torch.no_grad():
            smoothed, _, smoothed_log = criterion(model, batch)
    finally:
        criterion.label_smoothing = 0.0
    assert_scaled_close(smoothed, official["criterion_ls0.1"]["loss"], rel=1e-5, msg="loss ls 0.1")
    assert_logging_output(smoothed_log, official["criterion_ls0.1"]["logging_output"])
    with torch.no_grad():
        text = model(src_tokens=batch["net_input"]["src_tokens"], encoder_type="text")
        image = model(src_images=batch["net_input"]["src_images"], encoder_type="image")
    assert_scaled_close(text, official["text_embeddings_loss_batch"], rel=1e-5, msg="text embeddings")
    assert_scaled_close(image, official["image_embeddings_loss_batch"], rel=1e-5, msg="image embeddings")


def test_evaluation_metrics(loaded, official):
    from one_peace.evaluate import evaluate

    task, model, _ = loaded
    metrics, predictions = evaluate(task, model, "valid", batch_size=5, device="cpu")
    for key, value in official["metrics"].items():
        if not key.startswith("predict_"):
            assert metrics[key] == pytest.approx(value, abs=1e-4), key
    # each image's ten best captions, by the id of the image they describe
    assert {int(p["uniq_id"]): [int(i) for i in p["top_ids"]] for p in predictions} == official["metrics"]["predict_txt"]
