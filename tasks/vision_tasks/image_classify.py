"""``image_classify``: single-label image classification (ImageNet-1K), top-1 ``accuracy`` and ``top5``.

TSV with the header ``image, label`` (official layout: two columns, no ``selected_cols``); ``label`` is
1-based in the file (1..``num_classes``) and stored as ``label - 1``.  The ``image`` classify model
(attention pooling over the patch tokens, or the CLS token with ``attn_pooling: false``) gives the logits.

Transforms (official ``ImageClassifyDataset``): evaluation ``Resize([P, P])`` bicubic -> ToTensor -> CLIP
Normalize, or with ``center_crop`` Resize(P) on the shorter side -> CenterCrop(P); training timm's
RandAugment pipeline (``data_utils/classify_transforms.py``) or, with ``raw_transform``, the NLVR2
augmentations (``data_utils/augment.py``).  Mixup/CutMix (``data_utils/mixup.py``) run in the training
collater and turn the targets into (B, num_classes) soft targets, which ``classify_criterion`` trains with
soft-target cross-entropy.  ``task.label_smoothing`` smooths those mixed targets only (timm); the hard-label
cross-entropy has ``criterion.label_smoothing``.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
from fairseq.tasks import register_task

from ...data_utils.augment import nlvr2_train_augment, sample_seed
from ...data_utils.classify_transforms import ImageClassifyTrainTransform, resize_center_crop
from ...data_utils.dataset import TSVDataset
from ...data_utils.image import image_to_tensor, load_image
from ...data_utils.mixup import MODES, Mixup, parse_minmax
from ...fairseq_glue.metric_logging import log_accuracy
from ...metrics.accuracy import topk_accuracy_sum
from ..classification import ClassificationConfig, ClassificationTask, move_like, sample_ids

logger = logging.getLogger(__name__)

TOP_K = 5


@dataclass
class ImageClassifyConfig(ClassificationConfig):
    head_type: str = "image"
    num_classes: Optional[int] = 1000
    color_jitter: float = field(default=0.4, metadata={
        "help": "official field; timm applies colour jitter only without RandAugment, so it has no effect"})
    center_crop: bool = field(default=False, metadata={
        "help": "evaluate on Resize(P) shorter side + CenterCrop(P) instead of Resize([P, P])"})
    raw_transform: bool = field(default=False, metadata={
        "help": "train with the NLVR2 augmentations instead of timm's RandAugment pipeline"})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "label smoothing of the mixup/cutmix soft targets (hard labels: criterion.label_smoothing)"})
    mixup: float = field(default=0.0, metadata={"help": "mixup alpha, mixup enabled if > 0"})
    cutmix: float = field(default=0.0, metadata={"help": "cutmix alpha, cutmix enabled if > 0"})
    cutmix_minmax: Optional[str] = field(default=None, metadata={
        "help": "'min,max' cutmix box side ratios; overrides the alpha and enables cutmix"})
    mixup_prob: float = field(default=1.0, metadata={"help": "probability of mixing a batch (or pair/element)"})
    mixup_switch_prob: float = field(default=0.5, metadata={
        "help": "probability of cutmix instead of mixup when both are enabled"})
    mixup_mode: str = field(default="batch", metadata={"help": "draw the mixing per batch, pair or elem"})


def parse_label(value: str, num_classes: int) -> int:
    """The 0-based class of a 1-based ``label`` cell; ValueError naming the value otherwise."""
    try:
        label = int(value.strip())
    except (ValueError, AttributeError):
        raise ValueError(f"label {value!r} is not an integer class (1-based)") from None
    if not 1 <= label <= num_classes:
        raise ValueError(f"label {label} out of range: image_classify labels are 1-based, in [1, {num_classes}]")
    return label - 1


class ImageClassifyDataset(TSVDataset):
    def __init__(self, split, reader, num_classes, patch_image_size, center_crop=False, raw_transform=False,
                 mixup: Optional[Mixup] = None, skip_bad_samples=True):
        super().__init__(split, reader, skip_bad_samples)
        self.num_classes, self.patch_image_size, self.center_crop = num_classes, patch_image_size, center_crop
        self.train = split == "train"
        self.raw_augment = nlvr2_train_augment() if self.train and raw_transform else None
        self.train_transform = ImageClassifyTrainTransform(patch_image_size) if self.train else None
        self.mixup = mixup if self.train else None
        self.seed, self.epoch = torch.initial_seed() % 2 ** 31, 1

    def image(self, img, index):
        if not self.train:
            if self.center_crop:
                return resize_center_crop(img, self.patch_image_size)
            return image_to_tensor(img, self.patch_image_size)
        seed = sample_seed(self.seed, self.epoch, index)
        if self.raw_augment is not None:
            return image_to_tensor(img, self.patch_image_size, self.raw_augment, seed)
        return self.train_transform(img, seed)

    def load_item(self, index, row):
        # The label first: a bad label is reported without reading the image.
        label = parse_label(self.field(row, "label"), self.num_classes)
        img = load_image(self.resolve(self.field(row, "image")), self.exif_transpose)
        return {"source_image": self.image(img, index), "target": torch.tensor(label)}

    def collate(self, samples):
        images = torch.stack([s["source_image"] for s in samples])
        target = torch.stack([s["target"] for s in samples])
        ids = torch.tensor([s["id"] for s in samples])
        if self.mixup is not None:
            if images.size(0) % 2:  # official: the first sample repeated to an even batch
                images, target, ids = (torch.cat([t, t[:1]]) for t in (images, target, ids))
            rng = np.random.default_rng([self.seed, self.epoch, *ids.tolist()])
            images, target = self.mixup(images, target, rng)
        return {"net_input": {"src_images": images}, "target": target, "id": ids, "nsentences": images.size(0)}


@register_task("image_classify", dataclass=ImageClassifyConfig)
class ImageClassifyTask(ClassificationTask):
    DEFAULT_COLS = "image,label"
    TARGET = "single"

    def __init__(self, cfg, dictionary=None, tokenizer=None):
        super().__init__(cfg, dictionary, tokenizer)
        if cfg.mixup_mode not in MODES:
            raise ValueError(f"task.mixup_mode must be one of {MODES}, got {cfg.mixup_mode!r}")
        parse_minmax(cfg.cutmix_minmax)  # a bad value fails at start-up, not in the first batch
        if cfg.label_smoothing and not Mixup.enabled(cfg.mixup, cfg.cutmix, cfg.cutmix_minmax):
            logger.warning("task.label_smoothing only smooths mixup/cutmix targets (official); without them "
                           "set criterion.label_smoothing")

    def build_dataset(self, split, reader):
        cfg = self.cfg
        mixup = None
        if split == "train" and Mixup.enabled(cfg.mixup, cfg.cutmix, cfg.cutmix_minmax):
            mixup = Mixup(self.num_classes, cfg.mixup, cfg.cutmix, cfg.cutmix_minmax, cfg.mixup_prob,
                          cfg.mixup_switch_prob, cfg.mixup_mode, cfg.label_smoothing)
        return ImageClassifyDataset(split, reader, self.num_classes, cfg.patch_image_size, cfg.center_crop,
                                    cfg.raw_transform, mixup, skip_bad_samples=self.skip_bad(split))

    def metric_logs(self, logits, sample) -> Dict:
        logs = super().metric_logs(logits, sample)
        target = move_like(sample["target"], logits)
        if target.dim() == 1:  # mixed soft targets (training) have no top-5
            logs["_top5_score"], logs["_top5_cnt"] = topk_accuracy_sum(logits.float(), target, TOP_K)
        return logs

    def reduce_split_metrics(self, logging_outputs) -> None:
        super().reduce_split_metrics(logging_outputs)
        log_accuracy(logging_outputs, key="top5", prefix="_top5")

    def predictions(self, logits, sample) -> List[Dict]:
        """Per image: the arg-max class, the top-5 classes with their softmax probabilities (ImageNet's
        1000 logits per image would make the predictions file hundreds of MB), the target, names."""
        probs = logits.float().softmax(dim=-1).cpu()
        top = probs.topk(min(TOP_K, probs.size(-1)), dim=-1)
        out = []
        for i, uid in enumerate(sample_ids(sample)):
            classes = top.indices[i].tolist()
            item = {"uniq_id": uid, "prediction": classes[0], "top5": classes,
                    "top5_probabilities": [round(p, 6) for p in top.values[i].tolist()]}
            if "target" in sample:
                item["target"] = int(sample["target"][i])
            if self.label_names is not None:
                item["prediction_name"] = self.label_names.get(classes[0])
                item["top5_names"] = [self.label_names.get(c) for c in classes]
            out.append(item)
        return out
