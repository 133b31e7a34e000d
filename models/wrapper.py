"""``ModelWrapper``: the adapters of the enabled modalities plus the fusion encoder.

Used twice by the pretraining model: as ``encoder_wrapper`` (the ONE-PEACE encoder)
and as ``decoder_wrapper`` (the small decoder of the masked student path, which has
no token table, no patch/conv extractor and no relative-position bias).
"""
from collections.abc import Mapping
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .adapters.base import AdapterOutput, MissingInputError
from .fusion_encoder import FusionEncoder
from .modalities import encoder_type_modalities, get_modality, modality_names


class ModalityFeatures(NamedTuple):
    """One modality's segment of an encoder pass (indexable as ``(features, padding_mask)``)."""

    features: torch.Tensor  # (B, S, D) after the modality's final LayerNorm
    padding_mask: torch.Tensor  # (B, S) True = pad
    full_padding_mask: torch.Tensor  # padding of the unmasked sequence (student views differ)


class EncoderOutputs(Mapping):
    """``{modality: ModalityFeatures}`` of one pass; an int index gives the i-th modality's entry.

    Not a ``dict``: torch's module backward hooks (used by fairseq's NaN detector) look for the
    first tensor of an output by ``output[0]``, which this supports.
    """

    def __init__(self, items: Dict[str, ModalityFeatures]):
        self._items = dict(items)

    def __getitem__(self, key):
        if isinstance(key, int):
            return list(self._items.values())[key]
        return self._items[key]

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)

    def __repr__(self):
        return f"EncoderOutputs({', '.join(self._items)})"


class ModelWrapper(nn.Module):
    def __init__(self, cfg, modalities: Sequence[str], vocab_size: Optional[int] = None,
                 pad_idx: int = 1, num_tables: int = 1):
        super().__init__()
        self.modalities = tuple(modalities)
        for name in modality_names():
            adapter = None
            if name in self.modalities:
                adapter = get_modality(name).build_adapter(cfg, num_tables, vocab_size, pad_idx)
            setattr(self, f"{name}_adapter", adapter)
        self.fusion_model = FusionEncoder(cfg, modalities)

    def adapter(self, modality: str):
        module = getattr(self, f"{modality}_adapter", None)
        if module is None:
            raise ValueError(f"this model has no {modality} branch (built for {', '.join(self.modalities)})")
        return module

    def embed(self, encoder_type: str, net_input: Dict) -> List[AdapterOutput]:
        """The adapter outputs of every modality of ``encoder_type`` (student views where
        ``<modality>_preserve_ids`` is given)."""
        inputs = []
        for modality in encoder_type_modalities(encoder_type):
            try:
                inputs.append(self.adapter(modality)(net_input, net_input.get(get_modality(modality).preserve_key)))
            except MissingInputError as err:
                raise MissingInputError(f"encoder_type={encoder_type!r} needs {err.key}", err.key) from None
        return inputs

    def forward(self, encoder_type: str = "text", **net_input) -> EncoderOutputs:
        """``{modality: ModalityFeatures}`` of one (fused) pass over the official ``net_input`` keys
        (``src_tokens``, ``src_images``, ``src_audios``, ``audio_padding_masks``, ``<m>_preserve_ids``, ...)."""
        return self.run_fusion(self.embed(encoder_type, net_input), encoder_type_modalities(encoder_type))

    def run_fusion(self, inputs: List[AdapterOutput], modalities) -> EncoderOutputs:
        return self.run_fusion_passes([(inputs, modalities)])[0]

    def run_fusion_passes(self, passes: List[Tuple[List[AdapterOutput], Sequence[str]]]) -> List[EncoderOutputs]:
        """:meth:`run_fusion` of several passes, which the fusion encoder runs packed where it can
        (``FusionEncoder.forward_passes``)."""
        features = self.fusion_model.forward_passes([(inputs, list(modalities)) for inputs, modalities in passes])
        return [EncoderOutputs({m: ModalityFeatures(f, inp.padding_mask, inp.whole_sequence_mask)
                                for m, f, inp in zip(modalities, pass_features, inputs)})
                for (inputs, modalities), pass_features in zip(passes, features)]

    def forward_passes(self, requests: Sequence[Tuple[str, Dict]]) -> List[EncoderOutputs]:
        """:meth:`forward` of several ``(encoder_type, net_input)`` requests, their fusion passes packed."""
        return self.run_fusion_passes([(self.embed(encoder_type, net_input), encoder_type_modalities(encoder_type))
                                       for encoder_type, net_input in requests])

    def forward_intermediates(self, encoder_type: str, indices=None, norm: bool = False,
                              **net_input) -> Dict[str, List[torch.Tensor]]:
        """Token features after chosen layers, per modality: ``{modality: [(B, S, D), ...]}``.

        ``indices``: layer indices (negative count from the end; an int ``n`` = the last ``n``
        layers; None = every layer).  ``norm=True`` applies the modality's final LayerNorm.
        """
        inputs = self.embed(encoder_type, net_input)
        modalities = encoder_type_modalities(encoder_type)
        per_layer = self.fusion_model(inputs, list(modalities), return_layers="all" if indices is None else indices,
                                      norm_layers=norm)
        return {m: [layer[i] for layer in per_layer] for i, m in enumerate(modalities)}
