"""Gathering embeddings from every worker (contrastive negatives, evaluation captions).

Unlike the official code, workers may hold different batch sizes: sizes are gathered
first, tensors are padded to the largest, and each worker learns the offset of its own
rows in the concatenation (the targets of its rows).
"""
from typing import Tuple

import torch
import torch.distributed as dist


def world_info() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def gather_with_offsets(local: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """All workers' rows concatenated in rank order (detached), and this worker's offset.

    No gradient flows through the gathered copy (as in the official model): each
    worker back-propagates only through its own rows, used on the other side of the
    similarity matrix.
    """
    rank, world = world_info()
    if world == 1:
        return local.detach(), 0
    size = torch.tensor([local.size(0)], device=local.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    padded = local.new_zeros((max(sizes),) + tuple(local.shape[1:]))
    padded[: local.size(0)] = local.detach()
    chunks = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(chunks, padded)
    gathered = torch.cat([chunk[:n] for chunk, n in zip(chunks, sizes)], dim=0)
    return gathered, sum(sizes[:rank])
