"""Decoding the parts of a long video or sound that the index embeds: the windows (segments) of a file,
the frames at chosen times, and the samples up to the duration cap.

Windows: ``length`` seconds each, starting every ``length`` seconds; the last one ends at the end of the
file (so it overlaps the one before it when the duration is not a multiple of ``length``): every second is
in a window of full length.  Frames of a window: the video rule of ``data_utils/video.py`` (the centres of
``num_frames`` equal parts) applied to the window's span in time, each time taking the frame shown then.
"""
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..data_utils.audio import SAMPLE_RATE, resample


def segment_windows(duration: float, length: float) -> List[Tuple[float, float]]:
    """(start, end) seconds of the windows of a ``duration``-second file (one window when it is not longer)."""
    if duration <= length:
        return [(0.0, float(duration))]
    count = math.ceil(duration / length - 1e-9)
    out = [(i * length, (i + 1) * length) for i in range(count - 1)]
    out.append((duration - length, float(duration)))
    return out


def frame_times(start: float, end: float, count: int) -> List[float]:
    """``count`` times spread over [start, end]: the centres of ``count`` equal parts."""
    return [start + (i + 0.5) * (end - start) / count for i in range(count)]


def frames_at(path: str, times: Sequence[float], slack: float = 1.0) -> List[Optional[object]]:
    """The RGB frame (PIL) shown at each of ``times`` (seconds) in the first video stream, in one pass that
    stops after the last time asked; None for a time past the decoded frames by more than ``slack``
    seconds (a file shorter than its header says)."""
    import av

    order = sorted(range(len(times)), key=lambda i: times[i])
    out: List[Optional[object]] = [None] * len(times)
    prev, prev_image, prev_time, k = None, None, None, 0

    def image_of_prev():
        nonlocal prev_image
        if prev_image is None:
            prev_image = prev.to_image()
        return prev_image

    try:
        with av.open(path, metadata_errors="replace") as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate or 25)
            for count, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else count / rate
                while k < len(order) and t > times[order[k]]:
                    if prev is None:  # a time before the first frame: the first frame
                        prev, prev_image, prev_time = frame, None, t
                    out[order[k]] = image_of_prev()
                    k += 1
                if k == len(order):
                    break
                prev, prev_image, prev_time = frame, None, t
            while k < len(order) and prev is not None and times[order[k]] - prev_time <= slack:
                out[order[k]] = image_of_prev()  # the last frame stays on screen to the end
                k += 1
    except av.FFmpegError as exc:
        raise ValueError(f"cannot read video {path}: {exc}") from None
    return out


def audio_samples(path: str, max_seconds: float, ffmpeg_only: bool = False) -> np.ndarray:
    """The first ``max_seconds`` of ``path`` as float32 mono at 16 kHz: libsndfile reads only those
    frames; otherwise (or ``ffmpeg_only``: a video's sound track) FFmpeg decodes the first audio stream and
    stops there.  ValueError naming the file when nothing can be decoded or a sample is not finite."""
    wav, rate = None, None
    if not ffmpeg_only:
        import soundfile as sf

        try:
            info = sf.info(path)
            wav, rate = sf.read(path, frames=min(info.frames, int(math.ceil(max_seconds * info.samplerate))),
                                dtype="float32", always_2d=True)
        except (RuntimeError, TypeError, ValueError):  # not a libsndfile format: FFmpeg
            wav = None
    if wav is None:
        wav, rate = _ffmpeg_samples(path, max_seconds)
    if wav.shape[0] == 0:
        raise ValueError(f"audio of {path} contains no samples")
    if not np.isfinite(wav).all():
        raise ValueError(f"audio of {path} contains NaN or infinite samples")
    mono = wav.mean(axis=1, dtype=np.float32) if wav.shape[1] > 1 else wav[:, 0]
    if rate != SAMPLE_RATE:
        mono = resample(mono, rate, SAMPLE_RATE)
    return np.ascontiguousarray(mono[:int(max_seconds * SAMPLE_RATE)], dtype=np.float32)


def _ffmpeg_samples(path: str, max_seconds: float):
    import av

    chunks, rate, resampler, total = [], None, None, 0
    try:
        with av.open(path, metadata_errors="replace") as container:
            if not container.streams.audio:
                raise ValueError(f"{path} has no audio stream")
            for frame in container.decode(container.streams.audio[0]):
                if rate is None:
                    rate = frame.sample_rate
                    resampler = av.AudioResampler(format="flt", layout=frame.layout, rate=rate)
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1, len(out.layout.channels))
                    chunks.append(chunk)
                    total += chunk.shape[0]
                if total >= max_seconds * rate:
                    break
    except av.FFmpegError as exc:
        raise ValueError(f"cannot read the audio of {path}: {exc}") from None
    if rate is None:
        raise ValueError(f"the audio stream of {path} is empty")
    return np.concatenate(chunks).astype(np.float32, copy=False), rate
