"""Video adapter: every frame through the image patch embedding, a learned temporal embedding, and a
relative-position bias over (time, row, column).  Design and reasons: ``docs/VIDEO.md``.

Tokens: CLS, then frame-major, row-major patches (T * g * g).  Each patch gets the spatial position
of its grid cell (the image table, resized like the image adapter's) plus the temporal embedding of
its frame.  The 3-D bucket map extends BEiT's 2-D one with a time offset, so one frame uses exactly
the image buckets: a one-frame clip through a branch initialised from the image branch is the image.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from ..components import trunc_normal_
from .base import AdapterOutput, ModalityAdapter, gather_bucket, gather_tokens, preserve_positions, require_input
from .image import PATCH_SIZE, build_patch_embedding, resize_grid_pos_embed


@dataclass
class VideoAdapterConfig:
    """Not an official adapter (``docs/VIDEO.md``): per-frame image patches + temporal positions.
    Vision geometry follows the image adapter's fields; ``num_frames`` is the longest clip."""

    num_frames: int = 8
    bucket_size: int = 16
    rel_bucket_size: int = 16
    layernorm_embedding: bool = False
    add_type_embedding: bool = False
    vision_encoder_type: str = "hmlp"  # mlp | hmlp | none (the pretraining decoder)
    shrink_alpha: float = 1.0
    dropout: float = 0.0
    use_attn_bias: bool = True
    # A checkpoint whose image branch initialises the video branch when the loaded checkpoint has
    # neither (our stage-2 checkpoints drop the image branch: name the stage-1 checkpoint here).
    image_init_checkpoint: Optional[str] = None


def video_bucket_count(num_frames: int, rel_bucket_size: int) -> int:
    return (2 * num_frames - 1) * (2 * rel_bucket_size - 1) ** 2 + 3


def make_video_bucket_position(num_frames: int, rel_bucket_size: int) -> torch.Tensor:
    """(T*R*R+1, T*R*R+1) bucket ids over (time, row, column) offsets plus the three CLS buckets.

    Ids are ``(dt + T-1) * (2R-1)^2 + (dy + R-1) * (2R-1) + (dx + R-1)``: for T = 1 the map is the
    image adapter's (``make_image_bucket_position``), so the image table initialises every dt slice.
    """
    size, frames = rel_bucket_size, num_frames
    coords = torch.stack(torch.meshgrid(torch.arange(frames), torch.arange(size), torch.arange(size),
                                        indexing="ij")).flatten(1)  # 3, T*R*R
    rel = coords[:, :, None] - coords[:, None, :]
    side = 2 * size - 1
    index = (rel[0] + frames - 1) * side * side + (rel[1] + size - 1) * side + (rel[2] + size - 1)
    num = video_bucket_count(frames, size)
    bucket = torch.zeros(index.size(0) + 1, index.size(0) + 1, dtype=torch.long)
    bucket[1:, 1:] = index
    bucket[0, :] = num - 3
    bucket[:, 0] = num - 2
    bucket[0, 0] = num - 1
    return bucket


def video_table_from_image(image_table: torch.Tensor, num_frames: int) -> torch.Tensor:
    """A video bucket table whose every time offset holds the image table's spatial rows."""
    grid, special = image_table[:-3], image_table[-3:]
    return torch.cat([grid.repeat(2 * num_frames - 1, 1), special], dim=0)


class VideoAdapter(ModalityAdapter):
    NO_WEIGHT_DECAY = ("cls_embedding", "pos_embed", "temporal_embed", "motion_gate")

    def __init__(self, cfg, embed_dim, attention_heads, num_tables=1, **unused):
        super().__init__(cfg, embed_dim, attention_heads, video_bucket_count(cfg.num_frames, cfg.rel_bucket_size),
                         num_tables)
        self.num_frames = cfg.num_frames
        self.bucket_size = cfg.bucket_size
        self.rel_bucket_size = cfg.rel_bucket_size
        self.image_init_checkpoint = cfg.image_init_checkpoint
        self.embed_images = build_patch_embedding(cfg.vision_encoder_type, embed_dim)
        # Motion stem: the same kind of patch embedding over the difference of consecutive frames, added
        # through a zero-initialised gate (so a still clip starts as its frames).  A moving edge is a
        # signed local pattern in the difference (+ where the shape arrives, - where it leaves), which a
        # patch embedding reads directly; from appearance alone the direction must be assembled by
        # attention across frames.
        self.embed_motion = build_patch_embedding(cfg.vision_encoder_type, embed_dim)
        self.motion_gate = nn.Parameter(torch.zeros(embed_dim)) if self.embed_motion is not None else None
        if self.motion_gate is not None:
            nn.init.zeros_(self.motion_gate)
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, embed_dim))
        trunc_normal_(self.cls_embedding)
        self.pos_embed = nn.Parameter(torch.zeros(cfg.bucket_size ** 2 + 1, embed_dim))
        trunc_normal_(self.pos_embed)
        # Zero: at initialisation a clip of identical frames has identical frame tokens.
        self.temporal_embed = nn.Parameter(torch.zeros(cfg.num_frames, embed_dim))
        nn.init.zeros_(self.temporal_embed)
        if self.use_attn_bias:
            # Derived from the geometry, so not saved (at 16 frames x 256 patches it has 4097^2 entries).
            self.register_buffer("rp_bucket", make_video_bucket_position(cfg.num_frames, cfg.rel_bucket_size),
                                 persistent=False)

    def positions(self, num_frames: int, window: int) -> torch.Tensor:
        """(1, 1 + T*g*g, D): CLS position, then spatial + temporal position of every patch."""
        spatial = resize_grid_pos_embed(self.pos_embed, window)
        cls_pos, grid_pos = spatial[:1], spatial[1:]
        patches = grid_pos[None, :, :] + self.temporal_embed[:num_frames, None, :]
        return torch.cat([cls_pos, patches.flatten(0, 1)], dim=0).unsqueeze(0)

    def bucket(self, num_frames: int):
        if not self.use_attn_bias:
            return None
        length = num_frames * self.rel_bucket_size ** 2 + 1
        return self.rp_bucket[:length, :length]  # frame-major order: fewer frames = the leading block

    def check_clip(self, src_videos: torch.Tensor):
        if src_videos.dim() != 5 or src_videos.size(2) != 3:
            raise ValueError(f"src_videos must be (B, T, 3, H, W), got {tuple(src_videos.shape)}")
        num_frames, height, width = src_videos.size(1), src_videos.size(3), src_videos.size(4)
        if not 1 <= num_frames <= self.num_frames:
            raise ValueError(f"clips of {num_frames} frames: this video adapter takes 1 to {self.num_frames} "
                             "(video_adapter.num_frames)")
        if height != width or height % PATCH_SIZE:
            raise ValueError(f"frames must be square with a side divisible by {PATCH_SIZE}, got {height}x{width}")
        window = height // PATCH_SIZE
        if self.use_attn_bias and window != self.rel_bucket_size:
            raise ValueError(f"{height}px frames need video_adapter.rel_bucket_size={window} (the model was built "
                             f"with {self.rel_bucket_size}); build the model with patch_image_size={height}")
        return num_frames, window

    def forward(self, inputs, preserve_ids=None):
        """``inputs["src_videos"]``: (B, T, 3, P, P) normalised frames (``data_utils/video.py``)."""
        src_videos = require_input(inputs, "src_videos", "video")
        if self.embed_images is None:
            raise RuntimeError("this video adapter has no patch embedding (decoder adapter)")
        num_frames, window = self.check_clip(src_videos)
        bsz = src_videos.size(0)
        # Frames go through the patch embedding as a batch of images.
        x = self.embed_images(src_videos.flatten(0, 1)).flatten(2).transpose(1, 2)  # B*T, g*g, D
        x = x.reshape(bsz, num_frames * window * window, -1)
        if num_frames > 1:  # frame t gets the motion from t-1 to t (frame 0 from 0 to 1)
            diff = src_videos[:, 1:] - src_videos[:, :-1]
            diff = torch.cat([diff[:, :1], diff], dim=1)
            motion = self.embed_motion(diff.flatten(0, 1)).flatten(2).transpose(1, 2)
            x = x + self.motion_gate * motion.reshape_as(x)
        x = torch.cat([self.cls_embedding.expand(bsz, -1, -1), x], dim=1) + self.positions(num_frames, window)
        full_padding_mask = padding_mask = torch.zeros(bsz, x.size(1), dtype=torch.bool, device=x.device)
        bucket = self.bucket(num_frames)
        if preserve_ids is not None:
            index, padding_mask = preserve_positions(preserve_ids)
            x = gather_tokens(x, index)
            bucket = gather_bucket(bucket, index) if bucket is not None else None
        return AdapterOutput(self.finish_embedding(x), padding_mask, bucket, self, full_padding_mask)

    def forward_decoder(self, embeds, preserve_ids, mask_token, full_padding_mask):
        length = full_padding_mask.size(1)
        window = self.bucket_size
        num_frames = (length - 1) // (window * window)
        if num_frames * window * window + 1 != length:
            raise ValueError(f"{length - 1} video tokens are not whole frames of {window}x{window} patches "
                             f"(decoder video_adapter.bucket_size={window})")
        x = self.scatter_decoder_input(embeds, preserve_ids, mask_token, length)
        x = x + self.positions(num_frames, window)
        return AdapterOutput(self.finish_embedding(x), full_padding_mask, None, self)
