"""Running an encoder exported by ``one-peace-export`` with onnxruntime: ``OnnxEncoder``.

    from one_peace.hub.onnx_runtime import OnnxEncoder
    enc = OnnxEncoder("exported/image.onnx", checkpoint="one-peace.pt")  # refuses a graph of another checkpoint
    vectors = enc.embed_items(["dog.jpg", "cat.png"])                    # (2, D) float32, L2-normalised

A graph carries the identity of the checkpoint it was exported from (size + SHA-256 of the file, or of
every file of a model directory: ``hub/file_identity.py``, the rule search indexes use too) in its
``metadata_props`` and in the preprocessing config beside it (``<modality>.preprocessing.json``).  Naming a checkpoint whose identity differs is an error naming the
graph file and both identities: its vectors would live in another embedding space.

Audio runs as the hub does by default: clips of equal frame count together, each group trimmed to its
length, so a clip's embedding is the one it gets alone (``AudioAdapter.length_groups``).
"""
import json
import os
from typing import Dict, Optional, Sequence, Union

import numpy as np

from ..data_utils.bpe_files import sha256_of
from ..data_utils.feature_spec import conv_output_frames, samples_for_frames
from .file_identity import checkpoint_identity, describe_identity

FORMAT = "one_peace_onnx/1"
META_PREFIX = "one_peace."
CONFIG_SUFFIX = ".preprocessing.json"
OUTPUT_NAME = "embedding"
EXPORTED_MODALITIES = ("text", "image", "audio")


class OnnxCheckpointMismatch(ValueError):
    """An exported graph used with another checkpoint than the one it was exported from."""


def config_path_for(graph_path: str) -> str:
    base = graph_path[:-len(".onnx")] if graph_path.endswith(".onnx") else graph_path
    return base + CONFIG_SUFFIX


def _session_options(threads: Optional[int]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return options


class OnnxEncoder:
    """One exported encoder: ``embed(**net_input)`` on preprocessed inputs (the hub's ``process_*``
    layout, torch tensors or numpy arrays), ``embed_items(items)`` on texts or file paths.

    ``checkpoint``: a checkpoint path (hashed) or an identity dict (``size`` and ``sha256``, e.g. an
    index's record) that the graph must come from; ``threads``: onnxruntime's intra-op threads
    (default: its own choice, one per core)."""

    def __init__(self, graph_path: str, checkpoint: Union[None, str, Dict] = None, threads: Optional[int] = None,
                 bpe_dir: Optional[str] = None):
        import onnxruntime as ort

        self.graph_path = os.path.abspath(os.path.expanduser(os.fspath(graph_path)))
        if not os.path.isfile(self.graph_path):
            raise FileNotFoundError(f"ONNX graph not found: {self.graph_path}")
        self.config_path = config_path_for(self.graph_path)
        if not os.path.isfile(self.config_path):
            raise FileNotFoundError(f"{self.graph_path} has no preprocessing config beside it ({self.config_path}); "
                                    "one-peace-export writes both")
        try:
            with open(self.config_path) as fh:
                self.config = json.load(fh)
        except ValueError as exc:
            raise ValueError(f"{self.config_path} is not valid JSON ({exc})") from None
        try:
            self.session = ort.InferenceSession(self.graph_path, _session_options(threads),
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for unreadable graphs
            raise ValueError(f"{self.graph_path} cannot be loaded by onnxruntime: "
                             f"{' '.join(str(exc).split())[:300]}") from None
        self._check_export()
        self.bpe_dir = bpe_dir
        self._tokenizer = None
        if checkpoint is not None:
            self.check_checkpoint(checkpoint)

    # ---- what the graph is -------------------------------------------------------------------
    @property
    def modality(self) -> str:
        return self.config["modality"]

    @property
    def embed_dim(self) -> int:
        return int(self.config["embed_dim"])

    @property
    def identity(self) -> Dict:
        return self.config["checkpoint"]

    def _check_export(self) -> None:
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get(META_PREFIX + "format") != FORMAT:
            raise ValueError(f"{self.graph_path} is not a one-peace-export graph (no {META_PREFIX}format={FORMAT} "
                             "in its metadata)")
        if self.config.get("format") != FORMAT or self.config.get("modality") not in EXPORTED_MODALITIES:
            raise ValueError(f"{self.config_path} is not a one-peace-export preprocessing config (format "
                             f"{self.config.get('format')!r}, modality {self.config.get('modality')!r})")
        graph_id = {"size": int(meta.get(META_PREFIX + "checkpoint_size", -1)),
                    "sha256": meta.get(META_PREFIX + "checkpoint_sha256")}
        if meta.get(META_PREFIX + "modality") != self.modality or any(
                graph_id[k] != self.identity.get(k) for k in graph_id):
            raise ValueError(f"{self.graph_path} and {self.config_path} come from different exports (graph: "
                             f"{meta.get(META_PREFIX + 'modality')} of sha256 {str(graph_id['sha256'])[:16]}; config: "
                             f"{self.modality} of sha256 {str(self.identity.get('sha256'))[:16]}); export again")

    def check_checkpoint(self, checkpoint: Union[str, Dict]) -> None:
        """:class:`OnnxCheckpointMismatch` unless ``checkpoint`` (path or identity) is the exported one."""
        given = checkpoint if isinstance(checkpoint, dict) else checkpoint_identity(checkpoint)
        given = {"path": given.get("path") or given.get("checkpoint"), "size": given.get("size"),
                 "sha256": given.get("sha256")}
        if int(given["size"]) != int(self.identity["size"]) or given["sha256"] != self.identity["sha256"]:
            raise OnnxCheckpointMismatch(
                f"ONNX graph {self.graph_path} was exported from checkpoint {describe_identity(self.identity)}, "
                f"not from {describe_identity(given)}: its vectors live in another space. Export this checkpoint "
                "(one-peace-export) or name the one the graph came from.")

    # ---- embedding ---------------------------------------------------------------------------
    def embed(self, **net_input) -> np.ndarray:
        """(B, D) float32 L2-normalised embeddings of preprocessed inputs (the hub's ``net_input`` keys)."""
        names = [i["name"] for i in self.config["inputs"]]
        missing = [n for n in names if net_input.get(n) is None]
        if missing:
            raise ValueError(f"{os.path.basename(self.graph_path)} needs {', '.join(missing)} (got "
                             f"{', '.join(sorted(net_input)) or 'nothing'})")
        arrays = {n: _as_numpy(net_input[n]) for n in names}
        check = getattr(self, f"_check_{self.modality}")
        check(arrays)
        if self.modality == "audio":
            return self._embed_audio(arrays)
        return self._run(arrays)

    def _run(self, arrays) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], arrays)[0].astype(np.float32, copy=False)

    def _check_text(self, arrays) -> None:
        tokens = arrays["src_tokens"] = _batched(arrays["src_tokens"], 2, "src_tokens")
        if tokens.dtype.kind not in "iu":
            raise TypeError(f"src_tokens must hold integer token ids, got {tokens.dtype}")
        tokens = arrays["src_tokens"] = tokens.astype(np.int64, copy=False)
        text = self.config["text"]
        if tokens.size and (tokens.min() < 0 or tokens.max() >= text["dictionary_size"]):
            raise ValueError(f"src_tokens holds ids outside the dictionary (0..{text['dictionary_size'] - 1}): min "
                             f"{tokens.min()}, max {tokens.max()}")
        if tokens.shape[1] > text["max_tokens"]:
            raise ValueError(f"src_tokens has {tokens.shape[1]} tokens; the model has {text['max_tokens']} positions")

    def _check_image(self, arrays) -> None:
        images = arrays["src_images"] = _batched(arrays["src_images"], 4, "src_images").astype(np.float32, copy=False)
        size = self.config["image"]["size"]
        if images.shape[1:] != (3, size, size):
            raise ValueError(f"src_images must be (B, 3, {size}, {size}) for {os.path.basename(self.graph_path)} "
                             f"(exported at {size} px), got {images.shape}")

    def _check_audio(self, arrays) -> None:
        audios = arrays["src_audios"] = _batched(arrays["src_audios"], 2, "src_audios").astype(np.float32, copy=False)
        masks = arrays["audio_padding_masks"] = _batched(arrays["audio_padding_masks"], 2,
                                                         "audio_padding_masks").astype(bool, copy=False)
        frames = conv_output_frames(audios.shape[1], self.config["audio"]["feature_encoder_spec"], name="src_audios")
        if masks.shape != (audios.shape[0], frames + 1):
            raise ValueError(f"audio_padding_masks has shape {masks.shape} but the waveforms give "
                             f"{(audios.shape[0], frames + 1)} (batch, frames + CLS)")
        if frames > self.config["audio"]["max_frames"]:
            raise ValueError(f"audio of {frames} frames exceeds the {self.config['audio']['max_frames']} supported "
                             "(shorten it: max_duration)")

    def _embed_audio(self, arrays) -> np.ndarray:
        audios, masks = arrays["src_audios"], arrays["audio_padding_masks"]
        if not masks[:, 1:].any():
            return self._run(arrays)
        spec = self.config["audio"]["feature_encoder_spec"]
        frames = (~masks[:, 1:]).sum(axis=1)
        out = np.empty((audios.shape[0], self.embed_dim), np.float32)
        for count in np.unique(frames):
            rows = np.flatnonzero(frames == count)
            samples = samples_for_frames(int(count), spec)
            out[rows] = self._run({"src_audios": np.ascontiguousarray(audios[rows, :samples]),
                                   "audio_padding_masks": np.ascontiguousarray(masks[rows, :count + 1])})
        return out

    # ---- raw items -> inputs (the hub's preprocessing, from the config alone) ---------------
    def process(self, items: Sequence) -> Dict[str, np.ndarray]:
        """Texts, or image / audio file paths -> the graph's inputs, as ``hub.process`` makes them."""
        from ..data_utils.processors import as_list, as_paths

        if self.modality == "text":
            return self._process_text(as_list(items, "texts"))
        if self.modality == "image":
            return self._process_image(items)
        return self._process_audio(as_paths(items, "audio_paths"))

    def embed_items(self, items: Sequence) -> np.ndarray:
        return self.embed(**self.process(items))

    def tokenizer(self):
        if self._tokenizer is None:
            from ..data_utils.bpe import TextTokenizer

            text = self.config["text"]
            self._tokenizer = TextTokenizer(self.bpe_dir or text["bpe_dir"], max_src_length=text["max_src_length"])
            dict_path = os.path.join(self._tokenizer.bpe_dir, "dict.txt")
            if sha256_of(dict_path) != text["dictionary_sha256"]:
                raise ValueError(f"{dict_path} is not the dictionary {os.path.basename(self.graph_path)} was exported "
                                 f"with (sha256 {text['dictionary_sha256'][:16]}): pass the BPE folder of the checkpoint")
        return self._tokenizer

    def _process_text(self, texts) -> Dict[str, np.ndarray]:
        from ..data_utils.collate import collate_tokens

        tokenizer, tokens = self.tokenizer(), []
        for i, text in enumerate(texts):
            try:
                tokens.append(tokenizer.encode_hub(text))
            except (TypeError, ValueError) as err:
                raise type(err)(f"texts[{i}]: {err}") from None
        return {"src_tokens": collate_tokens(tokens, pad_idx=self.config["text"]["pad_idx"]).numpy()}

    def _process_image(self, items) -> Dict[str, np.ndarray]:
        import torch

        from ..data_utils.image import image_to_tensor
        from ..data_utils.processors import load_images

        images = load_images(items, "image_paths", exif_transpose=True)
        size = self.config["image"]["size"]
        return {"src_images": torch.stack([image_to_tensor(img, size) for img in images]).numpy()}

    def _process_audio(self, paths) -> Dict[str, np.ndarray]:
        from ..data_utils.audio import audio_padding_mask, load_audio, prepare_waveform
        from ..data_utils.collate import collate_audios

        audio = self.config["audio"]
        waves, masks = [], []
        for path in paths:
            wav = prepare_waveform(load_audio(path, target_sr=audio["sample_rate"]),
                                   max_duration=audio["max_duration"], sample_rate=audio["sample_rate"])
            waves.append(wav)
            masks.append(audio_padding_mask(conv_output_frames(wav.numel(), audio["feature_encoder_spec"], name=path)))
        src_audios, padding_masks = collate_audios(waves, masks)
        return {"src_audios": src_audios.numpy(), "audio_padding_masks": padding_masks.numpy()}


def _as_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (bf16 has no numpy twin: through float32)
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _batched(array: np.ndarray, dims: int, name: str) -> np.ndarray:
    if array.ndim != dims or array.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch of {dims} dimensions, got shape {array.shape}")
    return np.ascontiguousarray(array)
