"""``nlvr2``: NLVR2 visual reasoning -- is the statement true of the image pair? (accuracy).

TSV ``uniq_id, text, image1, image2, label`` with label ``True`` (class 0) or ``False`` (class 1).
The ``vl`` classify model (``use_two_images``) runs two joint passes, (text, image1) and
(text, image2) with the second image's ``type_embedding_2``, and classifies the two pooled text
features concatenated.  Training images get the official augmentations (``data_utils/augment.py``).
"""
from dataclasses import dataclass
from typing import Optional

import torch
from fairseq.tasks import register_task

from ...data_utils.augment import nlvr2_train_augment, sample_seed
from ...data_utils.collate import collate_tokens
from ...data_utils.dataset import TSVDataset
from ...data_utils.image import image_to_tensor, load_image
from ..classification import ClassificationConfig, ClassificationTask

LABELS = {"True": 0, "False": 1}


@dataclass
class NLVR2Config(ClassificationConfig):
    head_type: str = "vl"
    num_classes: Optional[int] = 2
    use_two_images: bool = True


class NLVR2Dataset(TSVDataset):
    def __init__(self, split, reader, tokenizer, patch_image_size, skip_bad_samples=True):
        super().__init__(split, reader, skip_bad_samples)
        self.tokenizer = tokenizer
        self.patch_image_size = patch_image_size
        # Training augmentation (colour jitter, blur, flip, RandAugment), seeded per sample and epoch.
        self.augment = nlvr2_train_augment() if split == "train" else None
        self.seed, self.epoch = torch.initial_seed() % 2 ** 31, 1

    def image(self, row, column, index, which):
        seed = sample_seed(self.seed, self.epoch, 2 * index + which)
        return image_to_tensor(load_image(self.resolve(self.field(row, column)), self.exif_transpose), self.patch_image_size,
                               self.augment, seed)

    def load_item(self, index, row):
        label = self.field(row, "label").strip()
        if label not in LABELS:
            raise ValueError(f"label {label!r} is not True or False")
        return {"uniq_id": row.get("uniq_id", ""),
                "source_text": self.tokenizer.encode(self.field(row, "text"), clean=True),
                "source_image": self.image(row, "image1", index, 0),
                "source_image2": self.image(row, "image2", index, 1),
                "target": torch.tensor(LABELS[label])}

    def collate(self, samples):
        net_input = {"src_tokens": collate_tokens([s["source_text"] for s in samples], pad_idx=self.tokenizer.pad),
                     "src_images": torch.stack([s["source_image"] for s in samples]),
                     "src_images_2": torch.stack([s["source_image2"] for s in samples])}
        return {"net_input": net_input, "target": torch.stack([s["target"] for s in samples]),
                "uniq_ids": [s["uniq_id"] for s in samples]}


@register_task("nlvr2", dataclass=NLVR2Config)
class NLVR2Task(ClassificationTask):
    DEFAULT_COLS = "uniq_id,text,image1,image2,label"
    TARGET = "single"

    def build_dataset(self, split, reader):
        if not self.cfg.use_two_images:
            raise ValueError("nlvr2 classifies image pairs: task.use_two_images must be true")
        return NLVR2Dataset(split, reader, self.tokenizer, self.cfg.patch_image_size,
                            skip_bad_samples=self.skip_bad(split))
