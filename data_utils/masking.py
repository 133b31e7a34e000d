"""Per-sample pretraining masks (spec §4.1).

Every function returns a bool vector (True = masked) whose index 0 is the CLS slot (never
masked); text masks also end with the EOS slot (never masked).  Randomness comes from the
``rng`` argument: a ``numpy.random.Generator``, a ``torch.Generator`` (one 63-bit seed is drawn
from it per call), an int seed, or None (fresh OS entropy), so masks are reproducible.
"""
import math
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

RngLike = Union[None, int, np.random.Generator, torch.Generator]


def as_numpy_rng(rng: RngLike) -> np.random.Generator:
    """Turn any supported ``rng`` into a numpy Generator (deterministically for seeded inputs)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, torch.Generator):
        seed = int(torch.randint(0, 2 ** 63 - 1, (1,), generator=rng).item())
        return np.random.default_rng(seed)
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy/torch Generator, an int seed or None, got {type(rng).__name__}")


def _choose(rng: np.random.Generator, candidates: np.ndarray, k: int) -> np.ndarray:
    """k distinct elements of ``candidates`` chosen uniformly at random."""
    if k <= 0 or len(candidates) == 0:
        return candidates[:0]
    return rng.choice(candidates, size=min(k, len(candidates)), replace=False)


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")


def _word_start_flags(tokens: Sequence[int], is_begin) -> np.ndarray:
    """Word-start flag per token; ``is_begin`` is a callable on ids or a per-id bool table."""
    if callable(is_begin):
        return np.array([bool(is_begin(int(t))) for t in tokens], dtype=bool)
    # the table looked up in one pass (a lookup per token took most of the whole-word mask's time)
    table = np.asarray(is_begin, dtype=bool)
    ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
    inside = (ids >= 0) & (ids < len(table))
    flags = np.ones(ids.shape, dtype=bool)  # ids outside the table count as word starts
    flags[inside] = table[ids[inside]]
    return flags


def text_whole_word_mask(tokens, bpe_is_begin_fn: Union[Callable[[int], bool], Sequence[bool]],
                         ratio: float, rng: RngLike = None) -> torch.BoolTensor:
    """Whole-word mask over ``tokens`` (encoded ids incl. the final EOS, no CLS).

    ``ceil(#word starts * ratio)`` word starts (EOS excluded) are drawn; each masks its start
    piece and the following non-start pieces.  Returns length ``len(tokens) + 1``.
    """
    _check_ratio(ratio)
    rng = as_numpy_rng(rng)
    n = len(tokens)
    mask = np.zeros(n + 1, dtype=bool)
    if n <= 1:
        return torch.from_numpy(mask)
    starts = _word_start_flags(tokens, bpe_is_begin_fn)
    starts[n - 1] = True  # EOS ends the last word; it is never a candidate
    word_starts = np.flatnonzero(starts[: n - 1])
    num_words = math.ceil(len(word_starts) * ratio)
    for s in _choose(rng, word_starts, num_words):
        end = s + 1
        while end < n - 1 and not starts[end]:
            end += 1
        mask[s + 1: end + 1] = True  # +1: CLS slot
    return torch.from_numpy(mask)


def text_token_mask(num_tokens: int, ratio: float, rng: RngLike = None,
                    avoid: Optional[Sequence[bool]] = None) -> torch.BoolTensor:
    """Token-level mask for a text of ``num_tokens`` ids (incl. EOS): ``int((num_tokens-1)*ratio)`` masked.

    Picks come first from tokens not masked in ``avoid`` (a mask of the same length,
    ``num_tokens + 1``, e.g. the text-only view's), then, if too few, from the avoided ones.
    """
    _check_ratio(ratio)
    rng = as_numpy_rng(rng)
    mask = np.zeros(num_tokens + 1, dtype=bool)
    content = np.arange(1, num_tokens)  # real tokens: not CLS (0), not EOS (num_tokens)
    target = int(len(content) * ratio)
    if avoid is None:
        avoided = np.zeros(num_tokens + 1, dtype=bool)
    else:
        avoided = np.asarray(avoid, dtype=bool)
        if avoided.shape != mask.shape:
            raise ValueError(f"avoid mask has length {avoided.size}, expected {mask.size}")
    fresh, used = content[~avoided[content]], content[avoided[content]]
    first = _choose(rng, fresh, target)
    mask[first] = True
    mask[_choose(rng, used, target - len(first))] = True
    return torch.from_numpy(mask)


def image_random_mask(num_patches: int, ratio: float, rng: RngLike = None) -> torch.BoolTensor:
    """``int(num_patches * ratio)`` random patches masked; returns length ``num_patches + 1``."""
    _check_ratio(ratio)
    rng = as_numpy_rng(rng)
    mask = np.zeros(num_patches + 1, dtype=bool)
    mask[_choose(rng, np.arange(1, num_patches + 1), int(num_patches * ratio))] = True
    return torch.from_numpy(mask)


def image_complementary_mask(image_only_mask: Sequence[bool], ratio: float,
                             rng: RngLike = None) -> torch.BoolTensor:
    """VL-view image mask: ``int(N * ratio)`` masked, starting with every patch the image-only
    view keeps visible, topped up with random image-only-masked patches, so the two views'
    visible sets are disjoint.  (If the budget is below the image-only visible count, a random
    subset of those is masked.)  ``image_only_mask`` has length N + 1 (CLS first).
    """
    _check_ratio(ratio)
    rng = as_numpy_rng(rng)
    other = np.asarray(image_only_mask, dtype=bool)
    num_patches = other.size - 1
    target = int(num_patches * ratio)
    patches = np.arange(1, num_patches + 1)
    visible, hidden = patches[~other[1:]], patches[other[1:]]
    mask = np.zeros(num_patches + 1, dtype=bool)
    if target <= len(visible):
        mask[_choose(rng, visible, target)] = True
    else:
        mask[visible] = True
        mask[_choose(rng, hidden, target - len(visible))] = True
    return torch.from_numpy(mask)


def block_span_mask_1d(num_frames: int, num_centres: int, mask_length: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Union of ``num_centres`` spans (centres drawn with replacement) over T frames, no CLS slot."""
    frames = np.zeros(num_frames, dtype=bool)
    if num_frames > 0 and num_centres > 0:
        centres = rng.integers(0, num_frames, size=num_centres)
        offsets = np.arange(mask_length) - mask_length // 2
        frames[np.clip(centres[:, None] + offsets[None, :], 0, num_frames - 1).ravel()] = True
    return frames


def compute_block_mask_1d(num_frames: int, mask_ratio: float, mask_length: int = 5,
                          mask_prob_adjust: float = 0.1, rng: RngLike = None) -> torch.BoolTensor:
    """Span mask over ``num_frames`` audio frames with exactly ``int(T * mask_ratio)`` masked.

    ``int(T * ((ratio + adjust) / length))`` centres (with replacement) each cover
    ``[c - length//2, c - length//2 + length)`` clamped to the clip; then random single frames
    are unmasked (too many) or masked (too few) to hit the exact count.  Returns length T + 1.
    """
    _check_ratio(mask_ratio)
    if mask_length < 1:
        raise ValueError(f"mask_length must be >= 1, got {mask_length}")
    rng = as_numpy_rng(rng)
    T = int(num_frames)
    num_centres = int(T * ((mask_ratio + mask_prob_adjust) / mask_length))
    frames = block_span_mask_1d(T, num_centres, mask_length, rng)
    target = int(T * mask_ratio)
    count = int(frames.sum())
    if count > target:
        frames[_choose(rng, np.flatnonzero(frames), count - target)] = False
    elif count < target:
        frames[_choose(rng, np.flatnonzero(~frames), target - count)] = True
    return torch.from_numpy(np.concatenate([[False], frames]))


def preserve_ids_from_mask(mask) -> torch.LongTensor:
    """Indices of unmasked positions (CLS 0 included), what the student encoder keeps."""
    mask = torch.as_tensor(mask, dtype=torch.bool)
    return torch.nonzero(~mask, as_tuple=False).flatten().long()
