"""Reading a checkpoint for inference with plain code: the saved config, the text files, the model.

What fairseq's ``load_model_ensemble_and_task`` did for the hub, without fairseq: the saved ``cfg``
(a plain dict in fairseq's format) gives the model config and the task settings the hub needs (text
length, image size, audio duration, head type, classes, label file); the dictionary and BPE come from
the BPE directory; the model is built without initialising what the checkpoint provides and filled
by the same key rules and upgrades as every other load (``models/checkpoint.py``).
"""
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import torch
from omegaconf import OmegaConf

from ..data_utils.bpe import TextTokenizer
from ..data_utils.bpe_files import resolve_bpe_dir, saved_bpe_dir_or_none
from ..data_utils.dictionary import Dictionary
from ..data_utils.labels import load_label_names
from ..models import checkpoint as ckpt
from ..models.build import CONFIGS, config_from_saved, configure_branches, configure_pretrain, pretrain_load_options
from ..models.deferred_init import build_for_loading, loading_context
from ..models.modalities import encoder_type_modalities, head_type_for, modalities_of, modality_names
from ..models.one_peace import OnePeaceClassifyModel, OnePeacePretrainModel, OnePeaceRetrievalModel

MODEL_TYPES = tuple(CONFIGS)  # what from_pretrained builds: retrieval, classify, pretrain
# The official task fields the hub reads, with the official defaults (tasks/base_task.py).
TASK_DEFAULTS = {"max_src_length": 70, "patch_image_size": 256, "max_duration": 15, "head_type": "vl",
                 "num_classes": None, "use_two_images": False, "label_file": None, "bpe_dir": None}


class _Settings(dict):
    """The saved task config with attribute access (``hub.task.cfg.patch_image_size``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class CheckpointTask:
    """What the hub needs of the task a checkpoint was trained on: its settings, text files, labels."""
    cfg: _Settings
    dictionary: Dictionary
    tokenizer: TextTokenizer
    label_names: Optional[Dict[int, str]] = field(default=None)


def modalities_in(state_dict) -> list:
    """The registered modalities a state dict has encoder weights for."""
    return [m for m in modality_names() if any(f"encoder_wrapper.{m}_adapter." in k for k in state_dict)]


def read_task(saved_task: Optional[dict], bpe_dir: Optional[str], head_type: Optional[str] = None) -> CheckpointTask:
    """The task settings of a saved config; ``bpe_dir`` (else the saved one if it exists, then
    ``$ONE_PEACE_BPE_DIR``, then the cache) holds the text files."""
    settings = _Settings(TASK_DEFAULTS)
    settings.update({k: v for k, v in (saved_task or {}).items() if v is not None or k not in TASK_DEFAULTS})
    settings["_name"] = (saved_task or {}).get("_name") or "base_task"
    if head_type is not None:
        settings["head_type"] = head_type
    if bpe_dir is None:
        bpe_dir = saved_bpe_dir_or_none(settings.get("bpe_dir"))
    directory = resolve_bpe_dir(bpe_dir)
    settings["bpe_dir"] = directory
    tokenizer = TextTokenizer(directory, max_src_length=settings.max_src_length)
    dictionary = Dictionary.load(os.path.join(directory, "dict.txt"))
    labels = load_label_names(settings.label_file) if settings.label_file else None
    return CheckpointTask(settings, dictionary, tokenizer, labels)


def _build(model_type: str, model_cfg, task: CheckpointTask):
    settings, vocab = task.cfg, len(task.dictionary)
    if model_type == "one_peace_retrieval":
        configure_branches(model_cfg, modalities_of(settings.head_type), settings.patch_image_size)
        return lambda: OnePeaceRetrievalModel(model_cfg, head_type=settings.head_type, vocab_size=vocab,
                                              copy_rel_pos_table=model_cfg.copy_rel_pos_table)
    if model_type == "one_peace_classify":
        if not settings.num_classes:
            raise ValueError(f"the checkpoint's task {settings._name!r} sets no num_classes for one_peace_classify")
        configure_branches(model_cfg, encoder_type_modalities(settings.head_type), settings.patch_image_size)
        return lambda: OnePeaceClassifyModel(model_cfg, head_type=settings.head_type, num_classes=settings.num_classes,
                                             vocab_size=vocab, use_two_images=bool(settings.use_two_images))
    configure_pretrain(model_cfg, settings.patch_image_size)
    return lambda: OnePeacePretrainModel(model_cfg, vocab_size=vocab)


def load_model(path: str, state: dict, model_type: str, dtype: torch.dtype, device: torch.device,
               bpe_dir: Optional[str] = None, modalities: Optional[Sequence[str]] = None):
    """(model, task, cfg) from a read checkpoint ``state`` (``models/checkpoint.py:load_checkpoint_file``)."""
    saved = state["cfg"]
    saved = OmegaConf.to_container(saved) if OmegaConf.is_config(saved) else saved
    head_type = None
    if model_type == "one_peace_retrieval":  # embed every modality the checkpoint has weights for
        head_type = head_type_for(modalities or modalities_in(state["model"]))
    task = read_task(saved.get("task"), bpe_dir, head_type)
    # A model directory's state names its config.json and weight files (models/model_dir.py).
    model_cfg = config_from_saved(CONFIGS[model_type], saved.get("model"), source=state.get("config_file", path))
    build = _build(model_type, model_cfg, task)
    options = {}
    if model_type == "one_peace_pretrain":
        options = pretrain_load_options(model_cfg.stage2_pretrain, model_cfg.reset_logit_scale, state["model"])
    # Built without initialising what the checkpoint provides; tensors land in dtype on device.
    with loading_context(dtype, device, files=state.get("weight_files", path)):
        model = build_for_loading(build)
        ckpt.load_into(model, state["model"], source=state.get("source", "checkpoint"), **options)
    cfg = OmegaConf.create({**saved, "model": {**(saved.get("model") or {}), "_name": model_type},
                            "task": dict(task.cfg)})
    return model, task, cfg
