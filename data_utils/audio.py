"""Audio loading, waveform normalisation and frame counting for the audio adapter (spec §5.3)."""
import ast
import math
import os
from fractions import Fraction
from typing import List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

SAMPLE_RATE = 16000
OFFICIAL_FEATURE_ENCODER_SPEC = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"


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


# ---- conv feature-extractor spec ------------------------------------------------------------
def _eval_spec_node(node, source: str):
    """Evaluate the small expression language of feature_encoder_spec without ``eval``."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_eval_spec_node(e, source) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _eval_spec_node(node.left, source), _eval_spec_node(node.right, source)
        if isinstance(node.op, ast.Add):
            if type(left) is not type(right):
                raise ValueError(f"feature_encoder_spec {source!r}: '+' needs two lists or two ints")
            return left + right
        if isinstance(left, int) and isinstance(right, int):
            return left * right
        seq, count = (left, right) if isinstance(right, int) else (right, left)
        if not isinstance(count, int) or isinstance(seq, int) or not 0 <= count <= 10000:
            raise ValueError(f"feature_encoder_spec {source!r}: '*' needs a list and a small int")
        return seq * count
    raise ValueError(f"feature_encoder_spec {source!r}: unsupported syntax "
                     f"{type(node).__name__} (only int lists/tuples with + and *)")


def parse_feature_encoder_spec(spec_str: str) -> List[Tuple[int, int, int]]:
    """Parse e.g. ``"[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"`` safely.

    Returns a list of (channels, kernel, stride) tuples.
    """
    if not isinstance(spec_str, str):
        raise TypeError(f"feature_encoder_spec must be a str, got {type(spec_str).__name__}")
    try:
        tree = ast.parse(spec_str.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"feature_encoder_spec {spec_str!r} is not valid: {exc.msg}") from None
    value = _eval_spec_node(tree.body, spec_str)
    if not isinstance(value, list) or not value:
        raise ValueError(f"feature_encoder_spec {spec_str!r} must be a non-empty list of (dim, kernel, stride)")
    layers = []
    for layer in value:
        if not (isinstance(layer, tuple) and len(layer) == 3 and all(isinstance(v, int) and v > 0 for v in layer)):
            raise ValueError(f"feature_encoder_spec {spec_str!r}: layer {layer!r} is not a "
                             "(dim, kernel, stride) tuple of positive ints")
        layers.append(layer)
    return layers


def _as_layers(spec) -> Sequence[Tuple[int, int, int]]:
    return parse_feature_encoder_spec(spec) if isinstance(spec, str) else spec


def conv_output_frames(num_samples: int, spec, name: Optional[str] = None) -> int:
    """Frames the conv stack emits for ``num_samples``: n -> floor((n - k) / s) + 1 per layer.

    Raises ValueError (naming ``name`` if given) when the clip is shorter than the stack's
    receptive field, i.e. no frame would come out.
    """
    n = int(num_samples)
    for _, kernel, stride in _as_layers(spec):
        n = (n - kernel) // stride + 1
        if n <= 0:
            what = f"{name}: " if name else ""
            raise ValueError(f"{what}audio of {num_samples} samples is shorter than the feature "
                             "extractor's receptive field (0 frames)")
    return n


def receptive_field(spec) -> int:
    """Fewest samples that give one frame."""
    n = 1
    for _, kernel, stride in reversed(list(_as_layers(spec))):
        n = (n - 1) * stride + kernel
    return n


def audio_padding_mask(num_frames: int) -> torch.BoolTensor:
    """Per-sample padding mask: CLS slot + one entry per frame, all False (nothing padded yet)."""
    return torch.zeros(int(num_frames) + 1, dtype=torch.bool)
