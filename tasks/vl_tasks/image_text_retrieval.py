"""``image_text_retrieval``: COCO / Flickr30K image-text retrieval (the retrieval family, image rows).

TSV ``image_id, image, caption`` (one row per image, or per image-caption pair for training);
evaluation captions come from ``valid_file`` (JSON ``{image_id: [captions]}``).  The training split may be
tar shards (``task.data=shards/{00000..00099}.tar``: ``tasks/shard_data.py``); evaluation reads TSVs.  Recall keys:
``txt_r1/5/10`` (image -> text), ``img_r1/5/10`` (text -> image), their means and ``r_mean``.
"""
from dataclasses import dataclass

import torch
from fairseq.tasks import register_task

from ...data_utils.captions import CaptionedRows
from ...data_utils.dataset import TSVDataset
from ...data_utils.image import image_to_tensor, load_image
from ..retrieval import RetrievalConfig, RetrievalTask
from ..shard_data import ShardDataConfig, ShardTaskMixin


@dataclass
class ImageTextRetrievalConfig(ShardDataConfig, RetrievalConfig):
    head_type: str = "vl"


class ImageTextDataset(CaptionedRows, TSVDataset):
    """Row: ``image_id, image, caption``; the caption is required in training only."""

    def __init__(self, split, reader, tokenizer, patch_image_size, caption=None, require_text=True,
                 skip_bad_samples=True):
        super().__init__(split, reader, skip_bad_samples)
        self.tokenizer = tokenizer
        self.patch_image_size = patch_image_size
        self.caption = caption or (lambda text: text)
        self.require_text = require_text

    def load_item(self, index, row):
        image_id, path = self.field(row, "image_id"), self.field(row, "image")
        tokens = self.caption_tokens(row, "caption")
        return {"uniq_id": image_id, "source_text": tokens,
                "source_image": image_to_tensor(load_image(self.resolve(path), self.exif_transpose), self.patch_image_size)}

    def collate(self, samples):
        net_input = {"src_images": torch.stack([s["source_image"] for s in samples])}
        self.add_caption_tokens(samples, net_input)
        return {"net_input": net_input, "uniq_ids": [s["uniq_id"] for s in samples]}


@register_task("image_text_retrieval", dataclass=ImageTextRetrievalConfig)
class ImageTextRetrievalTask(ShardTaskMixin, RetrievalTask):
    DEFAULT_COLS = "image_id,image,caption"
    SHARD_COLUMNS = ("image_id", "image", "caption")
    SHARD_MODALITY = "image"
    SHARD_VALIDATION = False  # the caption bank and the recall metrics read the evaluation TSV's rows
    QUERY_MODALITY = "image"
    METRIC_PREFIX = "img"
    ID_COLUMN = "image_id"
    CAPTION_COLUMN = "caption"

    def build_dataset(self, split, reader):
        return ImageTextDataset(split, reader, self.tokenizer, self.cfg.patch_image_size, caption=self.caption,
                                require_text=(split == "train"), skip_bad_samples=self.skip_bad(split))
