"""Video-text pretraining dataset: clips with their captions and the masks of three views.

Row ``uniq_id, video, text``.  Views (as the audio stage-2 dataset): ``video`` (tube mask),
``vt_text`` (whole-word mask of the caption in the fused pass) and ``vt_video`` (tube mask of the
fused pass, complementary to the video-only view's).  No flips or crops that differ per frame:
a horizontal flip would turn "moving left" into "moving right".
"""
import torch

from .collate import collate_tokens
from .pretrain_datasets import _PairDataset
from .video import load_video, tube_complementary_mask, tube_mask, video_to_tensor


class VideoTextPretrainDataset(_PairDataset):
    VIEWS = ("video", "vt_text", "vt_video")

    def __init__(self, split, reader, tokenizer, patch_image_size=256, num_frames=8, video_mask_ratio=0.75,
                 vt_text_mask_ratio=0.4, vt_video_mask_ratio=0.6875, **kwargs):
        super().__init__(split, reader, tokenizer, **kwargs)
        self.patch_image_size = patch_image_size
        self.num_frames = num_frames
        self.num_patches = (patch_image_size // 16) ** 2
        self.ratios = (video_mask_ratio, vt_text_mask_ratio, vt_video_mask_ratio)

    def load_item(self, index, row):
        rng = self.rng(index)
        tokens = self.encode_caption(self.field(row, "text"))
        frames = load_video(self.resolve(self.field(row, "video")), self.num_frames, self.exif_transpose)
        video_ratio, vt_text_ratio, vt_video_ratio = self.ratios
        video_mask = tube_mask(self.num_frames, self.num_patches, video_ratio, rng)
        item = {"source_text": tokens, "source_video": video_to_tensor(frames, self.patch_image_size)}
        self.add_view(item, "video", video_mask)
        self.add_view(item, "vt_text", self.whole_word_mask(tokens, vt_text_ratio, rng))
        self.add_view(item, "vt_video", tube_complementary_mask(video_mask, self.num_frames, vt_video_ratio, rng))
        return item

    def collate(self, samples):
        net_input = {
            "src_tokens": collate_tokens([s["source_text"] for s in samples], pad_idx=self.tokenizer.pad),
            "src_videos": torch.stack([s["source_video"] for s in samples]),
        }
        net_input.update(self.collate_views(samples, self.VIEWS))
        return {"net_input": net_input, "nsentences": len(samples)}
