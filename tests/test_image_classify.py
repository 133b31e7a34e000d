"""image_classify pieces: Mixup/CutMix targets, the seeded training transforms, row errors, the converter's
input formats and errors, prompt templates."""
import json

import numpy as np
import pytest
import torch
from e2e_helpers import run_script_module
from PIL import Image

from one_peace.data_utils.augment import sample_seed
from one_peace.data_utils.classify_transforms import (
    RAND_INCREASING_OPS,
    ImageClassifyTrainTransform,
    RandAugment,
    random_erase,
    resize_center_crop,
)
from one_peace.data_utils.image import image_to_tensor
from one_peace.data_utils.mixup import Mixup, cutmix_box, mix_targets, parse_minmax


def picture(seed=0, size=(48, 40)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


# ---- Mixup / CutMix ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("mixup,cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixed_targets_are_distributions_with_the_smoothing(mode, mixup, cutmix):
    images, target = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    mix = Mixup(5, mixup, cutmix, mode=mode, label_smoothing=0.1)
    for seed in range(5):
        mixed, soft = mix(images, target, np.random.default_rng(seed))
        assert soft.shape == (6, 5) and torch.allclose(soft.sum(1), torch.ones(6))
        assert soft.min() >= 0.1 / 5 - 1e-7  # every class keeps the smoothing floor eps / C
        assert mixed.shape == images.shape
    assert torch.equal(images, images.clone())  # the input batch is not modified


def test_mixup_blends_image_and_target_with_the_same_lambda():
    images, target = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    mixed, soft = Mixup(4, mixup=0.8, mode="batch")(images, target, np.random.default_rng(3))
    lam = float(soft[0, 0])  # image 0 mixed with its mirror, image 3 (classes 0 and 3)
    assert 0 < lam < 1 and float(soft[0, 3]) == pytest.approx(1 - lam)
    assert torch.allclose(mixed[0], lam * images[0] + (1 - lam) * images[3], atol=1e-6)


@pytest.mark.parametrize("minmax", [None, "0.2,0.7"])
def test_cutmix_ratio_is_the_pasted_area(minmax):
    images = torch.zeros(2, 3, 20, 30)
    images[1] = 1.0  # the mirror of image 0 is all ones: the pasted area is where image 0 became 1
    target = torch.tensor([0, 1])
    for seed in range(10):
        mixed, soft = Mixup(2, cutmix=1.0, cutmix_minmax=minmax, mode="batch")(images, target,
                                                                               np.random.default_rng(seed))
        pasted = float(mixed[0, 0].mean())
        assert float(soft[0, 1]) == pytest.approx(pasted, abs=1e-6)  # weight of the mirror's class = pasted area
        assert float(soft[0, 0]) == pytest.approx(1 - pasted, abs=1e-6)


def test_cutmix_box_clips_and_corrects_lambda():
    rng = np.random.default_rng(0)
    for lam in (0.1, 0.5, 0.9):
        (top, bottom, left, right), corrected = cutmix_box((3, 10, 10), lam, rng)
        assert 0 <= top <= bottom <= 10 and 0 <= left <= right <= 10
        assert corrected == pytest.approx(1 - (bottom - top) * (right - left) / 100)


def test_mixup_targets_without_mixing_are_smoothed_one_hot():
    soft = mix_targets(torch.tensor([2, 0]), 4, 1.0, smoothing=0.2)
    assert torch.allclose(soft, torch.tensor([[0.05, 0.05, 0.85, 0.05], [0.85, 0.05, 0.05, 0.05]]))
    mixed, soft = Mixup(4, mixup=1.0, prob=0.0)(torch.ones(2, 3, 4, 4), torch.tensor([2, 0]), np.random.default_rng(0))
    assert torch.equal(soft, torch.eye(4)[[2, 0]])  # prob 0: never mixed


def test_mixup_settings_are_checked():
    with pytest.raises(ValueError, match="even batch"):
        Mixup(3, mixup=1.0)(torch.zeros(3, 3, 4, 4), torch.tensor([0, 1, 2]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="mixup_mode"):
        Mixup(3, mixup=1.0, mode="row")
    with pytest.raises(ValueError, match="cutmix_minmax"):
        parse_minmax("0.9,0.1")
    assert parse_minmax("(0.2, 0.8)") == (0.2, 0.8) and parse_minmax(None) is None


# ---- transforms -------------------------------------------------------------------------------
def test_training_transform_is_seeded_valid_and_varies():
    transform, image = ImageClassifyTrainTransform(32), picture()
    seeds = [sample_seed(1, epoch, 7) for epoch in range(1, 9)]
    outs = [transform(image, s) for s in seeds]
    assert torch.equal(outs[0], transform(image, seeds[0]))  # reproducible per (seed, epoch, sample)
    assert len({float(o.sum()) for o in outs}) == len(outs)  # different every epoch
    assert all(o.shape == (3, 32, 32) and o.dtype == torch.float32 and torch.isfinite(o).all() for o in outs)


def test_every_rand_augment_op_keeps_images_in_range_and_changes_them():
    x = torch.rand(1, 3, 24, 24)
    for name, op in RAND_INCREASING_OPS.items():
        out = op(x, 9.0, np.random.default_rng(0)).clamp(0, 1)
        assert out.shape == x.shape and torch.isfinite(out).all(), name
        if name != "AutoContrast":  # a random image already spans ~[0, 1]
            assert not torch.allclose(out, x, atol=1e-3), name
    never = RandAugment(prob=0.0)(x, np.random.default_rng(0))
    assert torch.equal(never, x)


def test_random_erasing_fills_one_box_with_noise():
    x = torch.zeros(3, 32, 32)
    erased = random_erase(x.clone(), np.random.default_rng(0), prob=1.0)
    changed = (erased != 0).any(0)
    rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
    area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert changed.sum() == area  # a rectangle
    assert 0.02 * 1024 * 0.5 <= area <= 1024 / 3 * 1.5
    assert torch.equal(random_erase(x.clone(), np.random.default_rng(0), prob=0.0), x)


def test_center_crop_evaluation_transform():
    wide = picture(size=(64, 32))
    out = resize_center_crop(wide, 16)
    assert out.shape == (3, 16, 16)
    square = picture(size=(16, 16))
    assert torch.equal(resize_center_crop(square, 16), image_to_tensor(square, 16))


# ---- rows -------------------------------------------------------------------------------------
def make_task(tmp_path, rows, fixture_bpe_dir, **cfg):
    from omegaconf import OmegaConf

    from one_peace.tasks.vision_tasks.image_classify import ImageClassifyConfig, ImageClassifyTask

    (tmp_path / "d.tsv").write_text("\n".join(rows) + "\n")
    return ImageClassifyTask.setup_task(OmegaConf.structured(ImageClassifyConfig(
        bpe_dir=fixture_bpe_dir, data=str(tmp_path / "d.tsv"), valid_data=str(tmp_path / "d.tsv"),
        patch_image_size=32, num_classes=3, **cfg)))


def test_bad_rows_name_the_file_and_row_or_are_skipped_in_training(tmp_path, fixture_bpe_dir, user_dir):
    from one_peace.data_utils.dataset import BadSampleError

    picture().save(tmp_path / "a.png")
    rows = ["image\tlabel", "a.png\t1", "a.png\t4", "gone.png\t2", "a.png\tcat", "a.png", "a.png\t3"]
    task = make_task(tmp_path, rows, fixture_bpe_dir, mixup=0.8, cutmix=1.0)
    task.load_dataset("valid")
    valid = task.dataset("valid")
    assert int(valid[0]["target"]) == 0 and int(valid[5]["target"]) == 2  # 1-based in the file
    for index, message in [(1, "row 3: label 4 out of range: .*1-based, in \\[1, 3\\]"), (2, "d.tsv, row 4: .*gone.png"),
                           (3, "row 5: label 'cat' is not an integer"), (4, "d.tsv, row 6: missing fields: expected 2")]:
        with pytest.raises((BadSampleError, ValueError), match=message):
            valid[index]
    task.load_dataset("train")
    train = task.dataset("train")
    batch = train.collater([train[i] for i in range(6)])
    assert batch["num_skipped"] == 4 and batch["target"].shape == (2, 3)  # two good rows, mixed soft targets
    assert torch.allclose(batch["target"].sum(1), torch.ones(2))


def test_odd_training_batches_are_padded_for_mixup_and_validation_is_untouched(tmp_path, fixture_bpe_dir, user_dir):
    picture().save(tmp_path / "a.png")
    task = make_task(tmp_path, ["image\tlabel"] + [f"a.png\t{i % 3 + 1}" for i in range(3)], fixture_bpe_dir,
                     mixup=0.8)
    task.load_dataset("train")
    task.load_dataset("valid")
    train, valid = task.dataset("train"), task.dataset("valid")
    batch = train.collater([train[i] for i in range(3)])
    assert batch["net_input"]["src_images"].shape[0] == 4 and batch["id"].tolist() == [0, 1, 2, 0]
    again = train.collater([train[i] for i in range(3)])
    assert torch.equal(batch["net_input"]["src_images"], again["net_input"]["src_images"])  # seeded
    plain = image_to_tensor(picture(), 32)
    assert torch.equal(valid[0]["source_image"], plain) and valid.collater([valid[0]])["target"].tolist() == [0]


def test_task_settings_are_checked(tmp_path, fixture_bpe_dir, user_dir):
    with pytest.raises(ValueError, match="mixup_mode"):
        make_task(tmp_path, ["image\tlabel", "a.png\t1"], fixture_bpe_dir, mixup_mode="rows")
    with pytest.raises(ValueError, match="cutmix_minmax"):
        make_task(tmp_path, ["image\tlabel", "a.png\t1"], fixture_bpe_dir, cutmix_minmax="0.5")


# ---- converter --------------------------------------------------------------------------------
def imagenet_release(root, wnids=("n01440764", "n01443537", "n01484850"), per_class=2, flat_val=True):
    for c, wnid in enumerate(wnids):
        for i in range(per_class):
            (root / "train" / wnid).mkdir(parents=True, exist_ok=True)
            picture(c * 10 + i).save(root / "train" / wnid / f"{wnid}_{i}.JPEG", format="JPEG")
    solution = ["ImageId,PredictionString"]
    for i in range(1, 2 * len(wnids) + 1):
        wnid = wnids[i % len(wnids)]
        folder = root / "val" if flat_val else root / "val" / wnid
        folder.mkdir(parents=True, exist_ok=True)
        picture(100 + i).save(folder / f"ILSVRC2012_val_{i:08d}.JPEG", format="JPEG")
        solution.append(f"ILSVRC2012_val_{i:08d},{wnid} 1 2 30 40 {wnid} 5 5 20 20")
    (root / "LOC_val_solution.csv").write_text("\n".join(solution) + "\n")
    names = {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus",
             "n01484850": "great white shark, white shark"}
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {names.get(w, w)}\n" for w in wnids))
    return root


def test_converter_formats_agree(tmp_path):
    convert = run_script_module("image_classify/convert_imagenet.py").main
    root = imagenet_release(tmp_path / "release")
    out = tmp_path / "kaggle"
    convert(["--train-dir", str(root / "train"), "--val-dir", str(root / "val"), "--val-labels",
             str(root / "LOC_val_solution.csv"), "--synsets", str(root / "LOC_synset_mapping.txt"),
             "--out-dir", str(out)])
    train = (out / "imagenet_train.tsv").read_text().splitlines()
    assert train[0] == "image\tlabel" and len(train) == 7
    assert train[1] == "../release/train/n01440764/n01440764_0.JPEG\t1" and train[-1].endswith("\t3")
    val = (out / "imagenet_val.tsv").read_text().splitlines()
    assert val[1] == "../release/val/ILSVRC2012_val_00000001.JPEG\t2"  # n01443537 is the 2nd class
    assert (out / "imagenet_classes.tsv").read_text().splitlines()[:2] == ["class\twnid\tname", "0\tn01440764\ttench"]
    assert json.loads((out / "imagenet_label.json").read_text())["2"] == "great white shark"
    # The devkit's ground truth: class ids in the devkit's (here reversed) order, from its meta.mat
    # (a struct array; entries with children are not classes).
    from scipy.io import savemat

    devkit_order = ["n01484850", "n01443537", "n01440764"]
    synsets = [(i + 1, w, w, 0) for i, w in enumerate(devkit_order)] + [(1001, "n00001740", "entity", 3)]
    savemat(root / "meta.mat", {"synsets": np.array(synsets, dtype=[(k, "O") for k in (
        "ILSVRC2012_ID", "WNID", "words", "num_children")])})
    truth = [str(devkit_order.index(("n01440764", "n01443537", "n01484850")[i % 3]) + 1) for i in range(1, 7)]
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(truth) + "\n")
    convert(["--val-dir", str(root / "val"), "--val-labels", str(root / "ILSVRC2012_validation_ground_truth.txt"),
             "--devkit-meta", str(root / "meta.mat"), "--out-dir", str(tmp_path / "devkit")])
    assert (tmp_path / "devkit" / "imagenet_val.tsv").read_text() == (out / "imagenet_val.tsv").read_text()
    names = (tmp_path / "devkit" / "imagenet_classes.tsv").read_text().splitlines()
    assert names[1] == "0\tn01440764\tn01440764"  # without --synsets: sorted wnids, named by their wnid
    # Validation images in class folders.
    folders = imagenet_release(tmp_path / "folders", flat_val=False)
    convert(["--val-dir", str(folders / "val"), "--synsets", str(folders / "LOC_synset_mapping.txt"),
             "--out-dir", str(tmp_path / "folders_out"), "--absolute-paths"])
    rows = (tmp_path / "folders_out" / "imagenet_val.tsv").read_text().splitlines()
    assert len(rows) == 7 and rows[1].startswith(str(folders / "val" / "n01440764")) and rows[1].endswith("\t1")


def test_converter_errors_name_the_file_and_line(tmp_path):
    convert = run_script_module("image_classify/convert_imagenet.py").main
    root = imagenet_release(tmp_path / "release")
    out = str(tmp_path / "out")
    bad_synsets = tmp_path / "synsets.txt"
    bad_synsets.write_text("n01440764 tench\nnot-a-wnid fish\n")
    csv = root / "LOC_val_solution.csv"
    cases = [
        (["--train-dir", str(root / "train"), "--synsets", str(bad_synsets)], "synsets.txt, line 2"),
        (["--train-dir", str(root / "train"), "--synsets", str(tmp_path / "none.txt")], "synset mapping file not found"),
        (["--train-dir", str(root / "nowhere")], "not a directory"),
        (["--val-dir", str(root / "val"), "--val-labels", str(root / "none.txt")], "validation labels file not found"),
    ]
    (root / "gt.txt").write_text("1\n")
    cases.append((["--val-dir", str(root / "val"), "--val-labels", str(root / "gt.txt")], "give --devkit-meta"))
    (root / "wnids.txt").write_text("n01440764\n")
    (root / "gt.txt").write_text("1\n7\n")
    cases.append((["--val-dir", str(root / "val"), "--val-labels", str(root / "gt.txt"), "--devkit-meta",
                   str(root / "wnids.txt")], "gt.txt, line 2: expected a devkit class id in \\[1, 1\\]"))
    for argv, message in cases:
        with pytest.raises(SystemExit, match=message):
            convert(argv + ["--out-dir", out])
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:3] + ["ILSVRC2012_val_00000003,"] + lines[4:]) + "\n")
    with pytest.raises(SystemExit, match="LOC_val_solution.csv, line 4"):
        convert(["--val-dir", str(root / "val"), "--val-labels", str(csv), "--out-dir", out])
    csv.write_text("\n".join(lines[:-1]) + "\n")  # one validation image without a label
    with pytest.raises(SystemExit, match="1 images of .*val have no label in .*LOC_val_solution.csv"):
        convert(["--val-dir", str(root / "val"), "--val-labels", str(csv), "--out-dir", out])
    (root / "train" / "n09999999").mkdir()
    with pytest.raises(SystemExit, match="n09999999.*is not one of the 3 classes"):
        convert(["--train-dir", str(root / "train"), "--synsets", str(root / "LOC_synset_mapping.txt"),
                 "--out-dir", out])


# ---- templates --------------------------------------------------------------------------------
def test_template_sets_files_and_errors(tmp_path):
    from one_peace.hub.zero_shot import TEMPLATE_SETS, resolve_templates

    assert len(resolve_templates("clip80")) == 80 == len(set(TEMPLATE_SETS["clip80"]))
    assert resolve_templates(None) == list(TEMPLATE_SETS["default"])
    (tmp_path / "t.txt").write_text("a {}\n\nthe {} here\n")
    assert resolve_templates(tmp_path / "t.txt") == ["a {}", "the {} here"]
    with pytest.raises(ValueError, match=r"templates\[1\] = 'no slot'"):
        resolve_templates(["a {}", "no slot"])
    with pytest.raises(ValueError, match="neither a template set"):
        resolve_templates("clip81")
