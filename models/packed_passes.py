"""Several encoder passes run as one: their tokens packed into one (N, D) matrix, layer by layer.

Pretraining runs the same layers over five views of one batch (text, image, their masked students, the
fused student), each a pass of its own.  Everything in a layer but attention works token by token, so
the passes can share it: the LayerNorms, the q/k/v and output projections, the residuals and each
modality's FFN then run once over the rows of all passes, and each weight's gradient comes out of one
matrix multiply instead of being summed over five.  Attention still runs per pass, on views of the
packed projections, with that pass's bias and padding.

The packed rows are ordered by modality (every pass's text rows, then every pass's image rows, ...), so
each modality's FFN and final LayerNorm see one contiguous block.  A fused pass (``vl``) gathers its
text and image rows back into its ``[text ; image]`` sequence for attention.

The values are those of separate passes up to float summation order (tests/test_packed_passes.py).
"""
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch


class PassLayout(NamedTuple):
    """Where one pass's segments sit in the packed rows."""

    batch: int
    modalities: Tuple[str, ...]  # per segment, in sequence order
    lengths: Tuple[int, ...]
    rows: Tuple[Tuple[int, int], ...]  # per segment: (start, end) rows of the packed matrix
    key_padding_mask: Optional[torch.Tensor]  # (B, S) True = pad, or None
    bias: Callable[[int], object]  # layer index -> the pass's attention bias for that layer


class PackedLayout(NamedTuple):
    passes: Tuple[PassLayout, ...]
    blocks: Tuple[Tuple[str, int, int], ...]  # (modality, start, end): each modality's rows, contiguous
    rows: int
    order: Tuple[Tuple[int, int], ...]  # (pass, segment) of each run of rows, in row order; they cover 0..rows

    # The rows are cut with ``split`` and put together with one copy: autograd then gives the packed gradient in
    # one pass.  Slicing each pass's rows out of the packed matrix instead made every slice's backward a
    # zero-filled (N, D) matrix, summed over the slices.
    def _runs(self, start: int = 0, end: Optional[int] = None) -> List[Tuple[int, int, int]]:
        """(pass, segment, rows) of the runs of rows within [start, end), in row order."""
        end = self.rows if end is None else end
        runs = [(p, s, self.passes[p].rows[s]) for p, s in self.order]
        return [(p, s, b - a) for p, s, (a, b) in runs if start <= a < end]

    def _per_pass(self, pieces: Sequence[torch.Tensor]) -> List[List[torch.Tensor]]:
        """Per pass, its (B, n, ...) segments from the runs' pieces (N_run, ...), given in row order (views)."""
        parts = [[None] * len(layout.rows) for layout in self.passes]
        for (p, s), piece in zip(self.order, pieces):
            parts[p][s] = piece.view(self.passes[p].batch, self.passes[p].lengths[s], *piece.shape[1:])
        return parts

    def unpack(self, packed: torch.Tensor) -> List[torch.Tensor]:
        """Per pass, its (B, S, ...) sequence from the packed (N, ...) rows (a view for a single segment)."""
        parts = self._per_pass(packed.split([n for _, _, n in self._runs()]))
        return [segments[0] if len(segments) == 1 else torch.cat(segments, dim=1) for segments in parts]

    def repack(self, per_pass: Sequence[torch.Tensor]) -> torch.Tensor:
        """The inverse of :meth:`unpack`: the passes' (B, S, ...) sequences (any strides) into (N, ...) rows."""
        return _Repack.apply(self, *per_pass)

    def split_blocks(self, packed: torch.Tensor) -> List[torch.Tensor]:
        """Each modality's block of rows, in :attr:`blocks` order (views)."""
        return list(packed.split([b - a for _, a, b in self.blocks]))

    def per_row(self, per_sample: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N,) values of the packed rows from each pass's (B,) per-sample values (a sample's segments alike)."""
        return torch.cat([per_sample[p].repeat_interleave(self.passes[p].lengths[s]) for p, s in self.order])

    def split(self, per_modality: dict) -> List[List[torch.Tensor]]:
        """Per pass, its (B, S, D) segments from ``{modality: that modality's block}`` (views)."""
        return self._per_pass([piece for m, a, b in self.blocks
                               for piece in per_modality[m].split([n for _, _, n in self._runs(a, b)])])


class _Repack(torch.autograd.Function):
    """Copies each pass's segments into their rows; the gradient of each pass is a view of the rows' gradient
    (a ``cat`` for a fused pass), where copies into slices of one buffer would clone the whole gradient per copy."""

    @staticmethod
    def forward(ctx, layout: PackedLayout, *per_pass):
        ctx.layout = layout
        tail = per_pass[0].shape[2:]
        out = per_pass[0].new_empty(layout.rows, *tail)
        for p, x in zip(layout.passes, per_pass):
            start = 0
            for (a, b), n in zip(p.rows, p.lengths):
                out[a:b].view(p.batch, n, *tail).copy_(x[:, start:start + n])
                start += n
        return out

    @staticmethod
    def backward(ctx, grad):
        return (None, *ctx.layout.unpack(grad.contiguous()))


def pack(passes: Sequence[Tuple[torch.Tensor, Sequence[Tuple[str, int]], Optional[torch.Tensor],
                                Callable[[int], object]]]) -> Tuple[torch.Tensor, PackedLayout]:
    """``passes``: per pass ``(x (B, S, D), [(modality, length), ...], key_padding_mask, bias_of)``.
    Returns the packed (N, D) matrix and its layout."""
    modalities = []  # in order of first appearance
    for _, segments, _, _ in passes:
        modalities += [m for m, _ in segments if m not in modalities]
    rows = [[None] * len(segments) for _, segments, _, _ in passes]
    pieces, blocks, order, start = [], [], [], 0
    for modality in modalities:
        block_start = start
        for p, (x, segments, _, _) in enumerate(passes):
            offset = 0
            for s, (m, length) in enumerate(segments):
                if m == modality:
                    piece = x[:, offset:offset + length]
                    pieces.append(piece.reshape(-1, x.size(-1)))
                    rows[p][s] = (start, start + piece.size(0) * length)
                    order.append((p, s))
                    start += piece.size(0) * length
                offset += length
        blocks.append((modality, block_start, start))
    layouts = tuple(PassLayout(x.size(0), tuple(m for m, _ in segments), tuple(n for _, n in segments), tuple(r),
                               mask, bias_of)
                    for (x, segments, mask, bias_of), r in zip(passes, rows))
    packed = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    return packed, PackedLayout(layouts, tuple(blocks), start, tuple(order))
