"""``semantic_segmentation``: per-pixel classes (ADE20K by default), UperNet on the image encoder.

TSV ``image, label_map``: paths of an RGB image and of its single-channel class-index PNG of the
same size (``run_scripts/segmentation/convert_ade20k.py`` writes them for ADEChallengeData2016).
With ``reduce_zero_label`` (ADE20K) the annotation's 0 ("other") is ignored and k becomes class k-1;
255 is always ignored.  Training rows go through the mmseg pipeline of
``data_utils/segmentation.py`` with crops of ``patch_image_size``; validation and
``one-peace-evaluate`` rescale each image to the test scale, run sliding windows of the crop size at
``slide_stride`` (overlaps averaged), resize the logits to the label map and count a confusion
matrix; the split's ``mIoU``, ``mAcc``, ``aAcc`` (percent, ``metrics/segmentation.py``) come from
the summed matrices.  With a results path, ``one-peace-evaluate`` also writes each predicted mask as
a palette PNG (ADE20K colours, annotation convention) and the per-class IoU/Acc.

A label map that cannot be read, whose size differs from its image, or with a value outside the
classes is a bad row naming the file (skipped and counted in training, an error in evaluation).
"""
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.tasks import register_task

from ...data_utils.ade20k import CLASSES as ADE20K_CLASSES
from ...data_utils.augment import sample_seed
from ...data_utils.dataset import TSVDataset
from ...data_utils.image import load_image, orient_array
from ...data_utils.labels import load_label_names
from ...data_utils.segmentation import (
    IGNORE_INDEX,
    SegmentationTransform,
    load_label_map,
    prepare_label,
    save_mask_png,
)
from ...fairseq_glue.metric_logging import as_tensor
from ...metrics.pixels import pixel_cross_entropy
from ...metrics.segmentation import confusion_matrix, metrics_from_confusion, per_class
from ...models.segmentation import slide_logits
from ..base_task import BaseTask, BaseTaskConfig

SPLIT_METRICS = ("mIoU", "mAcc", "aAcc")


@dataclass
class SemanticSegmentationConfig(BaseTaskConfig):
    head_type: str = "image"
    num_classes: Optional[int] = 150
    patch_image_size: int = field(default=512, metadata={"help": "training crop and sliding window side"})
    reduce_zero_label: bool = field(default=True, metadata={
        "help": "annotation 0 is 'other' (ignored) and k is class k-1 (ADE20K)"})
    resize_long: int = field(default=2048, metadata={"help": "rescale bound of the long side (mmseg img_scale)"})
    resize_short: int = field(default=512, metadata={"help": "rescale bound of the short side (mmseg img_scale)"})
    ratio_range: str = field(default="0.5,2.0", metadata={"help": "training rescale ratio range"})
    cat_max_ratio: float = field(default=0.75, metadata={"help": "re-draw crops where one class exceeds this"})
    photometric: bool = field(default=True, metadata={"help": "training photometric distortion"})
    slide_stride: int = field(default=341, metadata={"help": "sliding-window stride at evaluation"})
    label_file: Optional[str] = field(default=None, metadata={
        "help": "JSON {class id: name} (default: the ADE20K names for 150 classes)"})


class SegmentationDataset(TSVDataset):
    def __init__(self, split, reader, transform: SegmentationTransform, num_classes: int,
                 reduce_zero_label: bool, skip_bad_samples=True):
        super().__init__(split, reader, skip_bad_samples)
        self.transform, self.num_classes, self.reduce_zero_label = transform, num_classes, reduce_zero_label
        self.seed, self.epoch = torch.initial_seed() % 2 ** 31, 1

    def load_item(self, index, row):
        image_path = self.resolve(self.field(row, "image"))
        label_path = self.resolve(self.field(row, "label_map"))
        image, orientation = load_image(image_path, self.exif_transpose, return_orientation=True)
        label = orient_array(load_label_map(label_path), orientation)  # label maps follow the stored pixels
        if label.shape != (image.height, image.width):
            raise ValueError(f"label map {label_path} is {label.shape[1]}x{label.shape[0]} but its image "
                             f"{image_path} is {image.width}x{image.height}")
        label = prepare_label(label, self.num_classes, self.reduce_zero_label, label_path)
        uid = os.path.splitext(os.path.basename(image_path))[0]
        if self.split == "train":
            pixels, target = self.transform.train(image, label, sample_seed(self.seed, self.epoch, index))
        else:
            pixels, target = self.transform.evaluate(image), torch.from_numpy(label)
        return {"uniq_id": uid, "source_image": pixels, "target": target}

    def collate(self, samples):
        images, targets = [s["source_image"] for s in samples], [s["target"] for s in samples]
        if self.split == "train":  # equal crops
            images, targets = torch.stack(images), torch.stack(targets)
        # Evaluation keeps each image at its own size (lists): it is run window by window.
        return {"net_input": {"src_images": images}, "target": targets, "uniq_ids": [s["uniq_id"] for s in samples]}


@register_task("semantic_segmentation", dataclass=SemanticSegmentationConfig)
class SemanticSegmentationTask(BaseTask):
    TARGET = "pixels"  # a class per pixel: what segmentation_criterion trains
    DEFAULT_COLS = "image,label_map"

    def __init__(self, cfg, dictionary=None, tokenizer=None):
        super().__init__(cfg, dictionary, tokenizer)
        if not cfg.num_classes:
            raise ValueError("task semantic_segmentation: set task.num_classes")
        self.num_classes = int(cfg.num_classes)
        if cfg.label_file:
            names = load_label_names(cfg.label_file)
            self.class_names = [names.get(i, str(i)) for i in range(self.num_classes)]
        elif self.num_classes == len(ADE20K_CLASSES):
            self.class_names = list(ADE20K_CLASSES)
        else:
            self.class_names = [str(i) for i in range(self.num_classes)]
        self.mask_dir: Optional[str] = None

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        return cls(cfg)  # no text: no BPE files or dictionary needed

    def build_dataset(self, split, reader):
        cfg = self.cfg
        try:
            low, high = (float(v) for v in str(cfg.ratio_range).split(","))
        except ValueError:
            raise ValueError(f"task.ratio_range must be 'low,high', got {cfg.ratio_range!r}") from None
        if not 0 < low <= high:
            raise ValueError(f"task.ratio_range must satisfy 0 < low <= high, got {cfg.ratio_range!r}")
        transform = SegmentationTransform(cfg.patch_image_size, cfg.resize_long, cfg.resize_short, (low, high),
                                          cfg.cat_max_ratio, cfg.photometric)
        return SegmentationDataset(split, reader, transform, self.num_classes, cfg.reduce_zero_label,
                                   skip_bad_samples=self.skip_bad(split))

    def set_results_path(self, path: str) -> None:
        """Where ``eval_step`` writes the predicted masks (``one-peace-evaluate --results-path``)."""
        self.mask_dir = path

    # ---- inference and metrics --------------------------------------------------------------------
    def image_logits(self, model, image: torch.Tensor, size) -> torch.Tensor:
        """(C, H, W) logits of one test-scale image, resized to the label map's size."""
        logits = slide_logits(model, image, self.cfg.patch_image_size, self.cfg.slide_stride, self.num_classes)
        return F.interpolate(logits[None], size=tuple(size), mode="bilinear", align_corners=False)[0]

    def _evaluate_batch(self, model, sample, with_loss: bool):
        model.eval()
        confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        losses, predictions = [], []
        for image, target, uid in zip(sample["net_input"]["src_images"], sample["target"], sample["uniq_ids"]):
            logits = self.image_logits(model, image, target.shape)
            if with_loss:
                losses.append(pixel_cross_entropy(logits, target, IGNORE_INDEX).item())
            pred = logits.argmax(dim=0).cpu().numpy()
            cm = confusion_matrix(pred, target.cpu().numpy(), self.num_classes, IGNORE_INDEX)
            confusion += cm
            predictions.append(self._prediction(uid, pred, cm))
        return confusion, losses, predictions

    def _prediction(self, uid: str, pred: np.ndarray, cm: np.ndarray) -> Dict:
        item = {"uniq_id": uid, "height": int(pred.shape[0]), "width": int(pred.shape[1]),
                "aAcc": round(float(metrics_from_confusion(cm)["aAcc"]), 4) if cm.sum() else None}
        if self.mask_dir is not None:
            item["mask"] = os.path.join(self.mask_dir, f"{uid}.png")
            save_mask_png(pred, item["mask"], self.num_classes, self.cfg.reduce_zero_label)
        return item

    def valid_step(self, sample, model, criterion):
        if "net_input" not in sample:  # every row of the batch was bad
            return torch.zeros(()), 0, {"num_skipped": sample.get("num_skipped", 0)}
        with torch.no_grad():
            confusion, losses, _ = self._evaluate_batch(model, sample, with_loss=True)
        n = len(losses)
        log = {"loss": sum(losses) / n, "seg_loss": sum(losses) / n, "sample_size": 1, "nsentences": n,
               "ntokens": n, "seg_confusion": torch.from_numpy(confusion)}
        return torch.tensor(log["loss"]), 1, log

    @torch.no_grad()
    def eval_step(self, model, sample) -> Tuple[Dict, List[Dict]]:
        if "net_input" not in sample:
            return {}, []
        confusion, _, predictions = self._evaluate_batch(model, sample, with_loss=False)
        return {"seg_confusion": torch.from_numpy(confusion)}, predictions

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        self.reduce_split_metrics(logging_outputs)

    def reduce_split_metrics(self, logging_outputs) -> None:
        parts = [as_tensor(log["seg_confusion"]).long() for log in logging_outputs if "seg_confusion" in log]
        if not parts:
            return
        # A running sum (the matrix of the whole split never needs more than one C x C array).
        metrics.log_scalar_sum("_seg_confusion", torch.stack(parts).sum(dim=0))
        for name in SPLIT_METRICS:
            metrics.log_derived(name, lambda meters, name=name: round(
                metrics_from_confusion(meters["_seg_confusion"].sum)[name], 4))

    def split_details(self, meters) -> Dict:
        """Per-class IoU and accuracy (percent; None where undefined), for the evaluation results."""
        if "_seg_confusion" not in meters:
            return {}
        return {"per_class": per_class(metrics_from_confusion(meters["_seg_confusion"].sum), self.class_names)}

    @classmethod
    def logging_outputs_can_be_summed(cls, criterion) -> bool:
        return criterion.logging_outputs_can_be_summed()  # the confusion matrices add up
