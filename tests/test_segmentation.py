"""Semantic segmentation: mIoU against hand counts, the joint augmentation, sliding windows, the UperNet
model's checkpoint start, and bad rows naming their file."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from one_peace.data_utils.segmentation import (
    IGNORE_INDEX,
    SegmentationTransform,
    load_label_map,
    prepare_label,
    rescale_size,
    save_mask_png,
)
from one_peace.metrics.segmentation import confusion_matrix, mean_iou, metrics_from_confusion
from one_peace.models.architectures import PRESETS, SEGMENTATION_HEADS, apply_preset, preset_config
from one_peace.models.config import OnePeacePretrainConfig, OnePeaceSegmentationConfig
from one_peace.models.segmentation import OnePeaceSegmentationModel, slide_logits, window_starts


# ---- metric ------------------------------------------------------------------------------------
def test_mean_iou_matches_hand_counts():
    # 4 classes; class 3 is absent from labels and predictions; 255 pixels are ignored.
    label = np.array([[0, 0, 1, 1],
                      [0, 2, 2, 255],
                      [255, 1, 1, 2]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 2, 0, 3],   # the 3 lies on an ignored pixel: not counted
                     [2, 1, 0, 2]])  # the 2 on an ignored pixel neither
    cm = confusion_matrix(pred, label, 4)
    # rows = label, cols = prediction (10 counted pixels)
    assert cm.tolist() == [[2, 1, 0, 0],   # label 0: (0,0) (1,0) -> 0, (0,1) -> 1
                           [1, 3, 0, 0],   # label 1: (0,2) (0,3) (2,1) -> 1, (2,2) -> 0
                           [1, 0, 2, 0],   # label 2: (1,1) (2,3) -> 2, (1,2) -> 0
                           [0, 0, 0, 0]]
    out = mean_iou(pred, label, 4)
    # IoU = tp / (label area + prediction area - tp); prediction areas 4, 4, 2
    iou = [2 / (3 + 4 - 2), 3 / (4 + 4 - 3), 2 / (3 + 2 - 2)]
    acc = [2 / 3, 3 / 4, 2 / 3]
    assert np.allclose(out["IoU"][:3], np.array(iou) * 100) and math.isnan(out["IoU"][3])
    assert np.allclose(out["Acc"][:3], np.array(acc) * 100) and math.isnan(out["Acc"][3])
    assert out["mIoU"] == pytest.approx(np.mean(iou) * 100)
    assert out["mAcc"] == pytest.approx(np.mean(acc) * 100)
    assert out["aAcc"] == pytest.approx(7 / 10 * 100)


def test_predicted_but_absent_class_counts_zero_and_lists_torch_and_sums():
    label = torch.tensor([[0, 0], [0, 0]])
    pred = torch.tensor([[0, 1], [0, 0]])
    out = mean_iou(pred, label, 3)
    assert out["IoU"][1] == 0 and math.isnan(out["Acc"][1]) and math.isnan(out["IoU"][2])
    assert out["mIoU"] == pytest.approx((75 + 0) / 2)
    maps = [np.random.default_rng(i).integers(0, 3, (5, 6)) for i in range(3)]
    preds = [np.random.default_rng(10 + i).integers(0, 3, (5, 6)) for i in range(3)]
    summed = sum(confusion_matrix(p, t, 3) for p, t in zip(preds, maps))
    assert (confusion_matrix(preds, maps, 3) == summed).all()
    assert metrics_from_confusion(summed)["mIoU"] == pytest.approx(mean_iou(preds, maps, 3)["mIoU"])


def test_metric_refuses_labels_outside_the_classes():
    with pytest.raises(ValueError, match=r"label values \[7\] lie outside \[0, 3\)"):
        confusion_matrix(np.zeros((2, 2)), np.array([[0, 7], [255, 1]]), 3)


# ---- labels and augmentation --------------------------------------------------------------------
def test_reduce_zero_label_and_bad_values_name_the_file():
    raw = np.array([[0, 1, 150], [255, 2, 3]])
    assert prepare_label(raw, 150, True, "x.png").tolist() == [[255, 0, 149], [255, 1, 2]]
    with pytest.raises(ValueError, match=r"label map a\.png has values \[151\]"):
        prepare_label(np.array([[151, 1]]), 150, True, "a.png")
    with pytest.raises(ValueError, match=r"label map b\.png has values \[5\]"):
        prepare_label(np.array([[5, 1]]), 5, False, "b.png")


COLOURS = np.array([[230, 20, 20], [20, 200, 40], [30, 40, 230], [240, 230, 30]])


def _blocks(width=90, height=70):
    """Image whose colour encodes the class (blocks of 4 classes), and its label."""
    label = np.zeros((height, width), dtype=np.int64)
    label[:, width // 3:] = 1
    label[height // 2:, : width // 2] = 2
    label[height // 2:, 2 * width // 3:] = 3
    label[:16, :16] = IGNORE_INDEX
    image = Image.fromarray(COLOURS[np.where(label == IGNORE_INDEX, 0, label)].astype(np.uint8))
    return image, label


def _decode(pixels):
    from one_peace.data_utils.image import CLIP_MEAN, CLIP_STD

    rgb = pixels * torch.tensor(CLIP_STD).view(3, 1, 1) + torch.tensor(CLIP_MEAN).view(3, 1, 1)
    rgb = (rgb * 255).permute(1, 2, 0).numpy()
    return np.argmin(((rgb[:, :, None, :] - COLOURS[None, None]) ** 2).sum(-1), axis=-1)


def test_joint_augmentation_keeps_image_and_label_aligned():
    image, label = _blocks()
    transform = SegmentationTransform(crop=48, long=400, short=70, ratio_range=(0.5, 2.0), cat_max_ratio=0.75,
                                      photometric=False)
    flips = set()
    for seed in range(12):
        pixels, target = transform.train(image, label, seed)
        assert pixels.shape == (3, 48, 48) and target.shape == (48, 48) and target.dtype == torch.int64
        t = target.numpy()
        assert set(np.unique(t)) <= {0, 1, 2, 3, IGNORE_INDEX}  # nearest: no blended label values
        padded = t == IGNORE_INDEX
        # Interior pixels (3x3 neighbourhood of one class): the image's colour is the label's class.
        core = np.zeros_like(t, dtype=bool)
        core[1:-1, 1:-1] = True
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                core[1:-1, 1:-1] &= t[1 + dy:47 + dy, 1 + dx:47 + dx] == t[1:-1, 1:-1]
        core &= ~padded
        assert core.sum() > 100
        assert (_decode(pixels)[core] == t[core]).all(), seed
        flips.add(bool(t[10, 2] == 1))  # class 1 sits right of class 0 unless flipped
    assert len(flips) == 2  # both orientations were drawn


def test_augmentation_is_deterministic_per_seed_and_pads_small_images():
    image, label = _blocks(40, 30)
    transform = SegmentationTransform(crop=64, long=200, short=30, ratio_range=(1.0, 1.0), photometric=True)
    a, b, c = transform.train(image, label, 5), transform.train(image, label, 5), transform.train(image, label, 6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # 40x30 at ratio 1 stays 40x30: the rest of the 64x64 crop is padding (label ignored, image 0).
    assert (a[1][30:] == IGNORE_INDEX).all() and (a[1][:, 40:] == IGNORE_INDEX).all()
    assert (a[0][:, 30:] == 0).all()
    assert rescale_size(683, 512, 2048, 512) == (683, 512) and rescale_size(500, 300, 2048, 512) == (853, 512)


def test_label_map_reading_errors_and_palette_png(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"cannot read label map .*rgb\.png: mode RGB"):
        load_label_map(str(tmp_path / "rgb.png"))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"cannot read label map .*broken\.png"):
        load_label_map(str(tmp_path / "broken.png"))
    save_mask_png(np.array([[0, 1], [149, 2]]), str(tmp_path / "m.png"), 150, reduce_zero_label=True)
    mask = Image.open(tmp_path / "m.png")
    assert mask.mode == "P" and np.asarray(mask).tolist() == [[1, 2], [150, 3]]
    assert mask.getpalette()[3:6] == [120, 120, 120]  # ADE20K's colour of class 0 (wall)


# ---- model and sliding windows ------------------------------------------------------------------
def _tiny_model(crop=32, num_classes=5, **cfg_overrides):
    cfg = OnePeaceSegmentationConfig()
    apply_preset(cfg, dict(PRESETS["tiny"], **SEGMENTATION_HEADS["tiny"]), OnePeaceSegmentationConfig())
    cfg.encoder.image_adapter.rel_bucket_size = crop // 16
    for key, value in cfg_overrides.items():
        setattr(cfg, key, value)
    torch.manual_seed(0)
    return OnePeaceSegmentationModel(cfg, num_classes).eval()


def test_window_grid_follows_mmseg():
    assert window_starts(512, 512, 341) == [0]
    assert window_starts(683, 512, 341) == [0, 171]
    assert window_starts(1100, 512, 341) == [0, 341, 588]
    assert window_starts(20, 32, 16) == [0]


@torch.no_grad()
def test_slide_equals_one_pass_when_the_window_covers_the_image_and_pads_small_images():
    model = _tiny_model()
    image = torch.randn(3, 32, 32)
    assert torch.allclose(slide_logits(model, image, 32, 16, 5), model(image[None])[0], atol=1e-6)
    small = torch.randn(3, 20, 27)
    padded = torch.nn.functional.pad(small, (0, 5, 0, 12))
    out = slide_logits(model, small, 32, 16, 5)
    assert out.shape == (5, 20, 27)
    assert torch.allclose(out, model(padded[None])[0, :, :20, :27], atol=1e-6)


def test_slide_averages_overlapping_windows():
    seen = []

    def forward(batch):  # constant logits per window: its index
        out = torch.zeros(batch.size(0), 2, batch.size(2), batch.size(3))
        for i in range(batch.size(0)):
            out[i] = len(seen)
            seen.append(i)
        return out

    out = slide_logits(forward, torch.zeros(3, 16, 24), 16, 8, 2, windows_per_batch=1)
    assert len(seen) == 2  # windows at x = 0 and 8
    assert out[0, 0, 0] == 0 and out[0, 0, 12] == 0.5 and out[0, 0, 20] == 1


def test_model_outputs_layers_and_checkpoint_start():
    from one_peace.models import checkpoint as ckpt
    from one_peace.models.one_peace import OnePeacePretrainModel

    model = _tiny_model().train()
    logits, aux = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == aux.shape == (2, 5, 32, 32)
    assert model.layers == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="seg_layers must be four"):
        _tiny_model(seg_layers="0,1")
    # A pretraining checkpoint fills the encoder; the decoder starts fresh, nothing else may be missing.
    cfg = preset_config(OnePeacePretrainConfig, "tiny")
    cfg.encoder.image_adapter.rel_bucket_size = 2
    source = OnePeacePretrainModel(cfg, vocab_size=50)
    seg = _tiny_model()
    ckpt.load_into(seg, source.state_dict())
    key = "encoder_wrapper.fusion_model.layers.1.image_ffn.2.weight"
    assert torch.equal(seg.state_dict()[key], source.state_dict()[key])
    assert all(not k.startswith(("seg_head", "aux_head")) for k in source.state_dict())
    broken = {k: v for k, v in source.state_dict().items() if "image_ffn" not in k}
    with pytest.raises(ckpt.CheckpointMismatchError, match="image_ffn"):
        ckpt.load_into(_tiny_model(), broken)
