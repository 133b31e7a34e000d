"""``image_classify`` against the official fine-tuning fixture (official-parity-tasks §e).

Both official checkpoints (attention pooling; CLS token without the head's LayerNorm) are loaded through
fairseq's loader with our user dir; dataset items come from the raw inputs through our preprocessing;
logits, the criterion's loss (plain and label-smoothed), logging and gradients, the split metrics and
the direct accuracy calls must match the official values.
"""
import numpy as np
import pytest
import torch
from helpers import TASK_FIXTURES, assert_logging_output, assert_scaled_close, load_task_fixture
from PIL import Image


@pytest.fixture(scope="module")
def official():
    return load_task_fixture("image_classify.pt")


@pytest.fixture(scope="module")
def valid_tsv(tmp_path_factory):
    raw = load_task_fixture("task_inputs.pt")["raw"]["image_classify"]
    out = tmp_path_factory.mktemp("image_classify")
    rows = ["image\tlabel"]  # the official two columns, label 1-based
    for i, (array, label) in enumerate(zip(raw["images_uint8_HWC"], raw["labels_1based"])):
        Image.fromarray(np.asarray(array, dtype=np.uint8)).save(out / f"{i}.png")
        rows.append(f"{out / f'{i}.png'}\t{label}")
    (out / "valid.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(out / "valid.tsv")


def load_case(name, valid_tsv, bpe_dir):
    """(name, task, model, criterion) for one checkpoint, through fairseq's loader."""
    from fairseq import checkpoint_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(TASK_FIXTURES / f"ckpt_{name}.pt")], arg_overrides={"bpe_dir": bpe_dir, "valid_data": valid_tsv})
    task.load_dataset("valid")
    return name, task, models[0].eval(), task.build_criterion(cfg.criterion)


@pytest.fixture(scope="module", params=["image_classify", "image_classify_cls"])
def case(request, valid_tsv, fixture_bpe_dir, user_dir):
    return load_case(request.param, valid_tsv, fixture_bpe_dir)


@pytest.fixture(scope="module")
def attn_case(valid_tsv, fixture_bpe_dir, user_dir):
    """The attention-pooling model, the one the fixture's valid steps and split metrics come from."""
    return load_case("image_classify", valid_tsv, fixture_bpe_dir)


def batch_of(task, size=5):
    dataset = task.dataset("valid")
    return dataset.collater([dataset[i] for i in range(size)])


def test_dataset_items_and_batch(case, official):
    _, task, _, _ = case
    want = official["image_classify"]
    dataset = task.dataset("valid")
    for i, item in enumerate(want["dataset_items"]):
        got = dataset[i]
        assert_scaled_close(got["source_image"], item["source_image"], rel=1e-6, msg=f"image {i}")
        assert got["target"].reshape(item["target"].shape).tolist() == item["target"].tolist()  # label - 1
    batch = batch_of(task)
    assert set(batch["net_input"]) == {"src_images"}  # an image-only batch: no src_tokens
    assert_scaled_close(batch["net_input"]["src_images"], want["batch"]["net_input"]["src_images"], rel=1e-6)
    assert torch.equal(batch["target"], want["batch"]["target"])
    assert batch["id"].tolist() == want["batch"]["id"] and batch["nsentences"] == want["batch"]["nsentences"]


def test_logits_loss_logging_and_gradients(case, official):
    name, task, model, criterion = case
    want = official["image_classify"]
    cls = name == "image_classify_cls"
    if cls:  # CLS variant: features[:, 0] -> classifier; the head's LayerNorm exists but is not applied
        assert not model.classify_head.attn_pooling and hasattr(model.classify_head, "norm")
    batch = batch_of(task)
    with torch.no_grad():
        logits = model(**batch["net_input"])
    assert_scaled_close(logits, want["cls_variant_logits" if cls else "logits"], rel=1e-5, msg="logits")
    model.zero_grad()
    loss, sample_size, log = criterion(model, batch)
    ref = want["cls_variant_criterion" if cls else "criterion"]
    assert sample_size == int(ref["sample_size"]) == 5
    assert_scaled_close(loss.detach(), ref["loss"].float(), rel=1e-5, msg="CE sum")
    assert_logging_output(log, ref["logging_output"])
    if cls:
        return
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    norm = torch.sqrt(sum(g.double().pow(2).sum() for g in grads.values()))
    assert norm.item() == pytest.approx(ref["grads"]["full_grad_l2_norm"].item(), rel=1e-4)
    for key, value in ref["grads"]["l2_norm"].items():
        got = grads[key].double().norm().item() if key in grads else 0.0
        assert got == pytest.approx(value.item(), rel=1e-3, abs=1e-9), key
    for key, value in ref["grads"]["full"].items():
        assert_scaled_close(grads.get(key, torch.zeros_like(value)), value, rel=1e-3, msg=key)
    model.zero_grad()
    smoothed = want["criterion_ls0.1"]
    criterion.label_smoothing = 0.1
    try:
        with torch.no_grad():
            ls_loss, _, ls_log = criterion(model, batch)
    finally:
        criterion.label_smoothing = 0.0
    assert_scaled_close(ls_loss, smoothed["loss"].float(), rel=1e-5, msg="label-smoothed CE")
    assert_logging_output(ls_log, smoothed["logging_output"])


def test_split_metrics_and_predictions(attn_case, official):
    from one_peace.evaluate import evaluate

    _, task, model, _ = attn_case
    want = official["image_classify"]["metrics"]
    metrics, predictions = evaluate(task, model, "valid", batch_size=2, device="cpu")
    assert metrics["accuracy"] == pytest.approx(100 * want["accuracy"], abs=1e-4)  # percent here
    assert {int(p["uniq_id"]): p["prediction"] for p in predictions} == want["predict_results"]
    assert 0 <= metrics["top5"] <= 100 and metrics["top5"] == 100.0  # 5 classes: every target is in the top 5
    assert all(p["top5"][0] == p["prediction"] and len(p["top5"]) == 5 for p in predictions)


def test_valid_steps_loss_and_counts(attn_case, official):
    _, task, model, criterion = attn_case
    dataset = task.dataset("valid")
    for step in official["image_classify"]["valid_steps"]:
        batch = dataset.collater([dataset[i] for i in step["ids"]])
        loss, sample_size, log = task.valid_step(batch, model, criterion)
        want = step["logging_output"]
        assert sample_size == step["sample_size"]
        assert_logging_output(log, want)
        assert log["n_correct"] == log["_acc_score"]


def test_accuracy_direct(official):
    """The official Accuracy called with hard, then soft targets on the same logits.  The fixture keeps the
    logits and the result, not the targets: the predictions (arg-max of each call) and the count are
    compared exactly, and the accuracy is the summed score over the count, as ours (in percent)."""
    from one_peace.metrics.accuracy import accuracy, accuracy_sum

    want = official["accuracy_direct"]
    logits, result = want["logits"], want["result"]
    pred = logits.argmax(dim=-1)
    assert pred.tolist() * 2 == [result["predict_results"][i] for i in range(6)]
    hard = accuracy_sum(logits, pred)
    soft = accuracy_sum(logits, torch.nn.functional.one_hot(pred, 3).float())
    assert hard == soft == (3.0, 3) and hard[1] + soft[1] == result["score_cnt"]
    assert result["accuracy"] == pytest.approx(result["score_sum"] / result["score_cnt"])
    assert accuracy(logits, pred) == 100.0
