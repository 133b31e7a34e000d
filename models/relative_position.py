"""Relative-position bucket maps for the per-modality attention bias.

Text and audio use T5/OFA-style log buckets over token distance; images use the
BEiT 2-D scheme over patch offsets.  Both reserve three extra buckets for the CLS
token (as query, as key, and CLS-to-CLS).  The bias of a sequence is
``table[bucket[:S, :S]]``; tables are learned ``nn.Embedding(num_buckets, heads)``.
"""
import math

import torch


def token_bucket_count(bucket_size: int) -> int:
    return 2 * bucket_size + 2


def make_token_bucket_position(bucket_size: int, max_position: int = 1024) -> torch.Tensor:
    """(max_position, max_position) int64 bucket ids for 1-D sequences with a CLS at 0."""
    context = torch.arange(max_position, dtype=torch.long)[:, None]
    memory = torch.arange(max_position, dtype=torch.long)[None, :]
    relative = context - memory
    sign = torch.sign(relative)
    mid = bucket_size // 2
    # Distances inside (-mid, mid) keep their exact value; beyond, log-spaced buckets.
    abs_pos = torch.where((relative < mid) & (relative > -mid), torch.full_like(relative, mid - 1),
                          torch.abs(relative))
    log_pos = torch.ceil(
        torch.log(abs_pos.double() / mid) / math.log((max_position - 1) / mid) * (mid - 1)
    ).long() + mid
    bucket = torch.where(abs_pos.le(mid), relative, log_pos * sign)
    bucket = bucket + bucket_size - 1
    bucket[0, :] = 2 * bucket_size - 1  # CLS as query
    bucket[:, 0] = 2 * bucket_size  # CLS as key
    bucket[0, 0] = 2 * bucket_size + 1
    return bucket


def image_bucket_count(rel_bucket_size: int) -> int:
    return (2 * rel_bucket_size - 1) ** 2 + 3


def make_image_bucket_position(rel_bucket_size: int) -> torch.Tensor:
    """((R*R+1), (R*R+1)) int64 bucket ids for a row-major R x R patch grid plus CLS."""
    size = rel_bucket_size
    coords_h = torch.arange(size)
    coords_w = torch.arange(size)
    coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij")).flatten(1)  # 2, R*R
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # R*R, R*R, 2
    relative = relative + (size - 1)
    index = relative[:, :, 0] * (2 * size - 1) + relative[:, :, 1]
    num = image_bucket_count(size)
    bucket = torch.zeros(size * size + 1, size * size + 1, dtype=torch.long)
    bucket[1:, 1:] = index
    bucket[0, :] = num - 3
    bucket[:, 0] = num - 2
    bucket[0, 0] = num - 1
    return bucket
