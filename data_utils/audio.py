"""Audio loading, waveform normalisation and frame counting for the audio adapter (spec §5.3)."""
import logging
import math
import re
from fractions import Fraction

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from .feature_spec import OFFICIAL_FEATURE_ENCODER_SPEC, conv_output_frames, parse_feature_encoder_spec, receptive_field  # noqa: F401

SAMPLE_RATE = 16000

logger = logging.getLogger(__name__)


def load_audio(path: str, target_sr: int = SAMPLE_RATE, strict_sample_rate: bool = False) -> np.ndarray:
    """Read ``path`` as float32 mono at ``target_sr``.

    Decoded with libsndfile (``soundfile``: WAV, FLAC, Ogg Vorbis/Opus, MP3, ...), else with FFmpeg
    (PyAV: the first audio stream of any container FFmpeg reads -- AAC/M4A, AC-3, video files with
    sound).  Channels are averaged; other rates are resampled (polyphase, exact reduced ratio) unless
    ``strict_sample_rate`` is set, which instead rejects them as the official datasets do.  A directory,
    an empty, truncated or undecodable file, no audio stream, no samples or non-finite samples: an
    error naming the file.
    """
    from .image import check_media_file

    check_media_file(path, "audio")
    wav, sr = _decode(path)
    if wav.shape[0] == 0:
        raise ValueError(f"audio file {path} contains no samples")
    if not np.isfinite(wav).all():
        bad = int((~np.isfinite(wav)).any(axis=1).sum())
        raise ValueError(f"audio file {path} contains NaN or infinite samples ({bad} of {wav.shape[0]} frames)")
    wav = wav.mean(axis=1, dtype=np.float32) if wav.shape[1] > 1 else wav[:, 0]
    if sr != target_sr:
        if strict_sample_rate:
            raise ValueError(f"audio file {path} has sample rate {sr} Hz; {target_sr} Hz is required "
                             "(resample it, or load without strict_sample_rate)")
        wav = resample(wav, sr, target_sr)
    return np.ascontiguousarray(wav, dtype=np.float32)


def _decode(path: str):
    """(frames, channels) float32 samples and the sample rate: libsndfile first, FFmpeg if it cannot."""
    try:
        info = sf.info(path)
        wav, sr = sf.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, TypeError, ValueError) as exc:  # LibsndfileError is a RuntimeError
        sndfile_error = str(exc).replace(f"Error opening {path!r}: ", "")
    else:
        truncated = _truncation(info.extra_info)
        if truncated:
            raise ValueError(f"audio file {path} is truncated ({truncated})")
        return wav, sr
    try:
        return decode_with_ffmpeg(path)
    except (ValueError, ImportError) as exc:
        raise ValueError(f"cannot read audio {path}: libsndfile: {sndfile_error}; FFmpeg: {exc}") from None


def _truncation(log: str):
    """What libsndfile's log says is missing from a file it read anyway (None if nothing)."""
    for line in log.splitlines():
        line = line.strip()
        if line.startswith("data :") and "(should be" in line:  # WAV/AIFF: fewer bytes than declared
            declared, actual = line[len("data :"):].replace(")", "").split("(should be")
            try:
                declared, actual = int(declared.split()[0], 0), int(actual.split()[0], 0)
            except (ValueError, IndexError):
                continue
            if 0 < actual < declared < 0xFFFFFFFF:  # 0 / 0xFFFFFFFF: a stream of unknown length
                return f"its data chunk declares {declared} bytes, the file holds {actual}"
        if "File ended unexpectedly" in line:  # Ogg: no end-of-stream page
            return line.split(":", 1)[-1].strip()
    return None


MAX_BAD_PACKET_FRACTION = 0.01  # FFmpeg's tools skip undecodable packets; more than this is an error


def _ffmpeg_message(exc, path: str) -> str:
    return re.sub(r"^\[Errno -?\d+\] ", "", str(exc)).replace(f": {path!r}", "")


def decode_with_ffmpeg(path: str):
    """The first audio stream of ``path`` decoded by FFmpeg (PyAV): (frames, channels) float32 and its
    rate; ValueError (not naming the file) when FFmpeg cannot.  Undecodable packets are skipped and
    logged, as FFmpeg's own tools do, up to :data:`MAX_BAD_PACKET_FRACTION` of them."""
    import av

    chunks, rate, resampler, packets, bad = [], None, None, 0, []

    def add(frames):
        nonlocal rate, resampler
        for frame in frames:
            if rate is None:
                rate = frame.sample_rate
                # To packed float32 at the stream's own rate and layout: channels are averaged and
                # resampled later, exactly as for libsndfile-decoded files.
                resampler = av.AudioResampler(format="flt", layout=frame.layout, rate=rate)
            elif frame.sample_rate != rate:
                raise ValueError(f"the sample rate changes within the stream ({rate} -> {frame.sample_rate} Hz)")
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1, len(out.layout.channels)))

    try:
        with av.open(path, metadata_errors="replace") as container:
            if not container.streams.audio:
                raise ValueError("the file has no audio stream")
            stream = container.streams.audio[0]
            for packet in container.demux(stream):
                packets += packet.size > 0
                try:
                    add(packet.decode())
                except av.FFmpegError as exc:
                    if packet.size or rate is None:  # an error while flushing the decoder loses nothing
                        bad.append(_ffmpeg_message(exc, path))
            if resampler is not None:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().reshape(-1, len(out.layout.channels)))
    except av.FFmpegError as exc:
        raise ValueError(_ffmpeg_message(exc, path)) from None
    if rate is None:
        raise ValueError(f"no audio frame can be decoded ({bad[0]})" if bad else "the audio stream is empty")
    if len(bad) > MAX_BAD_PACKET_FRACTION * packets:
        raise ValueError(f"{len(bad)} of {packets} audio packets cannot be decoded ({bad[0]})")
    if bad:
        logger.warning("audio %s: skipped %d undecodable packet(s) of %d (%s)", path, len(bad), packets, bad[0])
    return np.concatenate(chunks).astype(np.float32, copy=False), rate


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling by the reduced ratio target_sr/orig_sr (e.g. 44100 -> 16000 = 160/441)."""
    from scipy.signal import resample_poly  # scipy is slow to import; only needed here

    ratio = Fraction(int(target_sr), int(orig_sr))
    out = resample_poly(wav.astype(np.float64), ratio.numerator, ratio.denominator)
    return out.astype(np.float32)


def prepare_waveform(wav, max_duration: float = 15, sample_rate: int = SAMPLE_RATE) -> torch.FloatTensor:
    """Normalise a mono clip and fix its length, as the datasets and hub do.

    Layer norm over the whole clip (zero mean, unit variance, eps 1e-5) *before* cropping,
    keep the first ``max_duration`` seconds, and tile clips shorter than 1 s up to exactly 1 s.
    """
    wav = torch.as_tensor(wav, dtype=torch.float32)
    if wav.dim() != 1:
        raise ValueError(f"expected a mono 1-D waveform, got shape {tuple(wav.shape)}")
    if wav.numel() == 0:
        raise ValueError("cannot prepare an empty waveform")
    feats = F.layer_norm(wav, wav.shape)
    feats = feats[: int(max_duration * sample_rate)]
    if feats.numel() < sample_rate:
        feats = feats.repeat(math.ceil(sample_rate / feats.numel()))[:sample_rate]
    return feats


def audio_padding_mask(num_frames: int) -> torch.BoolTensor:
    """Per-sample padding mask: CLS slot + one entry per frame, all False (nothing padded yet)."""
    return torch.zeros(int(num_frames) + 1, dtype=torch.bool)
