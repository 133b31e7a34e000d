"""Hub interface with the official method names: load a checkpoint, embed, classify.

    from one_peace.models import from_pretrained
    hub = from_pretrained("one-peace.pt", device="cpu", dtype="float32")
    text = hub.extract_text_features(hub.process_text(["a dog", "an elephant"]))
    image = hub.extract_image_features(hub.process_image(["dog.jpg"]))
    similarity = image @ text.T
"""
import logging
import os
from typing import List, Optional, Sequence

import torch

from .checkpoint import load_checkpoint_file

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
MODEL_TYPES = ("one_peace_retrieval", "one_peace_classify", "one_peace_pretrain")


def _modalities_in(state_dict) -> List[str]:
    return [m for m in ("text", "image", "audio") if any(f"encoder_wrapper.{m}_adapter." in k for k in state_dict)]


def _head_type_for(modalities: Sequence[str]) -> str:
    table = {("text",): "text", ("image",): "image", ("audio",): "audio", ("text", "image"): "vl",
             ("text", "audio"): "al", ("text", "image", "audio"): "val"}
    return table.get(tuple(modalities), "val")


def from_pretrained(model_name_or_path: str, model_type: str = "one_peace_retrieval", device=None,
                    dtype: str = "float32", bpe_dir: Optional[str] = None, allow_pickle: bool = False):
    """Load a ONE-PEACE checkpoint (official or ours) for inference.

    ``bpe_dir`` overrides the checkpoint's BPE directory (else the saved one, then
    ``$ONE_PEACE_BPE_DIR``, then the cache filled by ``python -m one_peace.data_utils.bpe fetch``).
    """
    from fairseq import checkpoint_utils

    from .. import registry  # noqa: F401 - registers tasks/models

    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    path = os.path.expanduser(model_name_or_path)
    state = load_checkpoint_file(path, allow_pickle=allow_pickle)
    if state.get("cfg") is None:
        raise ValueError(f"{path} has no saved 'cfg'; it was not written by fairseq/ONE-PEACE")
    overrides = {"model": {"_name": model_type}}
    task_overrides = {}
    if model_type == "one_peace_retrieval":
        # Embed every modality the checkpoint has weights for.
        task_overrides["head_type"] = _head_type_for(_modalities_in(state["model"]))
    if bpe_dir is not None:
        task_overrides["bpe_dir"] = bpe_dir
    if task_overrides:
        overrides["task"] = task_overrides
    # What fairseq's load_checkpoint_to_cpu does, on the state we already loaded safely.
    from omegaconf import OmegaConf
    from fairseq.dataclass.utils import overwrite_args_by_name

    state["cfg"] = OmegaConf.create(state["cfg"], flags={"allow_objects": True})
    overwrite_args_by_name(state["cfg"], overrides)
    state = checkpoint_utils._upgrade_state_dict(state)
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], state=state)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return OnePeaceHubInterface(models[0], task, cfg, device=device, dtype=DTYPES[dtype])


class OnePeaceHubInterface:
    def __init__(self, model, task, cfg, device="cpu", dtype=torch.float32):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.task = task
        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_src_length = task.cfg.max_src_length
        self.patch_image_size = task.cfg.patch_image_size
        self.max_duration = task.cfg.max_duration

    # ---- preprocessing -------------------------------------------------------------------
    def process_text(self, texts: Sequence[str]) -> torch.LongTensor:
        from ..data_utils.collate import collate_tokens

        if isinstance(texts, str):
            texts = [texts]
        tokens = [self.task.tokenizer.encode_hub(text) for text in texts]
        # Token ids stay integers whatever the model dtype (the official hub cast them).
        return collate_tokens(tokens, pad_idx=self.task.dictionary.pad()).to(self.device)

    def process_image(self, image_paths: Sequence[str], return_image_sizes: bool = False):
        from ..data_utils.image import image_to_tensor, load_image

        if isinstance(image_paths, str):
            image_paths = [image_paths]
        images = [load_image(p) for p in image_paths]
        tensor = torch.stack([image_to_tensor(img, self.patch_image_size) for img in images])
        tensor = tensor.to(self.device, self.dtype)
        if return_image_sizes:
            widths = torch.tensor([img.width for img in images], device=self.device)
            heights = torch.tensor([img.height for img in images], device=self.device)
            return tensor, widths, heights
        return tensor

    def process_audio(self, audio_paths: Sequence[str]):
        from ..data_utils.audio import audio_padding_mask, load_audio, prepare_waveform
        from ..data_utils.collate import collate_audios

        if isinstance(audio_paths, str):
            audio_paths = [audio_paths]
        adapter = self.model.encoder_wrapper.audio_adapter
        if adapter is None:
            raise ValueError("this model has no audio branch")
        waves, masks = [], []
        for path in audio_paths:
            wav = prepare_waveform(load_audio(path), max_duration=self.max_duration)
            frames = adapter.num_frames(wav.numel())
            if frames <= 0:
                raise ValueError(f"{path}: clip too short for the audio feature extractor")
            waves.append(wav)
            masks.append(audio_padding_mask(frames))
        src_audios, padding_masks = collate_audios(waves, masks)
        return src_audios.to(self.device, self.dtype), padding_masks.to(self.device)

    def process_image_text_pairs(self, pairs, return_image_sizes=False):
        image_paths, texts = zip(*pairs)
        return self.process_image(list(image_paths), return_image_sizes), self.process_text(list(texts))

    # ---- features ------------------------------------------------------------------------
    def _retrieval_or_classify(self, **inputs):
        with torch.no_grad():
            return self.model(**inputs)

    def extract_text_features(self, src_tokens):
        if self.model.__class__.__name__.endswith("Classify"):
            return self._retrieval_or_classify(src_tokens=src_tokens)
        return self._retrieval_or_classify(src_tokens=src_tokens, encoder_type="text")

    def extract_image_features(self, src_images):
        if self.model.__class__.__name__.endswith("Classify"):
            return self._retrieval_or_classify(src_images=src_images)
        return self._retrieval_or_classify(src_images=src_images, encoder_type="image")

    def extract_audio_features(self, src_audios, audio_padding_masks):
        if self.model.__class__.__name__.endswith("Classify"):
            return self._retrieval_or_classify(src_audios=src_audios, audio_padding_masks=audio_padding_masks)
        return self._retrieval_or_classify(src_audios=src_audios, audio_padding_masks=audio_padding_masks,
                                           encoder_type="audio")

    def extract_vl_features(self, src_images, src_tokens):
        """Joint vision-language pass of a classification model (e.g. grounding logits)."""
        if not self.model.__class__.__name__.endswith("Classify"):
            raise ValueError("extract_vl_features needs a one_peace_classify model (e.g. a grounding checkpoint)")
        return self._retrieval_or_classify(src_images=src_images, src_tokens=src_tokens)
