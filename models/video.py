"""The video modality's entry points besides its adapter: the hub processor and the checkpoint
hook that starts a video branch from the image branch (``docs/VIDEO.md``).

A checkpoint without video weights (the official ``one-peace.pt``, our stage-1/2 checkpoints) loaded
into a model with a video branch gets every video tensor from its image counterpart: patch embedding,
CLS, spatial positions, the rel-pos table (copied to every time offset), ``video_ffn`` of every layer,
the final LayerNorm, ``video_proj`` and, in the pretraining model, the decoder's video parts.  Only
``temporal_embed`` (and what has no image counterpart) starts fresh.  The checkpoint's keys are read,
never changed.  Stage 2 drops the image branch, so a stage-2 checkpoint names the checkpoint to take
it from in ``video_adapter.image_init_checkpoint`` (the stage-1 checkpoint).
"""
import logging
import re
from typing import Dict, Set

import torch

logger = logging.getLogger(__name__)

_VIDEO_KEY = re.compile(r"(^|\.|_)video_")


def _is_video_key(key: str) -> bool:
    return bool(_VIDEO_KEY.search(key))


def _image_key(key: str) -> str:
    return _VIDEO_KEY.sub(lambda m: m.group(1) + "image_", key)


def _image_source(model, state_dict):
    """(state dict holding an image branch, its name) or (None, None)."""
    if any(k.startswith("encoder_wrapper.image_adapter.") for k in state_dict):
        return state_dict, "the checkpoint's image branch"
    path = getattr(model.encoder_wrapper.video_adapter, "image_init_checkpoint", None)
    if not path:
        return None, None
    from .checkpoint_io import load_checkpoint_file, rename_legacy_keys

    source = dict(load_checkpoint_file(path, mmap=True)["model"])
    rename_legacy_keys(source)
    if not any(k.startswith("encoder_wrapper.image_adapter.") for k in source):
        raise ValueError(f"video_adapter.image_init_checkpoint={path} has no image branch to start the video "
                         "branch from")
    return source, f"the image branch of {path}"


def _from_image(key: str, target: torch.Tensor, source: Dict[str, torch.Tensor], adapter):
    """The tensor for video ``key`` derived from the image branch, or None."""
    from .adapters.image import resize_grid_pos_embed
    from .adapters.video import video_table_from_image
    from .checkpoint_io import resize_image_rel_pos_table

    image_key = _image_key(key).replace(".embed_motion.", ".embed_images.")  # motion stem: image stem weights
    table = re.match(r"(.*rel_pos_table_list\.)(\d+)(\.weight)$", image_key)
    if table and image_key not in source:
        image_key = f"{table.group(1)}0{table.group(3)}"  # one shared image table for every layer
    value = source.get(image_key)
    if value is None:
        return None
    if table:
        side = int(round((value.size(0) - 3) ** 0.5))
        if side != 2 * adapter.rel_bucket_size - 1:
            value = resize_image_rel_pos_table(value, adapter.rel_bucket_size)
        value = video_table_from_image(value, adapter.num_frames)
    elif key.endswith("_adapter.pos_embed") and value.shape != target.shape:
        value = resize_grid_pos_embed(value, int(round((target.size(0) - 1) ** 0.5)))
    return value if value.shape == target.shape else None


def init_video_from_image(model, state_dict: Dict[str, torch.Tensor]) -> Set[str]:
    """Checkpoint hook of the video modality (``Modality.upgrade``): fill the missing video tensors of
    ``state_dict`` from the image branch; return the video keys that may start fresh."""
    wrapper = getattr(model, "encoder_wrapper", None)
    adapter = getattr(wrapper, "video_adapter", None)
    if adapter is None:
        return set()
    buffers = {name for name, _ in model.named_buffers()}
    own = {k: v for k, v in model.state_dict().items() if _is_video_key(k) and k not in buffers}
    if any(k in state_dict for k in own):
        return set()  # a video checkpoint: the ordinary rules apply
    source, name = _image_source(model, state_dict)
    copied, fresh = [], set()
    for key, target in own.items():
        # Only the encoder has rel-pos tables; positions are resized to the target's shape.
        value = _from_image(key, target, source, adapter) if source is not None else None
        if value is None:
            fresh.add(key)
        else:
            state_dict[key] = value  # the image tensor itself where unchanged (no copy until converted)
            copied.append(key)
    if source is None:
        logger.warning("checkpoint has no image branch to start the video branch from (set "
                       "video_adapter.image_init_checkpoint): %d video tensors start fresh", len(fresh))
    else:
        logger.warning("video branch initialised from %s: %d tensors copied, %d start fresh (%s)", name,
                       len(copied), len(fresh), ", ".join(sorted(fresh)[:4]) + (" ..." if len(fresh) > 4 else ""))
    return fresh


def process_video(hub, video_paths) -> Dict[str, torch.Tensor]:
    """Hub processor: paths (files or frame folders) -> ``src_videos`` (B, T, 3, P, P)."""
    from ..data_utils.processors import as_paths
    from ..data_utils.video import load_video, video_to_tensor

    num_frames = hub.model.encoder_wrapper.adapter("video").num_frames
    exif_transpose = getattr(hub, "exif_transpose", True)  # frame-folder images, as the hub's images
    clips = [video_to_tensor(load_video(p, num_frames, exif_transpose), hub.patch_image_size)
             for p in as_paths(video_paths, "video_paths")]
    return {"src_videos": torch.stack(clips).to(hub.device, hub.dtype)}
