"""MTEB's batch columns -> the hub's ``net_input`` of the registered modality of the same name.

MTEB names a batch's input columns after modalities (``text``, ``image``, ``audio``, ``video``:
``mteb.types._encoder_io``); they are this project's registry names, so a column is embedded by the
modality it names.  Text and images go to the modality's hub processor as they are (strings; PIL
images or paths), as does any other registered modality.  Empty or whitespace-only texts, which the hub refuses
and some MTEB datasets hold, are embedded as the official ``process_text`` embeds them (the BPE of the spaces,
then EOS); the wrapper counts and logs them per task.  Audio and video reach a wrapper decoded,
which the hub processors (file paths) do not take, so they are converted here to what the processors
would have produced from the file:

* audio: MTEB's ``AudioInputItem`` (``{"array", "sampling_rate"}``; the Audio decoders of ``datasets``
  answer the same keys) or a file path.  Channels (axis 0, as MTEB's ``AudioCollator`` reads them) are
  averaged and other rates resampled to 16 kHz by the polyphase resampler ``load_audio`` uses, then the
  hub's normalisation, crop and frame count: an array gives the embedding of the file it came from.
  MTEB's ``AudioCollator`` is not used: it imports torchaudio, which does not load beside this torch.
* video: a file path or frame folder, a decoder with ``metadata.num_frames`` and ``get_frames_at``
  (torchcodec's ``VideoDecoder``, what the Video feature of ``datasets`` gives), a uint8 frame array
  ``(T, C, H, W)`` or ``(T, H, W, C)`` (MTEB's ``FramesCollator`` output) or a list of PIL frames.  The
  branch's ``num_frames`` frames are taken at the hub's positions (``data_utils/video.py:sample_indices``).
"""
import os
from typing import Dict, List

import numpy as np
import torch

from ..data_utils.audio import SAMPLE_RATE, audio_padding_mask, load_audio, prepare_waveform, resample
from ..data_utils.collate import collate_audios
from ..data_utils.processors import process_text
from ..data_utils.video import sample_indices, video_to_tensor


def net_input(hub, modality: str, items: list, column: str) -> Dict[str, torch.Tensor]:
    """The ``net_input`` of ``items`` (one batch column named ``column``) for ``hub.extract_features``."""
    if modality == "audio":
        return audio_net_input(hub, [audio_waveform(item, f"{column}[{i}]") for i, item in enumerate(items)])
    if modality == "video":
        return {"src_videos": torch.stack([_video_tensor(hub, item, f"{column}[{i}]")
                                           for i, item in enumerate(items)]).to(hub.device, hub.dtype)}
    if modality == "text":  # MTEB's datasets hold empty strings: embedded as the official code embeds them
        return process_text(hub, items, allow_empty=True)
    return hub.process(modality, items)


def empty_texts(items: list) -> int:
    """How many of a text column's items are empty or whitespace-only strings."""
    return sum(isinstance(t, str) and not t.strip() for t in items)


def audio_waveform(item, where: str) -> np.ndarray:
    """16 kHz mono float32 samples of one audio item (see the module docstring for the forms)."""
    if isinstance(item, (str, os.PathLike)):
        return load_audio(os.fspath(item))
    try:
        array, rate = item["array"], item["sampling_rate"]
    except (KeyError, TypeError, IndexError):
        raise TypeError(f"{where} must be a file path or a mapping with 'array' and 'sampling_rate' (MTEB's "
                        f"AudioInputItem), got {type(item).__name__}") from None
    wav = np.asarray(array.numpy() if torch.is_tensor(array) else array, dtype=np.float32)
    if wav.ndim == 2:
        if wav.shape[0] > wav.shape[1]:
            raise ValueError(f"{where}: a 2-D audio array is (channels, samples), as MTEB's AudioCollator reads "
                             f"it; got shape {wav.shape} (transpose it)")
        wav = wav.mean(axis=0, dtype=np.float32)
    if wav.ndim != 1 or wav.size == 0:
        raise ValueError(f"{where}: expected a non-empty 1-D or (channels, samples) array, got shape {wav.shape}")
    if not np.isfinite(wav).all():
        raise ValueError(f"{where}: the audio holds NaN or infinite samples")
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise ValueError(f"{where}: sampling_rate must be a positive integer, got {rate!r}")
    if int(rate) != SAMPLE_RATE:
        wav = resample(wav, int(rate), SAMPLE_RATE)
    return np.ascontiguousarray(wav, dtype=np.float32)


def audio_net_input(hub, waveforms: List[np.ndarray]) -> Dict[str, torch.Tensor]:
    """What the hub's audio processor (``data_utils/processors.py:process_audio``) builds from the decoded
    files: normalised, cropped to ``hub.max_duration``, frame masks from the branch's conv stack."""
    adapter = hub.model.encoder_wrapper.adapter("audio")
    waves, masks = [], []
    for i, wav in enumerate(waveforms):
        wav = prepare_waveform(wav, max_duration=hub.max_duration)
        waves.append(wav)
        masks.append(audio_padding_mask(adapter.num_frames(wav.numel(), name=f"audio[{i}]")))
    src_audios, padding_masks = collate_audios(waves, masks)
    return {"src_audios": src_audios.to(hub.device, hub.dtype), "audio_padding_masks": padding_masks.to(hub.device)}


def _video_tensor(hub, item, where: str) -> torch.Tensor:
    """(T, 3, P, P) of one video item, as ``hub.process("video", [path])`` makes it from a file."""
    if isinstance(item, (str, os.PathLike)):
        return hub.process("video", [os.fspath(item)])["src_videos"][0].cpu()
    num_frames = hub.model.encoder_wrapper.adapter("video").num_frames
    if hasattr(item, "get_frames_at"):  # torchcodec's VideoDecoder, as MTEB's FramesCollator reads it
        frames = _decoded_frames(item, num_frames, where)
        return video_to_tensor([_frame_image(frame) for frame in _channels_last(frames, where)],
                               hub.patch_image_size)
    if isinstance(item, (list, tuple)) and item and all(hasattr(f, "convert") for f in item):  # PIL frames
        frames = [item[i].convert("RGB") for i in sample_indices(len(item), num_frames)]
        return video_to_tensor(frames, hub.patch_image_size)
    if torch.is_tensor(item) or isinstance(item, np.ndarray):
        frames = _channels_last(item, where)
        if len(frames) == 0:
            raise ValueError(f"{where}: the video has no frames")
        picked = [_frame_image(frames[i]) for i in sample_indices(len(frames), num_frames)]
        return video_to_tensor(picked, hub.patch_image_size)
    raise TypeError(f"{where} must be a video file path, a video decoder, a uint8 frame array or a list of PIL "
                    f"frames, got {type(item).__name__}")


def _decoded_frames(decoder, num_frames: int, where: str):
    """The sampled frames of a decoder; as MTEB's FramesCollator, trailing frames the container counts but
    cannot decode ("no more frames") are dropped from the count."""
    total = decoder.metadata.num_frames
    if not total:
        raise ValueError(f"{where}: the video decoder reports no frames")
    for count in range(total, 0, -1):
        try:
            return decoder.get_frames_at(sample_indices(count, num_frames)).data
        except RuntimeError as exc:
            if "no more frames" not in str(exc):
                raise
    raise ValueError(f"{where}: the video has no decodable frames")


def _channels_last(frames, where: str) -> np.ndarray:
    """uint8 (T, H, W, C) from (T, C, H, W) or (T, H, W, C) with 1 or 3 channels."""
    array = frames.cpu().numpy() if torch.is_tensor(frames) else np.asarray(frames)
    if array.dtype != np.uint8 or array.ndim != 4:
        raise ValueError(f"{where}: video frames must be a uint8 array of 4 dimensions, (T, C, H, W) or (T, H, W, C); "
                         f"got {array.dtype} of shape {array.shape}")
    if array.shape[1] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(0, 2, 3, 1)
    if array.shape[-1] not in (1, 3):
        raise ValueError(f"{where}: video frames have no channel axis of 1 or 3: shape {array.shape}")
    return array


def _frame_image(frame: np.ndarray):
    from PIL import Image

    frame = np.ascontiguousarray(frame)
    return Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame).convert("RGB")
