"""``one-peace-index --backend onnx``: texts and sounds embedded by onnxruntime instead of torch.

Measured on this 2-core CPU (``bench/onnx_speed.py``, docs/BENCHMARKS.md), the indexer's embedding path
(decode, preprocess, embed) with onnxruntime against torch fp32: texts 1.27x the files/s (1.60x less CPU
time), 5 s clips 1.54x (1.33x), images 1.03x (0.98x: no gain, so they stay with torch, as do video and
preprocessing); the vectors are the same (within 1e-4; measured ~1e-7).  The graphs are exported from the
checkpoint the index was built with (one-peace-export's code) into ``INDEX_DIR/onnx/`` on first use and
reused by later runs; a graph found there that came from another checkpoint is refused, naming the file.
Only float32 indexes on the CPU: an index's vectors come from one model and one precision.
"""
import os
from typing import Dict, Sequence

import torch

from ..hub.file_identity import checkpoint_identity
from ..hub.onnx_export import export_modality
from ..hub.onnx_runtime import OnnxEncoder

GRAPH_DIR = "onnx"  # under the index directory
ONNX_MODALITIES = ("text", "audio")  # faster than torch fp32 here (module docstring)


class OnnxHub:
    """The torch hub, with ``extract_features`` of the modalities in ``encoders`` run by onnxruntime."""

    def __init__(self, hub, encoders: Dict[str, OnnxEncoder]):
        self._hub = hub
        self.encoders = encoders

    def __getattr__(self, name):
        return getattr(self._hub, name)

    def extract_features(self, modality: str, **net_input) -> torch.Tensor:
        encoder = self.encoders.get(modality)
        if encoder is None:
            return self._hub.extract_features(modality, **net_input)
        return torch.from_numpy(encoder.embed(**net_input))


def onnx_hub(hub, identity: Dict, index_dir: str, modalities: Sequence[str]) -> OnnxHub:
    """``hub`` with onnxruntime for those of ``modalities`` in ``ONNX_MODALITIES`` (graphs exported on first use)."""
    if identity.get("dtype", "float32") != "float32" or hub.device.type != "cpu":
        raise ValueError(f"--backend onnx runs float32 graphs on the CPU; index {index_dir} embeds in "
                         f"{identity.get('dtype')} on {hub.device} (use --backend torch)")
    checkpoint = checkpoint_identity(identity["checkpoint"])  # the identity the index records, from the cache
    graph_dir = os.path.join(index_dir, GRAPH_DIR)
    encoders = {}
    for modality in modalities:
        if modality not in ONNX_MODALITIES or modality not in hub.model.modalities:
            continue
        graph = os.path.join(graph_dir, f"{modality}.onnx")
        if not os.path.isfile(graph):
            export_modality(hub, modality, graph_dir, checkpoint)
        encoders[modality] = OnnxEncoder(graph, checkpoint=checkpoint)
    return OnnxHub(hub, encoders)
