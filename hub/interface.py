"""Hub interface with the official method names: load a checkpoint, embed, classify.

    from one_peace import from_pretrained
    hub = from_pretrained("one-peace.pt", device="cpu", dtype="float32")
    text = hub.extract_text_features(hub.process_text(["a dog", "an elephant"]))
    image = hub.extract_image_features(hub.process_image(["dog.jpg"]))
    similarity = image @ text.T
"""
import logging
import os
from typing import Dict, Optional, Sequence

import torch

from ..data_utils.processors import load_images
from ..models.checkpoint import load_checkpoint_file
from ..models.modalities import get_modality, modalities_of, modality_names
from ..models.precision import warn_if_bf16_is_slow_here
from .loading import MODEL_TYPES, load_model
from .pretrained_dir import check_preprocessor, model_type_of, resolve_pretrained, save_pretrained, task_settings
from .task_methods import TaskMethods

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def from_pretrained(model_name_or_path: str, model_type: Optional[str] = None, device=None,
                    dtype: str = "float32", bpe_dir: Optional[str] = None, allow_pickle: bool = False,
                    modalities: Optional[Sequence[str]] = None, exif_transpose: bool = True,
                    official_padding: bool = False, revision: Optional[str] = None):
    """Load a ONE-PEACE checkpoint (official or ours) for inference.

    ``model_name_or_path``: a ``.pt`` checkpoint; a model directory (``save_pretrained`` or
    ``one-peace-convert``: config.json + safetensors, read without pickle, its own tokenizer files); or a
    Hub repo ``org/name`` holding one (``revision``: branch, tag or commit; the local Hugging Face cache
    when offline).  ``model_type``: default the directory's config.json, else ``one_peace_retrieval``.

    ``bpe_dir`` overrides the checkpoint's BPE directory (else the saved one, then
    ``$ONE_PEACE_BPE_DIR``, then the cache filled by ``python -m one_peace.data_utils.bpe fetch``).
    ``modalities`` (retrieval): the branches to build, default those the checkpoint has weights for;
    a modality it lacks starts as its registry hook says (``video`` from the image branch).
    ``exif_transpose``: image files are turned upright as their EXIF/XMP orientation says (boxes from
    ``ground`` and ``return_image_sizes`` are then in that upright frame); ``False`` reads the stored
    pixels as the official hub does.  PIL images you pass are used as given.
    ``official_padding``: clips of unequal length share one padded forward, as in the official hub; a
    clip's embedding then depends on the longest clip in its batch (the conv positional embedding sees
    the padding).  By default each clip's embedding is the one it gets alone (rows of equal length run
    together, trimmed to their length).
    """
    if model_type is not None and model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    device = _checked_device(device)
    if device.type == "cpu" and DTYPES[dtype] is torch.bfloat16:
        warn_if_bf16_is_slow_here(f"from_pretrained(dtype={dtype!r}, device='cpu')")
    if modalities is not None and model_type is not None:
        modalities = _checked_modalities(modalities, model_type)
    path = resolve_pretrained(model_name_or_path, revision)  # a file, a directory, or a Hub snapshot
    # Memory-mapped: tensors stay on disk until used; a bf16 load keeps them mapped (no copy).
    state = load_checkpoint_file(path, allow_pickle=allow_pickle, mmap=True)
    if state.get("cfg") is None:
        raise ValueError(f"{path} has no saved 'cfg'; it was not written by fairseq/ONE-PEACE")
    if not state.get("model"):
        raise ValueError(f"{path} holds no model weights (its 'model' entry is "
                         f"{'empty' if 'model' in state else 'missing'}); was it saved with the weights stripped?")
    model_type = model_type_of(state, model_type)
    if modalities is not None:
        modalities = _checked_modalities(modalities, model_type)
    elif model_type == "one_peace_retrieval" and state.get("head_type"):  # a directory's config.json
        modalities = modalities_of(state["head_type"])
    if state.get("config_file"):
        check_preprocessor(os.path.dirname(state["config_file"]), task_settings(state["cfg"].get("task")))
    model, task, cfg = load_model(path, state, model_type, DTYPES[dtype], device, bpe_dir=bpe_dir,
                                  modalities=modalities)
    return OnePeaceHubInterface(model, task, cfg, device=device, dtype=DTYPES[dtype], exif_transpose=exif_transpose,
                                official_padding=official_padding)


def _checked_device(device) -> torch.device:
    """The device to load on (default: CUDA if present), refused before any file is read if absent."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a torch device ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but this torch sees no CUDA GPU (torch.cuda.is_available() is "
                         "False); use device='cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device={str(device)!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def _checked_modalities(modalities, model_type: str) -> tuple:
    names = (modalities,) if isinstance(modalities, str) else tuple(modalities)
    unknown = [m for m in names if m not in modality_names()]
    if unknown or not names:
        raise ValueError(f"modalities={names!r}: unknown modality {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"registered: {', '.join(modality_names())}")
    if model_type != "one_peace_retrieval":
        raise ValueError(f"modalities= chooses the branches of a one_peace_retrieval model; a {model_type} "
                         "checkpoint's inputs are fixed by its head_type (load it without modalities=)")
    return names


class OnePeaceHubInterface(TaskMethods):
    def __init__(self, model, task, cfg, device="cpu", dtype=torch.float32, exif_transpose: bool = True,
                 official_padding: bool = False):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.official_padding = bool(official_padding)  # one padded forward per batch (batch-dependent audio)
        self.exif_transpose = bool(exif_transpose)  # image files turned upright (EXIF/XMP orientation)
        self.task = task
        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_src_length = task.cfg.max_src_length
        self.patch_image_size = task.cfg.patch_image_size
        self.max_duration = task.cfg.max_duration
        self.model_type = cfg.model._name if cfg is not None and cfg.get("model") else type(model).__name__
        self.task_name = task.cfg._name

    @property
    def is_classifier(self) -> bool:
        return hasattr(self.model, "classify_head")

    def __dir__(self):
        # the generated process_<m> / extract_<m>_features of every registered modality (video, ...)
        generated = [f"{prefix}{m}{suffix}" for m in modality_names()
                     for prefix, suffix in (("process_", ""), ("extract_", "_features"))]
        return sorted(set(super().__dir__()) | set(generated))

    # ---- any registered modality ----------------------------------------------------------
    def process(self, modality: str, items) -> Dict[str, torch.Tensor]:
        """Raw items (texts, paths, ...) -> the modality's ``net_input`` tensors on the hub's device."""
        spec = get_modality(modality)
        if spec.processor is None:
            raise ValueError(f"modality {modality!r} registers no hub processor")
        if modality not in self.model.modalities:
            raise ValueError(f"this checkpoint has no {modality} branch (it has {', '.join(self.model.modalities)})")
        return spec.processor(self, items)

    def extract_features(self, modality: str, **net_input) -> torch.Tensor:
        """Embeddings (retrieval/pretraining checkpoints) or logits (a classification checkpoint of that
        modality) of one modality; float inputs are cast to the hub's dtype and device."""
        get_modality(modality)
        if self.is_classifier and self.model.head_type != modality:
            use = "extract_vl_features / ground / answer / verify" if self.model.head_type == "vl" else \
                f"extract_{self.model.head_type}_features"
            raise ValueError(f"extract_{modality}_features needs an embedding checkpoint (model_type="
                             f"'one_peace_retrieval') or a classification checkpoint of {modality} inputs; this one "
                             f"is {self._describe()}: use {use}")
        if not self.is_classifier and modality not in self.model.modalities:
            raise ValueError(f"this checkpoint has no {modality} branch (it has {', '.join(self.model.modalities)})")
        net_input = self._checked_input(modality, net_input)
        run = self.model if self.is_classifier else lambda **inputs: self.model.encode(modality, **inputs)
        groups = [(None, net_input)]
        if not self.official_padding:
            groups = self.model.encoder_wrapper.adapter(modality).length_groups(net_input)
        with torch.no_grad():
            if len(groups) == 1 and groups[0][0] is None:
                return run(**net_input)
            out = None
            for rows, inputs in groups:
                part = run(**inputs)
                if out is None:
                    batch = net_input[get_modality(modality).input_keys[0]].size(0)
                    out = part.new_empty((batch,) + tuple(part.shape[1:]))
                out[rows] = part
            return out

    def _checked_input(self, what: str, net_input: Dict) -> Dict:
        """Tensors on the hub's device; float inputs in its dtype; token ids, masks and batch sizes checked
        (a clear error instead of an IndexError or a shape error deep in the model)."""
        out, batch = {}, {}
        for key, value in net_input.items():
            if not torch.is_tensor(value):
                out[key] = value
                continue
            if key == "src_tokens":
                if value.is_floating_point() or value.dtype == torch.bool:
                    raise TypeError(f"src_tokens must hold integer token ids (process_text), got {value.dtype}")
                size = len(self.task.dictionary)
                if value.numel() and (int(value.min()) < 0 or int(value.max()) >= size):
                    raise ValueError(f"src_tokens holds ids outside the dictionary (0..{size - 1}): min "
                                     f"{int(value.min())}, max {int(value.max())}")
                value = value.to(self.device)
            elif key.endswith("padding_masks"):
                value = value.to(self.device, torch.bool)
            elif value.is_floating_point():
                value = value.to(self.device, self.dtype)
            else:
                raise TypeError(f"{key} must be a float tensor (as process_* returns it), got {value.dtype}")
            if value.dim():
                batch[key] = value.size(0)
            out[key] = value
        if len(set(batch.values())) > 1:
            raise ValueError(f"{what} inputs disagree on the batch size: "
                             + ", ".join(f"{k} {v}" for k, v in batch.items()))
        return out

    def __getattr__(self, name: str):
        # process_<m> / extract_<m>_features for modalities registered beyond the official three.
        for prefix, suffix, method in (("process_", "", self.process), ("extract_", "_features", None)):
            if name.startswith(prefix) and name.endswith(suffix):
                modality = name[len(prefix):len(name) - len(suffix)] if suffix else name[len(prefix):]
                if modality in modality_names():
                    if method is not None:
                        return lambda items: method(modality, items)
                    return lambda **net_input: self.extract_features(modality, **net_input)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def save_pretrained(self, save_directory, dtype: Optional[str] = None, max_shard_size="5GB") -> dict:
        """Write the model as a directory ``from_pretrained`` reads without pickle: config.json,
        model.safetensors (Hub-style shards past ``max_shard_size``), the tokenizer files and
        preprocessor_config.json (``hub/pretrained_dir.py``); ``dtype``: cast floating weights (None: as loaded)."""
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)} or None, got {dtype!r}")
        return save_pretrained(self, save_directory, DTYPES[dtype] if dtype else None, max_shard_size)

    # ---- preprocessing (official names) ------------------------------------------------------
    def process_text(self, texts: Sequence[str]) -> torch.LongTensor:
        return self.process("text", texts)["src_tokens"]

    def process_image(self, image_paths, return_image_sizes: bool = False):
        """Images (file paths or PIL images, mixed as you like) -> ``src_images``; with
        ``return_image_sizes`` also the widths and heights of the images as loaded."""
        images = load_images(image_paths, "image_paths", exif_transpose=self.exif_transpose)
        tensor = self.process("image", images)["src_images"]
        if return_image_sizes:
            widths = torch.tensor([img.width for img in images], device=self.device)
            heights = torch.tensor([img.height for img in images], device=self.device)
            return tensor, widths, heights
        return tensor

    def process_audio(self, audio_paths: Sequence[str]):
        net_input = self.process("audio", audio_paths)
        return net_input["src_audios"], net_input["audio_padding_masks"]

    def process_image_text_pairs(self, pairs, return_image_sizes=False):
        image_paths, texts = zip(*pairs)
        return self.process_image(list(image_paths), return_image_sizes), self.process_text(list(texts))

    # ---- features (official names) -----------------------------------------------------------
    def extract_text_features(self, src_tokens):
        return self.extract_features("text", src_tokens=src_tokens)

    def extract_image_features(self, src_images):
        return self.extract_features("image", src_images=src_images)

    def extract_audio_features(self, src_audios, audio_padding_masks):
        return self.extract_features("audio", src_audios=src_audios, audio_padding_masks=audio_padding_masks)
