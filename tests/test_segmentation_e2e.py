"""ADE20K-layout scenes -> converter -> segmentation fine-tuning and evaluation through the run scripts
(tiny preset, CPU), and bad rows naming their file."""
import re

import numpy as np
import pytest
from e2e_helpers import REPO, TINY, read_results, run, run_script_module, tiny_model
from PIL import Image

SEG_TASK = ["task.num_classes=5", "task.resize_short=40", "task.resize_long=160", "task.slide_stride=16",
            "dataset.validate_interval=1", "checkpoint.save_interval=1"]


def test_ade20k_converter_finetune_and_evaluate(tmp_path):
    from one_peace.data_utils.synthetic_scenes import generate

    root = tmp_path / "ADEChallengeData2016"
    generate(str(root), seed=3, n_train=6, n_valid=3, width=48, height=40)
    (root / "images" / "training" / "orphan.jpg").write_bytes(b"no annotation")  # left out by the converter
    data = tmp_path / "ade"
    run_script_module("segmentation/convert_ade20k.py").main(["--ade-root", str(root), "--out-dir", str(data)])
    assert len((data / "ade20k_train.tsv").read_text().splitlines()) == 7
    save_dir = tmp_path / "ckpt"
    env = dict(ADE_DIR=str(data), BATCH="2", UPDATE_FREQ="1", EPOCHS="1", SAVE_DIR=str(save_dir))
    log = run(["bash", str(REPO / "run_scripts/segmentation/finetune.sh"), tiny_model("segmentation/finetune.sh"),
               *TINY, *SEG_TASK, f"task.label_file={root / 'scene_classes.json'}"], env, tmp_path)
    assert "aux_loss" in log and "pixel_acc" in log
    valid_miou = float(re.findall(r"\| mIoU ([\d.]+)", log)[-1])
    results = tmp_path / "results"
    run(["bash", str(REPO / "run_scripts/segmentation/evaluate.sh"), "--cpu"],
        dict(ADE_DIR=str(data), CHECKPOINT=str(save_dir / "checkpoint_best.pt"), RESULTS_DIR=str(results),
             TEST_TSV=str(data / "ade20k_val.tsv"), PRECISION="fp32"), tmp_path)  # as the validation ran
    preds, metrics = read_results(results)
    assert metrics["mIoU"] == pytest.approx(valid_miou, abs=1e-3)  # validation and evaluation agree
    for key in ("mIoU", "mAcc", "aAcc"):
        assert 0 <= metrics[key] <= 100
    assert list(metrics["per_class"]) == ["background", "red", "green", "blue", "yellow"]
    assert [p["uniq_id"] for p in preds] == [f"scene_validation_{i:05d}" for i in range(3)]
    for pred in preds:
        mask = Image.open(pred["mask"])
        assert mask.mode == "P" and mask.size == (48, 40)
        assert set(np.unique(np.asarray(mask))) <= {1, 2, 3, 4, 5}  # annotation values (class + 1)


@pytest.mark.parametrize("split", ["valid", "train"])
def test_bad_label_maps_name_the_file(tmp_path, user_dir, split):
    from omegaconf import OmegaConf

    from one_peace.data_utils.dataset import BadSampleError
    from one_peace.tasks.vision_tasks.semantic_segmentation import (
        SemanticSegmentationConfig,
        SemanticSegmentationTask,
    )

    Image.new("RGB", (20, 16), (10, 200, 10)).save(tmp_path / "img.jpg")
    Image.fromarray(np.full((16, 20), 9, np.uint8)).save(tmp_path / "out_of_range.png")
    Image.fromarray(np.ones((10, 20), np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.fromarray(np.ones((16, 20), np.uint8)).save(tmp_path / "good.png")
    rows = ["out_of_range.png", "small.png", "broken.png", "good.png"]
    (tmp_path / "data.tsv").write_text("image\tlabel_map\n" + "".join(f"img.jpg\t{r}\n" for r in rows))
    cfg = SemanticSegmentationConfig(data=str(tmp_path / "data.tsv"), valid_data=str(tmp_path / "data.tsv"),
                                     num_classes=5, patch_image_size=16, resize_short=16, resize_long=64)
    task = SemanticSegmentationTask.setup_task(OmegaConf.structured(cfg))
    task.load_dataset(split)
    dataset = task.dataset(split)
    reasons = [r"out_of_range\.png has values \[9\] outside the 5 classes",
               r"label map .*small\.png is 20x10 but its image .*img\.jpg is 20x16",
               r"cannot read label map .*broken\.png"]
    if split == "valid":
        for index, reason in enumerate(reasons):
            with pytest.raises(BadSampleError, match=rf"row {index + 2}: .*{reason}"):
                dataset[index]
    else:  # training skips and counts them
        assert [dataset[i] for i in range(3)] == [None] * 3 and dataset.num_skipped == 3
        batch = dataset.collater([dataset[i] for i in range(4)])
        assert batch["num_skipped"] == 3 and batch["net_input"]["src_images"].shape == (1, 3, 16, 16)
