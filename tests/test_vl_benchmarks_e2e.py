"""VQAv2, NLVR2 and RefCOCO end to end on generated data: each release format -> its converter ->
fine-tuning through the run script (tiny preset) -> evaluation through the run script."""
import json
import pickle

import numpy as np
import pytest
from e2e_helpers import REPO, TINY, read_results, run, run_script_module, tiny_model
from PIL import Image

COLOURS = [(220, 30, 30), (30, 200, 40), (30, 60, 220), (230, 220, 30), (140, 40, 170), (240, 240, 240)]


def converter(path):
    return run_script_module(path).main


def image(path, colour, size=(48, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), colour, dtype=np.uint8)).save(path)
    return path


def finetune(script, tmp_path, env):
    save_dir = tmp_path / "ckpt"
    env = dict(env, BATCH="2", UPDATE_FREQ="1", EPOCHS="1", SAVE_DIR=str(save_dir))
    log = run(["bash", str(REPO / "run_scripts" / script), tiny_model(script), *TINY], env, tmp_path)
    assert (save_dir / "checkpoint_best.pt").is_file(), log[-3000:]
    return save_dir / "checkpoint_best.pt", log


def test_vqa_converter_finetune_evaluate_and_submission(tmp_path):
    root = tmp_path / "release"
    questions, annotations = [], []
    for i, colour in enumerate(COLOURS):
        image(root / "train2014" / f"COCO_train2014_{i:012d}.jpg", colour)
        questions.append({"question_id": 100 + i, "image_id": i, "question": "What colour  is it?"})
        answers = ["red", "red", "blue"] if i % 2 else ["blue", "blue", "blue", "red"]
        annotations.append({"question_id": 100 + i, "multiple_choice_answer": answers[0],
                            "answers": [{"answer": a} for a in answers]})
    (root / "q.json").write_text(json.dumps({"questions": questions}))
    (root / "a.json").write_text(json.dumps({"annotations": annotations}))
    data = tmp_path / "vqa"
    data.mkdir()
    convert = converter("vqa/convert_vqa.py")
    common = ["--questions", str(root / "q.json"), "--image-dir", str(root / "train2014")]
    convert(common + ["--annotations", str(root / "a.json"), "--out", str(data / "vqa_train.tsv"),
                      "--write-answers", str(data / "answers.json")])
    convert(common + ["--annotations", str(root / "a.json"), "--out", str(data / "vqa_val.tsv"),
                      "--answers", str(data / "answers.json")])
    convert(common + ["--out", str(data / "vqa_test_dev.tsv"), "--answers", str(data / "answers.json")])
    assert json.loads((data / "answers.json").read_text()) == {"0": "blue", "1": "red"}  # by frequency
    row = (data / "vqa_train.tsv").read_text().splitlines()[2]
    assert row.endswith("red|!+1|!+0.666667&&blue|!+0|!+0.333333")  # min(1, matches / 3)
    ckpt, log = finetune("vqa/finetune.sh", tmp_path, dict(VQA_DIR=str(data)))
    assert "accuracy" in log and "| acc " in log  # split accuracy and the training log's VQA accuracy
    results = tmp_path / "results"
    run(["bash", str(REPO / "run_scripts/vqa/evaluate.sh"), "--cpu"],
        dict(VQA_DIR=str(data), CHECKPOINT=str(ckpt), RESULTS_DIR=str(results),
             TEST_TSV=str(data / "vqa_test_dev.tsv")), tmp_path)
    submission = json.loads((results / "test_vqa_submission.json").read_text())
    assert [s["question_id"] for s in submission] == list(range(100, 106))
    assert all(s["answer"] in ("red", "blue") for s in submission)


def test_nlvr2_converter_finetune_and_evaluate(tmp_path):
    root = tmp_path / "release"
    lines = []
    for i in range(6):
        for k in (0, 1):
            image(root / "images" / "train" / str(i % 2) / f"train-{i}-0-img{k}.png", COLOURS[(i + k) % 6])
        lines.append(json.dumps({"identifier": f"train-{i}-0-{i % 3}", "sentence": f"Two  images number {i}.",
                                 "label": "True" if i % 2 else "False"}))
    lines.append(json.dumps({"identifier": "train-99-0-0", "sentence": "no images", "label": "True"}))
    (root / "train.json").write_text("\n".join(lines) + "\n")
    data = tmp_path / "nlvr2"
    data.mkdir()
    for split in ("train", "dev"):
        converter("nlvr2/convert_nlvr2.py")(["--jsonl", str(root / "train.json"), "--image-dir",
                                             str(root / "images"), "--out", str(data / f"nlvr2_{split}.tsv")])
    assert len((data / "nlvr2_train.tsv").read_text().splitlines()) == 7  # header + 6 (one pair has no images)
    ckpt, log = finetune("nlvr2/finetune.sh", tmp_path, dict(NLVR2_DIR=str(data)))
    results = tmp_path / "results"
    run(["bash", str(REPO / "run_scripts/nlvr2/evaluate.sh"), "--cpu"],
        dict(NLVR2_DIR=str(data), CHECKPOINT=str(ckpt), RESULTS_DIR=str(results)), tmp_path)
    preds, metrics = read_results(results)
    assert 0 <= metrics["accuracy"] <= 100 and len(preds) == 6


def test_refcoco_converter_finetune_and_evaluate(tmp_path):
    root = tmp_path / "release"
    refs, annotations, images = [], [], []
    for i in range(6):
        image(root / "train2014" / f"img{i}.jpg", COLOURS[i], size=(60, 40))
        images.append({"id": i, "file_name": f"img{i}.jpg"})
        annotations.append({"id": 50 + i, "bbox": [5 + i, 4, 30, 20]})
        refs.append({"ref_id": i, "ann_id": 50 + i, "image_id": i, "split": "train" if i < 4 else "val",
                     "sentences": [{"sent": f"the box {i}"}, {"sent": "left  one"}]})
    with open(root / "refs(unc).p", "wb") as fh:
        pickle.dump(refs, fh, protocol=2)
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    data = tmp_path / "refcoco"
    converter("refcoco/convert_refcoco.py")(["--refs", str(root / "refs(unc).p"), "--instances",
                                             str(root / "instances.json"), "--image-dir", str(root / "train2014"),
                                             "--name", "refcoco", "--out-dir", str(data)])
    assert (data / "refcoco_train.tsv").read_text().splitlines()[1].endswith("\tthe box 0\t5,4,35,24")
    ckpt, log = finetune("refcoco/finetune.sh", tmp_path, dict(REFCOCO_DIR=str(data)))
    assert "iou_acc" in log
    results = tmp_path / "results"
    run(["bash", str(REPO / "run_scripts/refcoco/evaluate.sh"), "--cpu"],
        dict(REFCOCO_DIR=str(data), CHECKPOINT=str(ckpt), RESULTS_DIR=str(results)), tmp_path)
    preds, metrics = read_results(results)
    assert 0 <= metrics["iou_acc"] <= 100 and len(preds) == 4
    assert all(len(p["box"]) == 4 and p["target_box"][2] <= 60 for p in preds)


def test_refs_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    (tmp_path / "refs.p").write_bytes(pickle.dumps([{"ref_id": 0, "x": Evil()}], protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load .*print"):
        run_script_module("refcoco/convert_refcoco.py").load_refs(tmp_path / "refs.p")


def test_bad_vl_rows_name_the_row_or_file(tmp_path, fixture_bpe_dir, user_dir):
    """A missing second image, an answer id outside the vocabulary, caption ids that match no image."""
    from omegaconf import OmegaConf

    from one_peace.data_utils.dataset import BadSampleError
    from one_peace.tasks.vl_tasks.image_text_retrieval import ImageTextRetrievalConfig, ImageTextRetrievalTask
    from one_peace.tasks.vl_tasks.nlvr2 import NLVR2Config, NLVR2Task
    from one_peace.tasks.vl_tasks.vqa import VQAConfig, VQATask

    first = image(tmp_path / "a.png", COLOURS[0])
    (tmp_path / "nlvr2.tsv").write_text("uniq_id\ttext\timage1\timage2\tlabel\n"
                                        f"x\ttwo dogs\t{first}\t{tmp_path / 'gone.png'}\tTrue\n")
    task = NLVR2Task.setup_task(OmegaConf.structured(NLVR2Config(
        bpe_dir=fixture_bpe_dir, valid_data=str(tmp_path / "nlvr2.tsv"), patch_image_size=32)))
    task.load_dataset("valid")
    with pytest.raises(BadSampleError, match="row 2: .*gone.png"):
        task.dataset("valid")[0]

    (tmp_path / "vqa.tsv").write_text("uniq_id\timage\tquestion\trefs\n"
                                      f"7\t{first}\twhat is it?\tcat|!+9|!+1.0\n")
    task = VQATask.setup_task(OmegaConf.structured(VQAConfig(
        bpe_dir=fixture_bpe_dir, valid_data=str(tmp_path / "vqa.tsv"), num_classes=3, patch_image_size=32)))
    task.load_dataset("valid")
    with pytest.raises(BadSampleError, match="row 2: unknown answer label id 9"):
        task.dataset("valid")[0]

    (tmp_path / "ret.tsv").write_text(f"image_id\timage\tcaption\n1\t{first}\ta red square\n")
    (tmp_path / "ret.json").write_text(json.dumps({"1": ["a red square"], "2": ["a lost caption"]}))
    task = ImageTextRetrievalTask.setup_task(OmegaConf.structured(ImageTextRetrievalConfig(
        bpe_dir=fixture_bpe_dir, valid_data=str(tmp_path / "ret.tsv"), valid_file=str(tmp_path / "ret.json"),
        patch_image_size=32)))
    task.load_dataset("valid")
    with pytest.raises(ValueError, match=r"ret.json: captions of 1 ids match no row of .*ret.tsv .*\['2'\]"):
        task.load_bank()
