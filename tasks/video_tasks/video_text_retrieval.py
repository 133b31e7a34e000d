"""``video_text_retrieval``: MSR-VTT-style video-text retrieval (the retrieval family, video rows).

TSV ``uniq_id, video, text`` (one row per clip, or per clip-caption pair for training; ``video`` is a
file PyAV decodes or a folder of frames); evaluation captions come from ``valid_file`` (JSON
``{uniq_id: [captions]}``) or the ``text`` column.  Recall keys: ``txt_r1/5/10`` (video -> text),
``vid_r1/5/10`` (text -> video), their means and ``r_mean``.  Zero-shot from a checkpoint without
video weights: the video branch starts from the image branch (``models/video.py``).
"""
from dataclasses import dataclass, field

import torch
from fairseq.tasks import register_task

from ...data_utils.captions import CaptionedRows
from ...data_utils.dataset import TSVDataset
from ...data_utils.video import load_video, video_to_tensor
from ..retrieval import RetrievalConfig, RetrievalTask


@dataclass
class VideoTextRetrievalConfig(RetrievalConfig):
    head_type: str = "vt"
    num_frames: int = field(default=8, metadata={"help": "frames sampled uniformly from every clip"})


class VideoTextDataset(CaptionedRows, TSVDataset):
    """Row: ``uniq_id, video, text``; the caption is required in training only."""

    def __init__(self, split, reader, tokenizer, patch_image_size, num_frames, caption=None, require_text=True,
                 skip_bad_samples=True):
        super().__init__(split, reader, skip_bad_samples)
        self.tokenizer = tokenizer
        self.patch_image_size = patch_image_size
        self.num_frames = num_frames
        self.caption = caption or (lambda text: text)
        self.require_text = require_text

    def load_item(self, index, row):
        uid, path = self.field(row, "uniq_id"), self.field(row, "video")
        frames = load_video(self.resolve(path), self.num_frames, self.exif_transpose)
        return {"uniq_id": uid, "source_text": self.caption_tokens(row, "text"),
                "source_video": video_to_tensor(frames, self.patch_image_size)}

    def collate(self, samples):
        net_input = {"src_videos": torch.stack([s["source_video"] for s in samples])}
        self.add_caption_tokens(samples, net_input)
        return {"net_input": net_input, "uniq_ids": [s["uniq_id"] for s in samples]}


@register_task("video_text_retrieval", dataclass=VideoTextRetrievalConfig)
class VideoTextRetrievalTask(RetrievalTask):
    DEFAULT_COLS = "uniq_id,video,text"
    QUERY_MODALITY = "video"
    METRIC_PREFIX = "vid"

    def build_dataset(self, split, reader):
        return VideoTextDataset(split, reader, self.tokenizer, self.cfg.patch_image_size, self.cfg.num_frames,
                                caption=self.caption, require_text=(split == "train"),
                                skip_bad_samples=self.skip_bad(split))
