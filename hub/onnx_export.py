"""``one-peace-export``: one ONNX graph per encoder, for serving without torch.

    one-peace-export one-peace.pt --modality text,image,audio exported/

writes, per modality, ``exported/<modality>.onnx`` (inputs: the hub's ``net_input`` tensors; output
``embedding``: (batch, D), L2-normalised) and ``exported/<modality>.preprocessing.json`` (what turns raw
items into those inputs, the input names and dtypes, the opset, the embedding width and the checkpoint's
identity, also stored in the graph's ``metadata_props``).  ``hub/onnx_runtime.py:OnnxEncoder`` runs them.

Exporter: torch's TorchScript tracer (``torch.onnx.export(..., dynamo=False)``).  The encoders branch in
Python on whether a batch holds padding; tracing records the branch its example takes, so every example
holds a padded row and the graph masks padding whatever it is given (with no padding the masking is a
no-op).  Dynamic axes: the batch everywhere, the token count (text) and the sample/frame count (audio);
images have the checkpoint's fixed size (its relative-position buckets are built for that grid).
Every export is checked: onnxruntime's outputs on the examples are compared with the torch model's
before the files are written (``--tolerance``, default 1e-4), and a graph that differs is an error.
"""
import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from ..models.kernels import switches
from .file_identity import checkpoint_identity
from .onnx_runtime import (
    EXPORTED_MODALITIES,
    FORMAT,
    META_PREFIX,
    OUTPUT_NAME,
    OnnxEncoder,
    config_path_for,
)

OPSET = 17
OPSETS = range(14, 23)  # 14: the first with scaled_dot_product_attention; 22: the tracer's last
TOLERANCE = 1e-4
PROTOBUF_LIMIT = 2_000_000_000 - (64 << 20)  # a graph proto holds 2 GB; larger weights go to <name>.onnx.data
# Inputs of each graph: (name, dtype, dynamic axes).
GRAPH_INPUTS = {
    "text": (("src_tokens", "int64", {0: "batch", 1: "tokens"}),),
    "image": (("src_images", "float32", {0: "batch"}),),
    "audio": (("src_audios", "float32", {0: "batch", 1: "samples"}),
              ("audio_padding_masks", "bool", {0: "batch", 1: "frames_plus_cls"})),
}


class _Encoder(nn.Module):
    """``model.encode(modality, ...)`` with positional inputs, in the order of ``GRAPH_INPUTS``."""

    def __init__(self, model, modality: str):
        super().__init__()
        self.model, self.modality = model, modality
        self.names = [name for name, _, _ in GRAPH_INPUTS[modality]]

    def forward(self, *inputs):
        return self.model.encode(self.modality, **dict(zip(self.names, inputs)))


def example_inputs(hub, modality: str) -> Dict[str, torch.Tensor]:
    """Two rows, the second padded (text, audio), so the traced graph keeps the padding branches."""
    generator = torch.Generator().manual_seed(0)
    if modality == "text":
        pad, eos, size = hub.task.dictionary.pad(), hub.task.dictionary.eos(), len(hub.task.dictionary)
        tokens = torch.randint(4, size, (2, 7), generator=generator)
        tokens[:, -1] = eos
        tokens[1, 3] = eos
        tokens[1, 4:] = pad
        return {"src_tokens": tokens}
    if modality == "image":
        side = hub.patch_image_size
        return {"src_images": torch.randn(2, 3, side, side, generator=generator)}
    adapter = hub.model.encoder_wrapper.adapter("audio")
    from ..data_utils.feature_spec import samples_for_frames

    frames = max(4, min(50, adapter.max_positions - 1))
    samples = samples_for_frames(frames, adapter.spec)
    masks = torch.zeros(2, frames + 1, dtype=torch.bool)
    masks[1, frames // 2 + 1:] = True
    audios = torch.randn(2, samples, generator=generator)
    audios[1, samples_for_frames(frames // 2, adapter.spec):] = 0
    return {"src_audios": audios, "audio_padding_masks": masks}


@contextlib.contextmanager
def _traceable_kernels():
    """The plain attention and LayerNorm paths while tracing (the Triton kernels are GPU code)."""
    attention, layer_norm = switches.requested_attention_impl(), switches.requested_layer_norm_impl()
    if attention == "fused":
        switches.set_attention_impl("sdpa")
    if layer_norm == "fused":
        switches.set_layer_norm_impl("torch")
    try:
        yield
    finally:
        if attention == "fused":
            switches.set_attention_impl("fused")
        if layer_norm == "fused":
            switches.set_layer_norm_impl("fused")


def _check_exportable(hub, modality: str, source: str) -> None:
    if modality not in EXPORTED_MODALITIES:
        raise ValueError(f"--modality {modality!r}: one-peace-export exports {', '.join(EXPORTED_MODALITIES)}")
    if not hasattr(hub.model, "encode"):
        raise ValueError(f"{source} is a {hub.model_type} checkpoint: only embedding models (one_peace_retrieval, "
                         "one_peace_pretrain) are exported")
    if modality not in hub.model.modalities:
        raise ValueError(f"{source} has no {modality} branch (it has {', '.join(hub.model.modalities)}); "
                         f"export --modality {','.join(m for m in hub.model.modalities if m in EXPORTED_MODALITIES)}")
    if hub.dtype != torch.float32 or hub.device.type != "cpu":
        raise ValueError(f"export from a float32 CPU hub (from_pretrained(..., device='cpu', dtype='float32')); this one "
                         f"is {hub.dtype} on {hub.device}")


def preprocessing_config(hub, modality: str, identity: Dict, opset: int) -> Dict:
    """What turns raw items into the graph's inputs, and what the graph is."""
    config = {
        "format": FORMAT, "modality": modality, "graph": f"{modality}.onnx",
        "inputs": [{"name": name, "dtype": dtype, "dynamic_axes": {str(k): v for k, v in axes.items()}}
                   for name, dtype, axes in GRAPH_INPUTS[modality]],
        "output": {"name": OUTPUT_NAME, "shape": ["batch", None], "l2_normalised": True},
        "embed_dim": int(getattr(hub.model, f"{modality}_proj").out_features),
        "opset": opset, "exporter": f"torch.onnx TorchScript tracer (torch {torch.__version__})",
        "model_type": hub.model_type,
        "checkpoint": {k: identity[k] for k in ("path", "size", "sha256")},
    }
    config["output"]["shape"][1] = config["embed_dim"]
    if modality == "text":
        from ..data_utils.bpe_files import sha256_of
        from ..models.adapters.text import TEXT_POSITIONS

        dictionary, bpe_dir = hub.task.dictionary, os.path.abspath(hub.task.tokenizer.bpe_dir)
        config["text"] = {"bpe_dir": bpe_dir, "max_src_length": hub.max_src_length,
                          "lowercase": True, "leading_space": True, "append_eos": True, "pad_idx": dictionary.pad(),
                          "eos_idx": dictionary.eos(), "dictionary_size": len(dictionary),
                          "dictionary_sha256": sha256_of(os.path.join(bpe_dir, "dict.txt")),
                          "max_tokens": TEXT_POSITIONS - 1}
    elif modality == "image":
        from ..data_utils.image import CLIP_MEAN, CLIP_STD

        config["image"] = {"size": hub.patch_image_size, "resize": "bicubic, aspect not kept", "scale": 1 / 255,
                           "mean": list(CLIP_MEAN), "std": list(CLIP_STD), "layout": "NCHW RGB",
                           "exif_transpose": True}
    else:
        from ..data_utils.audio import SAMPLE_RATE

        adapter = hub.model.encoder_wrapper.adapter("audio")
        config["audio"] = {"sample_rate": SAMPLE_RATE, "max_duration": hub.max_duration, "mono": True,
                           "normalise": "layer norm over the whole clip (eps 1e-5), then the first max_duration s; "
                                        "clips under 1 s tiled to 1 s",
                           "feature_encoder_spec": [list(layer) for layer in adapter.spec],
                           "max_frames": adapter.max_positions - 1,
                           "batching": "rows of equal frame count run together, trimmed to their length"}
    return config


def _trace(hub, modality: str, inputs: Dict[str, torch.Tensor], path: str, opset: int) -> None:
    wrapper = _Encoder(hub.model, modality).eval()  # eval: the exporter restores the wrapper's mode on the model
    names = [name for name, _, _ in GRAPH_INPUTS[modality]]
    dynamic_axes = {name: axes for name, _, axes in GRAPH_INPUTS[modality]}
    dynamic_axes[OUTPUT_NAME] = {0: "batch"}
    with _traceable_kernels(), torch.no_grad(), warnings.catch_warnings():
        # The tracer's warnings name the Python branches it records; the examples choose them (module docstring).
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, tuple(inputs[n] for n in names), path, dynamo=False, input_names=names,
                          output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes, opset_version=opset,
                          do_constant_folding=True)


def _finish(tmp_path: str, final_path: str, config: Dict) -> None:
    """Metadata in the graph, saved as one file (plus ``<name>.onnx.data`` past the protobuf limit)."""
    import onnx

    model = onnx.load(tmp_path, load_external_data=True)
    identity = config["checkpoint"]
    meta = {"format": FORMAT, "modality": config["modality"], "checkpoint_size": str(identity["size"]),
            "checkpoint_sha256": identity["sha256"], "checkpoint_path": identity["path"],
            "embed_dim": str(config["embed_dim"]), "preprocessing": json.dumps(config, sort_keys=True)}
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=META_PREFIX + key, value=value)
    # Summed per tensor and node: ByteSize() of a whole model past 2 GB is not computed by protobuf.
    size = sum(t.ByteSize() for t in model.graph.initializer) + sum(n.ByteSize() for n in model.graph.node)
    if size > PROTOBUF_LIMIT:
        onnx.save(model, final_path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=os.path.basename(final_path) + ".data")
    else:
        onnx.save(model, final_path)


def export_modality(hub, modality: str, out_dir: str, identity: Dict, opset: int = OPSET,
                    tolerance: float = TOLERANCE, source: Optional[str] = None) -> str:
    """Export ``hub``'s ``modality`` encoder into ``out_dir``; returns the graph's path.  ``identity``:
    :func:`~one_peace.hub.onnx_runtime.checkpoint_identity` of the checkpoint the hub was loaded from."""
    _check_exportable(hub, modality, source or identity["path"])
    os.makedirs(out_dir, exist_ok=True)
    final_path = os.path.join(out_dir, f"{modality}.onnx")
    config = preprocessing_config(hub, modality, identity, opset)
    inputs = example_inputs(hub, modality)
    work = tempfile.mkdtemp(prefix=f".export-{modality}-", dir=out_dir)
    try:
        traced = os.path.join(work, "traced.onnx")
        _trace(hub, modality, inputs, traced, opset)
        staged = os.path.join(work, f"{modality}.onnx")
        _finish(traced, staged, config)
        with open(config_path_for(staged), "w") as fh:
            json.dump(config, fh, indent=1)
        _verify(hub, modality, OnnxEncoder(staged), inputs, tolerance)
        # The checked files replace any earlier export (its weights file too, when this one has none).
        for name in (f"{modality}.onnx.data", f"{modality}.onnx", os.path.basename(config_path_for(staged))):
            if os.path.exists(os.path.join(work, name)):
                os.replace(os.path.join(work, name), os.path.join(out_dir, name))
            elif os.path.exists(os.path.join(out_dir, name)):
                os.remove(os.path.join(out_dir, name))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final_path


def _verify(hub, modality: str, encoder: OnnxEncoder, inputs: Dict[str, torch.Tensor], tolerance: float) -> None:
    """onnxruntime against the hub's torch path on the examples, whole and one row alone."""
    batches = [inputs, {k: v[:1] for k, v in inputs.items()}]
    if modality == "audio":  # the padded row alone, trimmed as a one-clip batch is
        batches.append({k: v[1:] for k, v in inputs.items()})
    for batch in batches:
        expected = hub.extract_features(modality, **batch).float().numpy()
        try:
            got = encoder.embed(**batch)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types
            raise RuntimeError(f"the exported {modality} graph fails on a batch of {len(expected)} check examples "
                               f"({' '.join(str(exc).split())[:300]}); it was not written") from None
        diff = float(abs(expected - got).max())
        if not diff <= tolerance:
            raise RuntimeError(f"the exported {modality} graph differs from the torch model by {diff:.3g} (> "
                               f"{tolerance:g}) on a batch of {got.shape[0]}; it was not written")


def export(source: str, modalities: Sequence[str], out_dir: str, bpe_dir: Optional[str] = None, opset: int = OPSET,
           tolerance: float = TOLERANCE) -> List[str]:
    """Load ``source`` (a checkpoint file, a model directory or a Hub repo ``org/name``) and export each
    modality; returns the graphs."""
    from .interface import from_pretrained
    from .pretrained_dir import resolve_pretrained

    modalities = checked_modalities(modalities)
    if opset not in OPSETS:
        raise ValueError(f"--opset {opset}: the exporter writes opsets {OPSETS[0]} to {OPSETS[-1]}")
    if not tolerance > 0:
        raise ValueError(f"--tolerance must be above 0, got {tolerance:g}")
    identity = checkpoint_identity(resolve_pretrained(source))  # a Hub repo org/name: its snapshot directory
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"OUT {out_dir} is a file; name a directory (created if absent)")
    hub = from_pretrained(identity["path"], device="cpu", dtype="float32", bpe_dir=bpe_dir)
    return [export_modality(hub, m, out_dir, identity, opset, tolerance, source=identity["path"]) for m in modalities]


def checked_modalities(modalities) -> List[str]:
    names = [m.strip() for m in (modalities.split(",") if isinstance(modalities, str) else modalities)]
    bad = [m for m in names if m not in EXPORTED_MODALITIES]
    if bad or not names:
        raise ValueError(f"--modality {','.join(names)!r}: choose from {', '.join(EXPORTED_MODALITIES)} "
                         "(comma-separated)")
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="one-peace-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="checkpoint file (.pt), model directory or Hub repo org/name")
    parser.add_argument("out", help="output directory: <modality>.onnx and <modality>.preprocessing.json per modality")
    parser.add_argument("--modality", required=True,
                        help=f"encoders to export, comma-separated ({', '.join(EXPORTED_MODALITIES)})")
    parser.add_argument("--bpe-dir", default=None, help="BPE files (default: the checkpoint's, $ONE_PEACE_BPE_DIR, "
                                                        "then the cache)")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"largest allowed difference from the torch model on the check examples (default "
                             f"{TOLERANCE:g})")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for path in export(args.source, args.modality, args.out, bpe_dir=args.bpe_dir, opset=args.opset,
                       tolerance=args.tolerance):
        print(f"{path}  {config_path_for(path)}")
    return 0


def cli_main():
    """Console entry point: a user error is one ``one-peace-export: error:`` line (``cli_errors``)."""
    from .. import cli_errors

    cli_errors.install(force=True)
    sys.exit(main())


if __name__ == "__main__":
    cli_main()
