"""Hub preprocessing of the built-in modalities: raw items -> ``net_input`` tensors.

Each function is a modality's ``processor`` (see ``one_peace.models.modalities``):
``processor(hub, items) -> {net_input key: tensor}``.  ``hub`` supplies the tokenizer,
geometry and device (``hub.task``, ``hub.patch_image_size``, ``hub.max_duration``,
``hub.device``, ``hub.dtype``, ``hub.model``).  The data layer is imported lazily.
"""
import os
from typing import Dict, Sequence

import torch


def as_list(items, argument: str) -> list:
    """A non-empty list from a single item or a sequence (ValueError naming the argument)."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        items = [items]
    items = list(items)
    if not items:
        raise ValueError(f"{argument} is empty: give at least one item")
    return items


def as_paths(items, argument: str) -> list:
    """:func:`as_list` of file paths (TypeError naming the argument for anything else)."""
    paths = as_list(items, argument)
    for path in paths:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"{argument} must hold file paths, got {type(path).__name__}")
    return [os.fspath(p) for p in paths]


def process_text(hub, texts, allow_empty: bool = False) -> Dict[str, torch.Tensor]:
    """``src_tokens`` of ``texts``; an empty or whitespace-only text is an error naming it, unless
    ``allow_empty`` (then encoded as the official ``process_text`` does: ``TextTokenizer.encode_hub``)."""
    from .collate import collate_tokens

    tokens = []
    for i, text in enumerate(as_list(texts, "texts")):
        try:
            tokens.append(hub.task.tokenizer.encode_hub(text, allow_empty))
        except (TypeError, ValueError) as err:
            raise type(err)(f"texts[{i}]: {err}") from None
    # Token ids stay integers whatever the model dtype (the official hub cast them).
    return {"src_tokens": collate_tokens(tokens, pad_idx=hub.task.dictionary.pad()).to(hub.device)}


def load_images(images, argument: str = "images", exif_transpose: bool = True) -> list:
    """RGB PIL images from file paths or PIL images (one rule for every hub method that takes images):
    paths are read by :func:`~one_peace.data_utils.image.load_image` (turned upright by their EXIF
    orientation unless ``exif_transpose`` is off), PIL images converted alike (used in their own frame)."""
    from PIL import Image

    from .image import load_image, to_rgb

    items = [images] if isinstance(images, Image.Image) else as_list(images, argument)
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Image.Image):
            out.append(to_rgb(item, f"{argument}[{i}]"))
        elif isinstance(item, (str, os.PathLike)):
            out.append(load_image(os.fspath(item), exif_transpose=exif_transpose))
        else:
            raise TypeError(f"{argument}[{i}] must be a file path or a PIL image, got {type(item).__name__}")
    return out


def process_image(hub, images) -> Dict[str, torch.Tensor]:
    from .image import image_to_tensor

    images = load_images(images, exif_transpose=getattr(hub, "exif_transpose", True))
    tensor = torch.stack([image_to_tensor(img, hub.patch_image_size) for img in images])
    return {"src_images": tensor.to(hub.device, hub.dtype)}


def process_audio(hub, audio_paths) -> Dict[str, torch.Tensor]:
    from .audio import audio_padding_mask, load_audio, prepare_waveform
    from .collate import collate_audios

    adapter = hub.model.encoder_wrapper.adapter("audio")
    waves, masks = [], []
    for path in as_paths(audio_paths, "audio_paths"):
        wav = prepare_waveform(load_audio(path), max_duration=hub.max_duration)
        frames = adapter.num_frames(wav.numel(), name=path)
        waves.append(wav)
        masks.append(audio_padding_mask(frames))
    src_audios, padding_masks = collate_audios(waves, masks)
    return {"src_audios": src_audios.to(hub.device, hub.dtype), "audio_padding_masks": padding_masks.to(hub.device)}
