"""ONE-PEACE as an MTEB encoder: ``encode(inputs, *, task_metadata, hf_split, hf_subset, prompt_type)``.

Each batch is dispatched on its columns: a column named after a registered modality
(``models/modalities.py``; MTEB's ``text``, ``image``, ``audio`` and ``video`` are all registered) is
embedded by that branch of the hub (``hub.extract_features``, L2-normalised).  A row with one input
gets exactly the hub's embedding.  A row with several (MTEB's ``it2i``, ``at2i``, ``va2t`` ... tasks)
gets the fused embedding

    normalize(sum_m  w_m * e_m)        e_m: the row's L2-normalised embedding of modality m

with every ``w_m = 1`` unless ``fusion_weights`` says otherwise.  This is the paper's composition of
queries across modalities (ONE-PEACE's emergent retrieval: audio + text -> image, audio + image -> image,
in one shared space) and what MTEB's multimodal wrappers do for mixed rows (ImageBind's normalises each
modality and sums, PE-AV and others sum); ONE-PEACE's joint ``[text; image]`` pass is not used: it feeds
the classification heads (VQA, NLVR2, grounding) and has no projection into the retrieval space.
Rows may lack a modality (``None``); a row with no input at all is an error naming the row.
"""
import logging
import math
from typing import Dict, Mapping, Optional, Sequence

import torch
from mteb.models.abs_encoder import AbsEncoder
from tqdm.auto import tqdm

from ..hub import from_pretrained
from ..models.modalities import modality_names
from .inputs import empty_texts, net_input

logger = logging.getLogger(__name__)


class OnePeaceEncoder(AbsEncoder):
    """The MTEB encoder over a ONE-PEACE hub (a retrieval or pretraining checkpoint)."""

    def __init__(self, model_name: str, revision: Optional[str] = None, *, checkpoint: Optional[str] = None,
                 hub=None, device: Optional[str] = None, dtype: str = "float32", bpe_dir: Optional[str] = None,
                 modalities: Optional[Sequence[str]] = None,
                 fusion_weights: Optional[Mapping[str, float]] = None):
        if (hub is None) == (checkpoint is None):
            raise ValueError("OnePeaceEncoder needs exactly one of checkpoint= (a file from_pretrained reads) "
                             "or hub= (a loaded hub)")
        if hub is None:
            hub = from_pretrained(checkpoint, device=device, dtype=dtype, bpe_dir=bpe_dir, modalities=modalities)
        if hub.is_classifier:
            raise ValueError(f"MTEB embeds with a retrieval or pretraining checkpoint; {checkpoint or 'this hub'} is "
                             f"a classification checkpoint (head {hub.model.head_type!r})")
        self.model_name = model_name
        self.revision = revision
        self.hub = hub
        self.model = hub.model
        self.fusion_weights = checked_fusion_weights(fusion_weights or {}, self.modalities)
        self.empty_texts = 0  # of the last encode() (logged there)

    @property
    def modalities(self) -> tuple:
        """The branches this encoder embeds (the checkpoint's, plus video if it was built)."""
        return tuple(m for m in modality_names() if m in self.hub.model.modalities)

    @property
    def embed_dim(self) -> int:
        return getattr(self.hub.model, f"{self.modalities[0]}_proj").out_features

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None, **kwargs):
        """(rows, embed_dim) float32 numpy embeddings of every row of ``inputs`` (an MTEB DataLoader).
        ONE-PEACE takes no instructions: the task, split and prompt type do not change an embedding."""
        show = kwargs.get("show_progress_bar", True)
        parts, first, self.empty_texts = [], 0, 0
        for batch in tqdm(inputs, disable=not show, desc=f"ONE-PEACE {task_metadata.name}"):
            try:
                parts.append(self.embed_batch(batch))
            except (ValueError, TypeError) as err:  # name the task, split and rows (the item index is in-batch)
                raise type(err)(f"{task_metadata.name} {hf_subset}/{hf_split}, the batch of rows from {first}: "
                                f"{err}") from err
            first += len(parts[-1])
        if self.empty_texts:
            logger.warning("%s %s/%s: %d empty or whitespace-only texts embedded as the official process_text "
                           "embeds them (the BPE of the spaces, then EOS)", task_metadata.name, hf_subset, hf_split,
                           self.empty_texts)
        if not parts:
            return torch.empty(0, self.embed_dim).numpy()
        return torch.cat(parts).float().cpu().numpy()

    def embed_batch(self, batch: Mapping[str, Sequence]) -> torch.Tensor:
        """(B, D) embeddings of one collated batch ``{column: [item per row]}``."""
        columns = [m for m in modality_names() if m in batch]
        if not columns:
            raise ValueError(f"the batch has no column this model embeds: its columns are {sorted(batch)}; "
                             f"registered modalities: {', '.join(modality_names())}")
        lacking = [m for m in columns if m not in self.modalities]
        if lacking:
            hint = "; a video branch is built from the image branch with modalities=(..., 'video')" if (
                "video" in lacking and "image" in self.modalities) else ""
            raise ValueError(f"the task gives {', '.join(lacking)} inputs but the checkpoint has no such branch "
                             f"(it embeds {', '.join(self.modalities)}{hint})")
        rows = len(batch[columns[0]])
        for m in columns[1:]:
            if len(batch[m]) != rows:
                raise ValueError(f"batch columns disagree on the number of rows: {columns[0]} {rows}, {m} "
                                 f"{len(batch[m])}")
        parts = {}
        for m in columns:
            present = [i for i, item in enumerate(batch[m]) if item is not None]
            if present:
                items = [batch[m][i] for i in present]
                if m == "text":
                    self.empty_texts += empty_texts(items)
                parts[m] = (present, self.hub.extract_features(m, **net_input(self.hub, m, items, m)))
        if not parts:
            raise ValueError(f"batch rows {list(range(rows))} have no input in any column ({', '.join(columns)})")
        return fuse(parts, rows, self.fusion_weights)


def fuse(parts: Dict[str, tuple], rows: int, weights: Mapping[str, float]) -> torch.Tensor:
    """Rows of one modality keep its embedding; rows of several get normalize(sum of weighted embeddings).
    ``parts``: {modality: (row indices, (len(indices), D) embeddings)}."""
    first = next(iter(parts.values()))[1]
    total = first.new_zeros((rows, first.size(1)), dtype=torch.float32)  # summed in float32 whatever the dtype
    count = torch.zeros(rows, dtype=torch.long)
    single = first.new_zeros((rows, first.size(1)), dtype=torch.float32)
    for modality, (present, emb) in parts.items():
        index = torch.as_tensor(present, dtype=torch.long)
        total[index.to(total.device)] += float(weights.get(modality, 1.0)) * emb.float()
        single[index.to(total.device)] = emb.float()
        count[index] += 1
    empty = (count == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"batch rows {empty} have no input in any column ({', '.join(parts)})")
    fused = (count > 1).to(total.device)
    return torch.where(fused[:, None], torch.nn.functional.normalize(total, dim=-1), single)


def checked_fusion_weights(weights: Mapping[str, float], modalities: Sequence[str]) -> Dict[str, float]:
    out = {}
    for modality, weight in weights.items():
        if modality not in modalities:
            raise ValueError(f"fusion_weights names {modality!r}; this encoder embeds {', '.join(modalities)}")
        weight = float(weight)
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"fusion_weights[{modality!r}] must be a positive number, got {weight}")
        out[modality] = weight
    return out
