"""Batch collation helpers: right-padding of variable-length per-sample tensors."""
from typing import Sequence, Tuple

import torch


def _pad_right(values: Sequence[torch.Tensor], pad_value, dtype=None) -> torch.Tensor:
    if len(values) == 0:
        raise ValueError("cannot collate an empty list")
    values = [torch.as_tensor(v) for v in values]
    for i, v in enumerate(values):
        if v.dim() != 1:
            raise ValueError(f"item {i} must be 1-D, got shape {tuple(v.shape)}")
    dtype = dtype or values[0].dtype
    out = torch.full((len(values), max(v.numel() for v in values)), pad_value, dtype=dtype)
    for i, v in enumerate(values):
        out[i, : v.numel()] = v
    return out


def collate_tokens(tokens: Sequence[torch.Tensor], pad_idx: int = 1) -> torch.LongTensor:
    """(B, Lmax) token ids, right-padded with ``pad_idx``."""
    return _pad_right(tokens, pad_idx, torch.long)


def collate_audios(waveforms: Sequence[torch.Tensor],
                   padding_masks: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.BoolTensor]:
    """Waveforms zero-padded to (B, Nmax); padding masks padded with True to (B, Tmax + 1)."""
    if len(waveforms) != len(padding_masks):
        raise ValueError(f"{len(waveforms)} waveforms but {len(padding_masks)} padding masks")
    src_audios = _pad_right(waveforms, 0.0, torch.float32)
    masks = _pad_right(padding_masks, True, torch.bool)
    return src_audios, masks


def collate_ids(ids: Sequence[torch.Tensor], pad: int = -1) -> torch.LongTensor:
    """Preserve-id lists -> (B, Pmax), padded with ``pad`` (-1 = no position)."""
    return _pad_right(ids, pad, torch.long)


def collate_bool(masks: Sequence[torch.Tensor], pad: bool = False) -> torch.BoolTensor:
    """Mask vectors -> (B, Lmax) bool, padded with ``pad`` (False: padding is never 'masked')."""
    return _pad_right(masks, pad, torch.bool)
