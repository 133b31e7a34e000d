"""Audio loading, waveform normalisation and frame counting for the audio adapter (spec §5.3)."""
import math
import os
from fractions import Fraction

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from .feature_spec import OFFICIAL_FEATURE_ENCODER_SPEC, conv_output_frames, parse_feature_encoder_spec, receptive_field  # noqa: F401

SAMPLE_RATE = 16000


def load_audio(path: str, target_sr: int = SAMPLE_RATE, strict_sample_rate: bool = False) -> np.ndarray:
    """Read ``path`` as float32 mono at ``target_sr``.

    Channels are averaged; other rates are resampled (polyphase, exact reduced ratio) unless
    ``strict_sample_rate`` is set, which instead rejects them as the official datasets do.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        wav, sr = sf.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, TypeError, ValueError) as exc:  # LibsndfileError is a RuntimeError
        raise ValueError(f"cannot read audio {path}: {exc}") from None
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
