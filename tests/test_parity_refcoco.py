"""``refcoco`` against the official fine-tuning fixtures (official-parity-tasks §b): both pooling
variants (image features for RefCOCO/+, text features for RefCOCOg), through fairseq's loader."""
import numpy as np
import pytest
import torch
from helpers import TASK_FIXTURES, assert_logging_output, assert_scaled_close, load_task_fixture
from PIL import Image


@pytest.fixture(scope="module")
def official():
    return load_task_fixture("refcoco.pt")


@pytest.fixture(scope="module")
def valid_tsv(tmp_path_factory):
    raw = load_task_fixture("task_inputs.pt")["raw"]["refcoco"]
    out = tmp_path_factory.mktemp("refcoco")
    rows = ["uniq_id\timage\ttext\tregion_coord"]
    for i, (array, text, box) in enumerate(zip(raw["images_uint8_HWC"], raw["texts"], raw["region_coord_strings"])):
        Image.fromarray(np.asarray(array, dtype=np.uint8)).save(out / f"{i}.png")
        rows.append(f"{i}\t{out / f'{i}.png'}\t{text}\t{box}")
    (out / "valid.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(out / "valid.tsv")


@pytest.fixture(scope="module", params=["refcoco_imgfeat", "refcoco_txtfeat"])
def loaded(request, valid_tsv, fixture_bpe_dir, user_dir):
    from fairseq import checkpoint_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(TASK_FIXTURES / f"ckpt_{request.param}.pt")],
        arg_overrides={"bpe_dir": fixture_bpe_dir, "valid_data": valid_tsv})
    task.load_dataset("valid")
    return request.param, task, models[0].eval(), task.build_criterion(cfg.criterion)


def test_dataset_items_and_batch(loaded, official):
    _, task, _, _ = loaded
    dataset = task.dataset("valid")
    for i, want in enumerate(official["dataset_items"]):
        got = dataset[i]
        assert torch.equal(got["source_text"], want["source_text"]), i
        assert_scaled_close(got["source_image"], want["source_image"], rel=1e-6, msg=f"image {i}")
        assert_scaled_close(got["target"], want["target"].reshape(-1), rel=1e-6, msg=f"target {i}")
        for key in ("w_resize_ratio", "h_resize_ratio", "region_coord"):
            assert_scaled_close(got[key].float(), want[key].float(), rel=1e-6, msg=f"{key} {i}")
    batch = dataset.collater([dataset[i] for i in range(4)])
    assert torch.equal(batch["net_input"]["src_tokens"], official["batch"]["net_input"]["src_tokens"])
    assert_scaled_close(batch["target"], official["batch"]["target"], rel=1e-6)


def test_logits_loss_gradients_and_metrics(loaded, official):
    from one_peace.evaluate import evaluate

    name, task, model, criterion = loaded
    want = official[name]
    dataset = task.dataset("valid")
    batch = dataset.collater([dataset[i] for i in range(4)])
    with torch.no_grad():
        logits = model(**batch["net_input"])
    assert_scaled_close(logits, want["logits"], rel=1e-5, msg="logits")
    assert torch.equal((torch.sigmoid(logits)[:, :2] < torch.sigmoid(logits)[:, 2:]).all(1), want["valid_box_mask"])
    model.zero_grad()
    loss, sample_size, log = criterion(model, batch)
    assert sample_size == 1
    assert_scaled_close(loss.detach(), want["criterion"]["loss"].float(), rel=1e-5, msg="loss")
    assert_logging_output(log, want["criterion"]["logging_output"])
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    norm = torch.sqrt(sum(g.double().pow(2).sum() for g in grads.values()))
    assert norm.item() == pytest.approx(want["criterion"]["grads"]["full_grad_l2_norm"].item(), rel=1e-4)
    for key, value in want["criterion"]["grads"]["full"].items():
        assert_scaled_close(grads.get(key, torch.zeros_like(value)), value, rel=1e-3, msg=key)
    model.zero_grad()
    assert_scaled_close(task.pixel_boxes(logits, batch), want["hyps_pixels"].double(), rel=1e-5, msg="pixel boxes")
    metrics, predictions = evaluate(task, model, "valid", batch_size=4, device="cpu")
    assert metrics["iou_acc"] == pytest.approx(100 * want["metrics"]["iou_acc"])
    for pred in predictions:
        assert pred["box"] == pytest.approx(want["metrics"]["predict_results"][int(pred["uniq_id"])], rel=1e-5)


def test_iou_accuracy_on_hand_made_pairs(official):
    from one_peace.metrics.grounding import iou_hits

    direct = official["iou_acc_direct"]
    hits = iou_hits(direct["hyps"], direct["refs"])
    assert hits.float().mean().item() == pytest.approx(direct["result"]["iou_acc"])
    assert int(hits.sum()) == direct["result"]["score_sum"]


def test_loss_stays_finite_without_a_valid_box():
    """The official loss is NaN when no predicted box has x0 < x1 and y0 < y1; ours keeps the L1 term."""
    from one_peace.criterions.refcoco_loss import grounding_loss

    logits = torch.tensor([[2.0, 2.0, -2.0, -2.0], [1.0, 0.5, 0.0, -1.0]], requires_grad=True)
    target = torch.tensor([[0.1, 0.1, 0.6, 0.7], [0.2, 0.3, 0.5, 0.9]])
    loss, valid = grounding_loss(logits, target)
    assert valid == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_bad_boxes_name_the_row(tmp_path, fixture_bpe_dir, user_dir):
    from omegaconf import OmegaConf

    from one_peace.data_utils.dataset import BadSampleError
    from one_peace.tasks.vl_tasks.refcoco import RefCOCOConfig, RefCOCOTask

    Image.new("RGB", (40, 30)).save(tmp_path / "img.png")
    rows = ["uniq_id\timage\ttext\tregion_coord", f"a\t{tmp_path / 'img.png'}\ta cat\t1,2,50,20",
            f"b\t{tmp_path / 'img.png'}\ta dog\t10,10,5,20", f"c\t{tmp_path / 'img.png'}\ta box\t1,2,3"]
    (tmp_path / "bad.tsv").write_text("\n".join(rows) + "\n")
    task = RefCOCOTask.setup_task(OmegaConf.structured(RefCOCOConfig(
        bpe_dir=fixture_bpe_dir, valid_data=str(tmp_path / "bad.tsv"), patch_image_size=32)))
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    for i, reason in enumerate(["row 2: .*outside the 40x30 image", "row 3: .*degenerate", "row 4: .*four numbers"]):
        with pytest.raises(BadSampleError, match=reason):
            dataset[i]


def test_hub_ground_and_answer(fixture_bpe_dir, tmp_path, official):
    """hub.ground: boxes in each image's pixels from a RefCOCO checkpoint; hub.answer: top-k answers
    of a VQA checkpoint; wrong checkpoints and mismatched inputs are clear errors."""
    import json

    from one_peace import from_pretrained

    raw = load_task_fixture("task_inputs.pt")["raw"]
    paths = []
    for i, array in enumerate(raw["refcoco"]["images_uint8_HWC"]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(np.asarray(array, dtype=np.uint8)).save(paths[-1])
    hub = from_pretrained(str(TASK_FIXTURES / "ckpt_refcoco_imgfeat.pt"), model_type="one_peace_classify",
                          device="cpu", bpe_dir=fixture_bpe_dir)
    rows = [0, 2, 3]  # captions the hub's (official) text processing leaves as the dataset does
    boxes = hub.ground([paths[i] for i in rows], [raw["refcoco"]["texts"][i] for i in rows])
    assert_scaled_close(boxes.double(), official["refcoco_imgfeat"]["hyps_pixels"][rows].double(), rel=1e-5)
    with pytest.raises(ValueError, match="2 images but 1 texts"):
        hub.ground(paths[:2], ["a cat"])
    with pytest.raises(ValueError, match=r"answer needs a VQA checkpoint.*task 'refcoco'.*use hub.ground"):
        hub.answer(paths[:1], ["what is it?"])  # it used to return box coordinates as "answers"

    vqa = from_pretrained(str(TASK_FIXTURES / "ckpt_vqa.pt"), model_type="one_peace_classify", device="cpu",
                          bpe_dir=fixture_bpe_dir)
    (tmp_path / "answers.json").write_text(json.dumps({str(i): a for i, a in enumerate(
        ["yes", "no", "two", "three", "one", "red"])}))
    answers = vqa.answer(paths[:2], ["what is to red?", "what color is it?"], k=3, label_map=tmp_path / "answers.json")
    assert [len(a) for a in answers] == [3, 3]
    for ranked in answers:
        assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
        assert all(name in {"yes", "no", "two", "three", "one", "red"} for name, _ in ranked)
    with pytest.raises(ValueError, match=r"ground needs a grounding .*task 'vqa'.*use hub.answer"):
        vqa.ground(paths[:1], ["a cat"])
