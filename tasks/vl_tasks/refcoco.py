"""``refcoco``: RefCOCO / RefCOCO+ / RefCOCOg visual grounding -- the box a phrase refers to.

TSV ``uniq_id, image, text, region_coord`` with ``region_coord`` = ``x0,y0,x1,y1`` in the image's
stored pixels (with ``task.exif_transpose`` the box turns with the image into its upright frame).
The image is resized to ``patch_image_size`` squared (aspect not kept, as the official
``RandomResize([P], max_size=P)``); the target is the box normalised by the image size.  The ``vl``
classify model (4 outputs, ``use_image_features`` for RefCOCO/+) predicts ``sigmoid(logits)``.
Metric: ``iou_acc`` (percent of boxes with IoU >= 0.5 against the reference, in original pixels);
predictions hold each row's box in its image's pixels.  Training images get the official Gaussian
blur (``data_utils/augment.py``).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from fairseq.tasks import register_task

from ...data_utils.augment import refcoco_train_augment, sample_seed
from ...data_utils.collate import collate_tokens
from ...data_utils.dataset import TSVDataset
from ...data_utils.image import image_to_tensor, load_image, orient_box
from ...fairseq_glue.metric_logging import log_accuracy
from ...metrics.grounding import box_iou, boxes_to_pixels, iou_hits
from ..classification import ClassificationConfig, ClassificationTask, sample_ids


@dataclass
class RefCOCOConfig(ClassificationConfig):
    head_type: str = "vl"
    num_classes: Optional[int] = 4


def parse_box(value: str, width: int, height: int) -> torch.Tensor:
    """``x0,y0,x1,y1`` pixels -> float64 tensor; ValueError for a malformed, degenerate or outside box."""
    try:
        box = [float(v) for v in value.split(",")]
    except ValueError:
        raise ValueError(f"region_coord {value!r} is not four numbers x0,y0,x1,y1") from None
    if len(box) != 4:
        raise ValueError(f"region_coord {value!r} is not four numbers x0,y0,x1,y1")
    x0, y0, x1, y1 = box
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"region_coord {value!r} is degenerate (needs x0 < x1 and y0 < y1)")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ValueError(f"region_coord {value!r} lies outside the {width}x{height} image")
    return torch.tensor(box, dtype=torch.float64)


class RefCOCODataset(TSVDataset):
    def __init__(self, split, reader, tokenizer, patch_image_size, skip_bad_samples=True):
        super().__init__(split, reader, skip_bad_samples)
        self.tokenizer = tokenizer
        self.size = patch_image_size
        # Training augmentation (Gaussian blur), seeded per sample and epoch.
        self.augment = refcoco_train_augment() if split == "train" else None
        self.seed, self.epoch = torch.initial_seed() % 2 ** 31, 1

    def load_item(self, index, row):
        image, orientation = load_image(self.resolve(self.field(row, "image")), self.exif_transpose,
                                        return_orientation=True)
        width, height = image.size
        if orientation in (5, 6, 7, 8):  # region_coord is in the stored pixels, turned with the image
            stored = parse_box(self.field(row, "region_coord"), height, width)
            box = orient_box(stored, orientation, height, width)
        else:
            box = orient_box(parse_box(self.field(row, "region_coord"), width, height), orientation, width, height)
        normaliser = torch.tensor([width, height, width, height], dtype=torch.float64)
        return {"uniq_id": row.get("uniq_id", ""),
                "source_text": self.tokenizer.encode(self.field(row, "text"), clean=True),
                "source_image": image_to_tensor(image, self.size, self.augment,
                                                sample_seed(self.seed, self.epoch, index)),
                "target": (box / normaliser).float(),
                "w_resize_ratio": torch.tensor(self.size / width), "h_resize_ratio": torch.tensor(self.size / height),
                "region_coord": box.float()}

    def collate(self, samples):
        net_input = {"src_tokens": collate_tokens([s["source_text"] for s in samples], pad_idx=self.tokenizer.pad),
                     "src_images": torch.stack([s["source_image"] for s in samples])}
        return {"net_input": net_input, "target": torch.stack([s["target"] for s in samples]),
                "w_resize_ratios": torch.stack([s["w_resize_ratio"] for s in samples]),
                "h_resize_ratios": torch.stack([s["h_resize_ratio"] for s in samples]),
                "region_coords": torch.stack([s["region_coord"] for s in samples]),
                "uniq_ids": [s["uniq_id"] for s in samples]}


@register_task("refcoco", dataclass=RefCOCOConfig)
class RefCOCOTask(ClassificationTask):
    DEFAULT_COLS = "uniq_id,image,text,region_coord"
    TARGET = "box"

    def build_dataset(self, split, reader):
        return RefCOCODataset(split, reader, self.tokenizer, self.cfg.patch_image_size,
                              skip_bad_samples=self.skip_bad(split))

    def pixel_boxes(self, logits, sample) -> torch.Tensor:
        return boxes_to_pixels(logits.cpu(), sample["w_resize_ratios"].cpu(), sample["h_resize_ratios"].cpu(),
                               self.cfg.patch_image_size)

    def metric_logs(self, logits, sample) -> Dict:
        hits = iou_hits(self.pixel_boxes(logits, sample), sample["region_coords"].cpu())
        return {"_acc_score": float(hits.sum()), "_acc_cnt": int(hits.numel())}

    def predictions(self, logits, sample) -> List[Dict]:
        boxes = self.pixel_boxes(logits, sample)
        refs = sample["region_coords"].cpu().double()
        ious = box_iou(boxes, refs)
        return [{"uniq_id": uid, "box": boxes[i].tolist(), "target_box": refs[i].tolist(), "iou": float(ious[i])}
                for i, uid in enumerate(sample_ids(sample))]

    def reduce_split_metrics(self, logging_outputs) -> None:
        log_accuracy(logging_outputs, key="iou_acc")
