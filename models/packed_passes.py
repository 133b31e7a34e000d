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

    def gather(self, packed: torch.Tensor) -> torch.Tensor:
        """(B, S, D) of this pass from the packed (N, D) rows (a view for a single segment)."""
        parts = [packed[a:b].view(self.batch, n, -1) for (a, b), n in zip(self.rows, self.lengths)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def scatter(self, out: torch.Tensor, per_pass: torch.Tensor) -> None:
        """Writes ``per_pass`` (B, S, H, Dh), in sequence order, into this pass's rows of ``out`` (N, H, Dh)."""
        start = 0
        for (a, b), n in zip(self.rows, self.lengths):
            out[a:b].view(self.batch, n, *per_pass.shape[2:]).copy_(per_pass[:, start:start + n])
            start += n


class PackedLayout(NamedTuple):
    passes: Tuple[PassLayout, ...]
    blocks: Tuple[Tuple[str, int, int], ...]  # (modality, start, end): each modality's rows, contiguous
    rows: int

    def per_row(self, per_sample: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N,) values of the packed rows from each pass's (B,) per-sample values (a sample's segments alike)."""
        order = sorted((a, p, n) for p, layout in enumerate(self.passes) for (a, _), n in zip(layout.rows, layout.lengths))
        return torch.cat([per_sample[p].repeat_interleave(n) for _, p, n in order])

    def split(self, per_modality: dict) -> List[List[torch.Tensor]]:
        """Per pass, its (B, S, D) segments from ``{modality: that modality's block}`` (views)."""
        starts = {m: a for m, a, _ in self.blocks}
        return [[per_modality[m][a - starts[m]:b - starts[m]].view(layout.batch, n, -1)
                 for m, (a, b), n in zip(layout.modalities, layout.rows, layout.lengths)]
                for layout in self.passes]


def pack(passes: Sequence[Tuple[torch.Tensor, Sequence[Tuple[str, int]], Optional[torch.Tensor],
                                Callable[[int], object]]]) -> Tuple[torch.Tensor, PackedLayout]:
    """``passes``: per pass ``(x (B, S, D), [(modality, length), ...], key_padding_mask, bias_of)``.
    Returns the packed (N, D) matrix and its layout."""
    order = []  # modalities in order of first appearance
    for _, segments, _, _ in passes:
        order += [m for m, _ in segments if m not in order]
    rows = [[None] * len(segments) for _, segments, _, _ in passes]
    pieces, blocks, start = [], [], 0
    for modality in order:
        block_start = start
        for p, (x, segments, _, _) in enumerate(passes):
            offset = 0
            for s, (m, length) in enumerate(segments):
                if m == modality:
                    piece = x[:, offset:offset + length]
                    pieces.append(piece.reshape(-1, x.size(-1)))
                    rows[p][s] = (start, start + piece.size(0) * length)
                    start += piece.size(0) * length
                offset += length
        blocks.append((modality, block_start, start))
    layouts = tuple(PassLayout(x.size(0), tuple(m for m, _ in segments), tuple(n for _, n in segments), tuple(r),
                               mask, bias_of)
                    for (x, segments, mask, bias_of), r in zip(passes, rows))
    packed = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    return packed, PackedLayout(layouts, tuple(blocks), start)
