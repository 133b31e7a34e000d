"""``from_pretrained`` names and ``save_pretrained``: a ``.pt`` file, a model directory, or a Hub repo.

A name is, in order: an existing file (a ``.pt`` checkpoint); an existing directory (``config.json`` +
safetensors, ``models/model_dir.py``); ``org/name``, a Hugging Face Hub repo fetched by
``huggingface_hub.snapshot_download`` (only the files a model directory holds).  That function falls back
to the local cache when ``HF_HUB_OFFLINE=1`` or the Hub cannot be reached; a repo that is not cached then
gets one error naming it and saying how to fetch it.
"""
import os
import re
from typing import Optional

import torch
from omegaconf import OmegaConf

from ..models.build import CONFIGS, config_from_saved
from ..models.config import OnePeaceClassifyConfig, OnePeaceSegmentationConfig
from ..models.model_dir import CONFIG_FILE, FORMAT_VERSION, HUB_FILES, PREPROCESSOR_FILE, read_json, save_model_dir
from .loading import MODEL_TYPES, TASK_DEFAULTS

# Every model type a checkpoint may hold; the hub builds MODEL_TYPES, the others (fairseq_glue/
# registration_seg.py, registration_av.py) are converted with their full config but not built here.
MODEL_CONFIGS = {**CONFIGS, "one_peace_segmentation": OnePeaceSegmentationConfig,
                 "one_peace_classify_av": OnePeaceClassifyConfig}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and not name.endswith((".pt", ".safetensors")) and ".." not in name


def resolve_pretrained(name, revision: Optional[str] = None) -> str:
    """A local path for ``name``: itself if it exists (file or directory), else the Hub snapshot of the
    repo ``org/name``; a path that is neither is returned as given (the loader says it is missing)."""
    path = os.path.expanduser(os.fspath(name))
    if os.path.exists(path) or not looks_like_repo_id(str(name)):
        return path
    return hub_snapshot(str(name), revision)


def hub_snapshot(repo_id: str, revision: Optional[str] = None) -> str:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        # Online: resolves the revision and downloads what is missing; offline or unreachable: the cache.
        snapshot = snapshot_download(repo_id, revision=revision, allow_patterns=list(HUB_FILES))
    except LocalEntryNotFoundError as err:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise ValueError(
            f"{repo_id!r} is not a local file or directory, and the Hub repo {repo_id} is not in the Hugging Face "
            f"cache ({constants.HF_HUB_CACHE}) while {why}: run once online (from_pretrained({repo_id!r}) or "
            f"`hf download {repo_id}`), or copy the model directory here and load it by its path "
            f"({str(err).splitlines()[0]})") from None
    except RevisionNotFoundError:
        raise ValueError(f"the Hub repo {repo_id} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise ValueError(f"{repo_id!r} is not a local file or directory, nor a Hub repo this account can read "
                         "(private or gated repos need `hf auth login`)") from None
    if not os.path.isfile(os.path.join(snapshot, CONFIG_FILE)):
        raise ValueError(f"the Hub repo {repo_id} holds no {CONFIG_FILE}: not a ONE-PEACE model directory (convert "
                         "a .pt with one-peace-convert and upload the directory)")
    return snapshot


def model_type_of(state: dict, model_type: Optional[str]) -> str:
    """The model type to build: the argument, else a directory's config.json, else ``one_peace_retrieval``."""
    saved = state.get("model_type")
    chosen = model_type or saved or "one_peace_retrieval"
    if chosen not in MODEL_TYPES:
        where = f"{state['config_file']} says model_type {chosen!r}" if chosen == saved else f"model_type={chosen!r}"
        raise ValueError(f"{where}: from_pretrained builds {', '.join(MODEL_TYPES)}"
                         + (f"; a {chosen} model is built by the fairseq layer (fairseq_glue), not by the hub"
                            if chosen in MODEL_CONFIGS else ""))
    return chosen


def task_settings(saved_task: Optional[dict]) -> dict:
    """The saved task fields over the official defaults the hub reads."""
    settings = dict(TASK_DEFAULTS)
    settings.update({k: v for k, v in (saved_task or {}).items() if v is not None})
    return settings


def full_model_config(model_type: str, saved_model: Optional[dict], source: str) -> dict:
    """The model section with every field of the model type's config (saved values over the defaults)."""
    if model_type not in MODEL_CONFIGS:
        raise ValueError(f"unknown model type {model_type!r}; ONE-PEACE model types: {', '.join(MODEL_CONFIGS)}")
    merged = config_from_saved(MODEL_CONFIGS[model_type], saved_model, source=source)
    return dict(OmegaConf.to_container(OmegaConf.structured(merged)), _name=model_type)


def preprocessor_config(task: dict, model: dict) -> dict:
    """What the hub's preprocessing uses (``data_utils/processors.py``, ``models/video.py``)."""
    from ..data_utils.audio import SAMPLE_RATE
    from ..data_utils.image import CLIP_MEAN, CLIP_STD

    settings = task_settings(task)
    video = (model.get("encoder") or {}).get("video_adapter") or {}
    return {"image_size": settings["patch_image_size"], "image_resample": "bicubic",
            "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
            "audio_sample_rate": SAMPLE_RATE, "audio_max_duration": settings["max_duration"],
            "audio_normalize": "layer norm over the whole clip", "text_max_length": settings["max_src_length"],
            "video_num_frames": video.get("num_frames")}


# preprocessor_config.json key -> the task setting the hub reads
_PREPROCESSOR_TASK_KEYS = {"image_size": "patch_image_size", "audio_max_duration": "max_duration",
                           "text_max_length": "max_src_length"}


def check_preprocessor(directory: str, task_cfg) -> None:
    """A directory's preprocessor_config.json must agree with the task settings in its config.json."""
    from ..data_utils.audio import SAMPLE_RATE

    path = os.path.join(directory, PREPROCESSOR_FILE)
    if not os.path.isfile(path):
        return
    values = read_json(path)
    for key, setting in _PREPROCESSOR_TASK_KEYS.items():
        if key in values and values[key] != task_cfg[setting]:
            raise ValueError(f"{path}: {key} is {values[key]!r} but {os.path.join(directory, CONFIG_FILE)} sets "
                             f"task.{setting} {task_cfg[setting]!r}; make them agree")
    if "audio_sample_rate" in values and values["audio_sample_rate"] != SAMPLE_RATE:
        raise ValueError(f"{path}: audio_sample_rate {values['audio_sample_rate']!r}; ONE-PEACE embeds audio at "
                         f"{SAMPLE_RATE} Hz")


def directory_config(model_type: str, head_type: Optional[str], model: dict, task: dict) -> dict:
    task = dict(task, bpe_dir=None)  # the directory holds the tokenizer files (models/model_dir.py)
    return {"format_version": FORMAT_VERSION, "model_type": model_type, "head_type": head_type,
            "model": model, "task": task}


def save_pretrained(hub, directory: str, dtype: Optional[torch.dtype] = None, max_shard_size="5GB") -> dict:
    """Write ``hub``'s model as a model directory (``hub.save_pretrained``); ``dtype``: floating tensors
    cast to it (None: the hub's)."""
    cfg = OmegaConf.to_container(hub.cfg, resolve=True)
    model = full_model_config(hub.model_type, cfg.get("model"), source="the hub's config")
    task = dict(cfg.get("task") or {})
    config = directory_config(hub.model_type, task.get("head_type"), model, task)
    return save_model_dir(os.fspath(directory), hub.model.state_dict(), config, preprocessor_config(task, model),
                          tokenizer_dir=hub.task.cfg.bpe_dir, dtype=dtype,
                          max_shard_size=max_shard_size)
