"""Video I/O (PyAV) and tube masks: a clip -> N uniformly sampled frames -> (N, 3, P, P) tensors.

A video is a file PyAV decodes (mp4, webm, avi, gif, ...) or a folder of frame images (sorted by
name, numbers compared as numbers).  Frames are transformed exactly like images
(``data_utils/image.py:image_to_tensor``: bicubic resize to P x P, CLIP normalisation).  Anything
unusable -- a missing path, an unreadable or non-video file, no video stream, zero frames, an absurd
resolution -- is a ``ValueError``/``FileNotFoundError`` naming the file (in training the dataset
skips, logs and counts such rows).
"""
import os
import re
import threading
from typing import List, Sequence

import numpy as np
import torch
from PIL import Image

from . import masking
from .image import check_media_file, image_to_tensor, load_image

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
MAX_SIDE = 8192  # larger frames are refused (a corrupt header or a mislabelled file, not a video to embed)


def sample_indices(total: int, num_frames: int) -> List[int]:
    """``num_frames`` indices spread uniformly over ``total`` frames: the centre of each of
    ``num_frames`` equal segments (a clip shorter than ``num_frames`` repeats frames)."""
    if total <= 0:
        raise ValueError("no frames to sample from")
    return [min(total - 1, int((i + 0.5) * total / num_frames)) for i in range(num_frames)]


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _check_size(width: int, height: int, name: str):
    if width <= 0 or height <= 0 or width > MAX_SIDE or height > MAX_SIDE:
        raise ValueError(f"video {name}: frames of {width}x{height} pixels are not a usable resolution "
                         f"(each side must lie in 1..{MAX_SIDE})")


def _load_frame_folder(path: str, num_frames: int, exif_transpose: bool = True) -> List[Image.Image]:
    names = sorted((n for n in os.listdir(path) if n.lower().endswith(FRAME_EXTENSIONS)), key=_natural_key)
    if not names:
        raise ValueError(f"video folder {path} holds no frame images ({', '.join(FRAME_EXTENSIONS)})")
    frames = []
    for i in sample_indices(len(names), num_frames):
        frame = load_image(os.path.join(path, names[i]), exif_transpose)  # its errors name the frame file
        _check_size(frame.width, frame.height, os.path.join(path, names[i]))
        frames.append(frame)
    return frames


def _count_frames(path: str, av):
    """Frames of the first video stream (the container's count, else its packets) and the stream's end
    time in seconds (None if unknown); the file must have a video stream of a usable resolution and,
    for an AVI, as many frames as its header declares (a cut-off AVI lacks its index, and FFmpeg
    then measures a shorter duration)."""
    with av.open(path, metadata_errors="replace") as container:
        if not container.streams.video:
            raise ValueError(f"video {path}: the file has no video stream")
        stream = container.streams.video[0]
        _check_size(stream.codec_context.width, stream.codec_context.height, path)
        end = None
        if stream.duration and stream.time_base:
            end = float((stream.duration + (stream.start_time or 0)) * stream.time_base)
        if not stream.frames:
            return sum(1 for packet in container.demux(stream) if packet.size), end
        if "avi" in container.format.name.split(",") and stream.duration and stream.average_rate:
            found = float(stream.duration * stream.time_base * stream.average_rate)
            if found < 0.98 * stream.frames - 2:
                raise ValueError(f"video {path} is truncated: its header declares {stream.frames} frames, "
                                 f"the file holds about {round(found)}")
        return int(stream.frames), end


_REFORMATTERS = threading.local()


def _to_rgb(frame) -> Image.Image:
    """A decoded frame as an RGB image.  ``frame.to_image()`` builds a new swscale context for every
    frame (17 ms for an 8-frame 64 px clip, most of a video training step on CPU); one reformatter per
    thread keeps its context (0.9 ms)."""
    reformatter = getattr(_REFORMATTERS, "reformatter", None)
    if reformatter is None:
        from av.video.reformatter import VideoReformatter

        reformatter = _REFORMATTERS.reformatter = VideoReformatter()
    return Image.fromarray(reformatter.reformat(frame, format="rgb24").to_ndarray(), "RGB")


def _decode(path: str, wanted: Sequence[int], av):
    """PIL frames at the ``wanted`` indices (in order, repeats allowed), the number decoded and the
    time (s) of the last frame decoded."""
    targets = sorted(set(wanted))
    found, count, last_time = {}, 0, None
    with av.open(path, metadata_errors="replace") as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if count in targets:
                _check_size(frame.width, frame.height, path)
                found[count] = _to_rgb(frame)
            count += 1
            last_time = frame.time
            if count > targets[-1]:
                break
    return [found[i] for i in wanted if i in found], count, last_time


def _load_video_file(path: str, num_frames: int) -> List[Image.Image]:
    try:
        import av
    except ImportError:  # pragma: no cover - av is an install requirement
        raise ImportError("reading video files needs PyAV: pip install av") from None
    try:
        total, end = _count_frames(path, av)
        if total == 0:
            raise ValueError(f"video {path} has no frames")
        frames, decoded, last_time = _decode(path, sample_indices(total, num_frames), av)
        if len(frames) < num_frames:
            if decoded == 0:
                raise ValueError(f"video {path} has no decodable frames")
            # Fewer frames than counted.  Decoding stopped well before the stream's end: the file is cut
            # off.  Otherwise the container over-counted (or an AVI repeats frames by empty chunks):
            # sample what was decoded.
            if end and last_time is not None and last_time < end - max(2 * end / total, 0.02 * end):
                raise ValueError(f"video {path} is truncated: frames stop at {last_time:.2f} s of {end:.2f} s")
            frames, _, _ = _decode(path, sample_indices(decoded, num_frames), av)
    except av.FFmpegError as err:  # before ValueError: some (InvalidDataError) are both
        message = re.sub(r"^\[Errno -?\d+\] ", "", str(err)).replace(f": {path!r}", "")
        raise ValueError(f"cannot read video {path}: {message}") from None
    except ValueError as err:
        if path in str(err):
            raise
        raise ValueError(f"cannot read video {path}: {err}") from None
    return frames


def load_video(path: str, num_frames: int, exif_transpose: bool = True) -> List[Image.Image]:
    """``num_frames`` RGB frames sampled uniformly from a video file or a folder of frames
    (``exif_transpose``: frame images turned upright by their EXIF orientation, as ``load_image``)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if os.path.isdir(path):
        return _load_frame_folder(path, num_frames, exif_transpose)
    check_media_file(path, "video")
    return _load_video_file(path, num_frames)


def video_to_tensor(frames: Sequence[Image.Image], size: int) -> torch.Tensor:
    """(T, 3, size, size) float32: every frame resized and normalised like an image."""
    return torch.stack([image_to_tensor(frame, size) for frame in frames])


def tube_mask(num_frames: int, num_patches: int, ratio: float, rng=None) -> torch.BoolTensor:
    """Tube masking: ``int(num_patches * ratio)`` grid cells masked in every frame (CLS slot first,
    never masked).  The same cells in all frames, so a masked patch cannot be copied from its
    neighbour in time (the reason VideoMAE masks tubes)."""
    spatial = masking.image_random_mask(num_patches, ratio, rng)
    return tile_spatial_mask(spatial, num_frames)


def tube_complementary_mask(video_mask: Sequence[bool], num_frames: int, ratio: float,
                            rng=None) -> torch.BoolTensor:
    """The fused view's tube mask: ``masking.image_complementary_mask`` of the video-only view's cells."""
    video_mask = torch.as_tensor(video_mask, dtype=torch.bool)
    num_patches = (video_mask.numel() - 1) // num_frames
    spatial = torch.cat([video_mask[:1], video_mask[1:1 + num_patches]])
    return tile_spatial_mask(masking.image_complementary_mask(spatial, ratio, rng), num_frames)


def tile_spatial_mask(spatial: torch.Tensor, num_frames: int) -> torch.BoolTensor:
    """A (N + 1) grid mask (CLS first) repeated over ``num_frames`` frames -> (T * N + 1)."""
    spatial = torch.as_tensor(np.asarray(spatial, dtype=bool))
    return torch.cat([spatial[:1], spatial[1:].repeat(num_frames)])
