"""A pickle-free model directory: ``config.json``, ``model.safetensors`` (or Hub-style shards), the tokenizer
files and ``preprocessor_config.json``.

    config.json                      format_version, model_type, head_type, torch_dtype, and the model and
                                     task sections of the saved fairseq cfg (every field)
    model.safetensors                the state dict; past max_shard_size (default 5GB, as the Hub):
    model-00001-of-0000N.safetensors   shards named as the Hub names them, plus
    model.safetensors.index.json       {"metadata": {"total_size": bytes}, "weight_map": {key: shard}}
    encoder.json, vocab.bpe, dict.txt  the GPT-2 BPE and the fairseq dictionary
    preprocessor_config.json         image size, mean and std, audio sample rate, max duration, video frames

:func:`load_model_dir` returns what ``checkpoint_io.load_checkpoint_file`` returns for a ``.pt``
(``{"cfg": ..., "model": state_dict}``), so every loader accepts a directory.  Tensors come memory-mapped
through ``safetensors`` (no pickle, no code run).  Bad input gets one error naming the file and the key.

Shared memory: safetensors stores no aliases, so a tensor whose memory overlaps an earlier key's is
written as its own copy.  ONE-PEACE ties no weights (a shared rel-pos table is copied per layer when
loaded), so a reload gives equal tensors and nothing is lost.
"""
import json
import logging
import os
import shutil
from typing import Dict, List, Optional, Tuple

import torch

from ..data_utils.bpe_files import BPE_FILES, missing_bpe_files
from .deferred_init import MappedPages
from .modalities import modalities_of

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
LABEL_FILE = "label_map.json"  # a classifier's {class id: name} (the task's label_file), copied in
SHARD_PATTERN = "model{suffix}.safetensors"  # huggingface_hub's: model-00001-of-00003.safetensors
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model_type", "model", "task")
# Parts config.json's model_type needs in the weights; the head_type check applies to these three types (the
# segmentation and audio-visual models are checked by fairseq when built).
NEEDED_PARTS = {"one_peace_retrieval": None, "one_peace_classify": "classify_head.",
                "one_peace_pretrain": "decoder_wrapper."}
HUB_FILES = (CONFIG_FILE, PREPROCESSOR_FILE, WEIGHTS_FILE, "model-*-of-*.safetensors", INDEX_FILE,
             LABEL_FILE) + BPE_FILES


def is_model_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_FILE))


# ---- reading --------------------------------------------------------------------------------------
def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def read_config(directory: str) -> dict:
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory} is a directory without {CONFIG_FILE}: not a model directory "
                                "(save_pretrained and one-peace-convert write one)")
    config = read_json(path)
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise ValueError(f"{path} lacks the key(s) {', '.join(map(repr, missing))}: not a ONE-PEACE model "
                         "directory config (save_pretrained and one-peace-convert write them)")
    if not isinstance(config["format_version"], int) or config["format_version"] > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {config['format_version']!r} is newer than this code reads "
                         f"({FORMAT_VERSION}); update one_peace")
    for key in ("model", "task"):
        if not isinstance(config[key], dict):
            raise ValueError(f"{path}: key {key!r} must be an object (the saved {key} config), "
                             f"got {type(config[key]).__name__}")
    if not isinstance(config["model_type"], str) or not config["model_type"]:
        raise ValueError(f"{path}: key 'model_type' must name the model type, got {config['model_type']!r}")
    return config


def weight_files(directory: str) -> Tuple[List[str], Optional[dict]]:
    """The safetensors files of a directory (shards in index order) and the index, if sharded."""
    index_path = os.path.join(directory, INDEX_FILE)
    if not os.path.isfile(index_path):
        single = os.path.join(directory, WEIGHTS_FILE)
        if not os.path.isfile(single):
            raise FileNotFoundError(f"{directory} holds neither {WEIGHTS_FILE} nor {INDEX_FILE}: no weights")
        return [single], None
    index = read_json(index_path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_path}: key 'weight_map' must map tensor names to shard files, got {weight_map!r}")
    files = []
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise ValueError(f"{index_path}: weight_map[{key!r}] = {shard!r} is not a file name in the directory")
        path = os.path.join(directory, shard)
        if path not in files:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{index_path} names shard {shard} (it holds {key} ...), but {path} "
                                        "does not exist: copy or download every shard the index names")
            files.append(path)
    return files, weight_map


def read_weights(files: List[str], weight_map: Optional[dict], index_path: str) -> Dict[str, torch.Tensor]:
    """Every tensor, memory-mapped; the index and the shards must agree key by key."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state = {}
    for path in files:
        try:
            part = load_file(path)
        except (SafetensorError, OSError) as err:
            raise ValueError(f"cannot read {path}: {err} (the file is truncated or corrupt: write or "
                             "download it again)") from None
        for key in part:
            if key in state:
                raise ValueError(f"tensor {key} is in two files ({path} and an earlier shard)")
            if weight_map is not None and weight_map.get(key) != os.path.basename(path):
                raise ValueError(f"{path} holds tensor {key}, which {index_path} maps to "
                                 f"{weight_map.get(key) or 'no shard'}")
        state.update(part)
    if weight_map is not None:
        absent = [k for k in weight_map if k not in state]
        if absent:
            raise ValueError(f"{index_path} maps tensor {absent[0]} to {weight_map[absent[0]]}, which does not hold "
                             f"it ({len(absent)} such tensor(s)): the shard is not the one the index was written with")
    return state


def check_config_fits_weights(config: dict, weights, config_path: str) -> None:
    """What config.json says the model is must be in the weights (head, branches); shapes are checked when
    the model is built (the error then names this directory's files)."""
    model_type, head_type = config["model_type"], config.get("head_type")
    if model_type not in NEEDED_PARTS:
        return
    part = NEEDED_PARTS[model_type]
    if part is not None and not any(k.startswith(part) for k in weights):
        raise ValueError(f"{config_path}: model_type {model_type!r} but the weights hold no {part}* tensors (an "
                         "embedding checkpoint is model_type 'one_peace_retrieval')")
    if head_type is None:
        return
    try:
        needed = modalities_of(head_type)
    except ValueError as err:
        raise ValueError(f"{config_path}: key 'head_type': {err}") from None
    absent = [m for m in needed if not any(f"encoder_wrapper.{m}_adapter." in k for k in weights)]
    if absent:
        raise ValueError(f"{config_path}: head_type {head_type!r} needs the {', '.join(absent)} branch, but the "
                         f"weights hold no encoder_wrapper.{absent[0]}_adapter.* tensors")


def load_model_dir(directory: str) -> dict:
    """``{"cfg": {"model", "task"}, "model": state_dict}`` (as ``load_checkpoint_file`` returns for a .pt),
    plus ``model_type``, ``head_type``, ``config_file``, ``weight_files`` and ``source`` (for messages).
    The directory's own BPE files are the tokenizer (``cfg.task.bpe_dir``)."""
    config = read_config(directory)
    config_path = os.path.join(directory, CONFIG_FILE)
    files, weight_map = weight_files(directory)
    index_path = os.path.join(directory, INDEX_FILE)
    weights = read_weights(files, weight_map, index_path)
    if not weights:
        raise ValueError(f"{files[0]} holds no tensors")
    check_config_fits_weights(config, weights, config_path)
    model = dict(config["model"], _name=config["model_type"])
    task = dict(config["task"])
    if not missing_bpe_files(directory):
        task["bpe_dir"] = directory
    if task.get("label_file") == LABEL_FILE:
        task["label_file"] = os.path.join(directory, LABEL_FILE)
    source = files[0] if weight_map is None else index_path
    return {"cfg": {"model": model, "task": task}, "model": weights, "model_type": config["model_type"],
            "head_type": config.get("head_type"), "config_file": config_path, "weight_files": files,
            "source": f"{source} (with {config_path})"}


# ---- writing --------------------------------------------------------------------------------------
def _target_dtype(tensor: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.dtype:
    return dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype


def overlapping_keys(weights: Dict[str, torch.Tensor]) -> set:
    """Keys whose memory overlaps another key's, all but the lowest in address order (views of one mapped
    file that do not overlap are not shared); they are written as copies."""
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), i, k)
                   for i, (k, t) in enumerate(weights.items()) if t.numel() and t.device.type != "meta")
    shared, end = set(), -1
    for start, stop, _, key in spans:
        if start < end:
            shared.add(key)
        end = max(end, stop)
    return shared


def _prepared(tensor: torch.Tensor, dtype: Optional[torch.dtype], copy: bool) -> torch.Tensor:
    out = tensor.to(device="cpu", dtype=_target_dtype(tensor, dtype)).contiguous()
    return out.clone() if copy and out.data_ptr() == tensor.data_ptr() else out


def _jsonable(value, where: str):
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        return value.item()
    raise ValueError(f"config value {where} = {value!r} ({type(value).__name__}) cannot be written to JSON")


def _write_json(path: str, value: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(value, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def dtype_name(weights: Dict[str, torch.Tensor], dtype: Optional[torch.dtype]) -> Optional[str]:
    """The floating dtype the directory stores (None when the floating tensors mix dtypes)."""
    kinds = {str(_target_dtype(t, dtype)).replace("torch.", "") for t in weights.values() if t.is_floating_point()}
    return kinds.pop() if len(kinds) == 1 else None


def save_model_dir(directory: str, weights: Dict[str, torch.Tensor], config: dict,
                   preprocessor: Optional[dict] = None, tokenizer_dir: Optional[str] = None,
                   dtype: Optional[torch.dtype] = None, max_shard_size="5GB", source_files=()) -> dict:
    """Write a model directory; ``config`` holds :data:`REQUIRED_KEYS` (and ``head_type``); the task's
    ``label_file``, if it exists, is copied in as :data:`LABEL_FILE` (else dropped, logged).  Floating
    tensors are cast to ``dtype`` (None: kept), one shard at a time; pages of the memory-mapped
    ``source_files`` are released as their tensors are written.  Weight files of an earlier save that
    this one does not write are removed.  Returns ``{"files": [...], "total_size": bytes, "sharded": bool}``."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise ValueError(f"config lacks {', '.join(missing)}")
    bad = [k for k, v in weights.items() if not torch.is_tensor(v)]
    if bad:
        raise ValueError(f"the state dict holds non-tensors: {bad[0]} is a {type(weights[bad[0]]).__name__}")
    config = _jsonable(dict(config, torch_dtype=dtype_name(weights, dtype)), "config")
    label_file = config["task"].get("label_file")
    if label_file and not os.path.isfile(label_file):
        logger.warning("the task's label_file %s does not exist here: the directory gets no label names", label_file)
    config["task"]["label_file"] = LABEL_FILE if label_file and os.path.isfile(label_file) else None
    preprocessor = _jsonable(preprocessor, "preprocessor") if preprocessor is not None else None
    # The Hub's shard rule and names, sized in the target dtype (meta tensors: nothing is allocated).
    sizes = {k: torch.empty(t.shape, dtype=_target_dtype(t, dtype), device="meta") for k, t in weights.items()}
    try:
        plan = split_torch_state_dict_into_shards(sizes, filename_pattern=SHARD_PATTERN, max_shard_size=max_shard_size)
    except ValueError as err:
        raise ValueError(f"max_shard_size={max_shard_size!r}: {err}") from None
    shared = overlapping_keys(weights)
    mapped = MappedPages({os.path.realpath(f) for f in source_files})
    os.makedirs(directory, exist_ok=True)
    for filename, keys in plan.filename_to_tensors.items():
        shard = {k: _prepared(weights[k], dtype, k in shared) for k in keys}
        tmp = os.path.join(directory, f".{filename}.tmp")
        save_file(shard, tmp, metadata={"format": "pt"})
        os.replace(tmp, os.path.join(directory, filename))
        del shard
        for key in keys:
            mapped.release(weights[key])
    written = list(plan.filename_to_tensors)
    if plan.is_sharded:
        _write_json(os.path.join(directory, INDEX_FILE),
                    {"metadata": plan.metadata, "weight_map": plan.tensor_to_filename})
        written.append(INDEX_FILE)
    _remove_stale_weights(directory, written)
    _write_json(os.path.join(directory, CONFIG_FILE), config)
    if preprocessor is not None:
        _write_json(os.path.join(directory, PREPROCESSOR_FILE), preprocessor)
    if config["task"]["label_file"] and os.path.realpath(label_file) != os.path.realpath(
            os.path.join(directory, LABEL_FILE)):
        shutil.copyfile(label_file, os.path.join(directory, LABEL_FILE))
    if tokenizer_dir is not None and os.path.realpath(tokenizer_dir) != os.path.realpath(directory):
        for name in BPE_FILES:
            shutil.copyfile(os.path.join(tokenizer_dir, name), os.path.join(directory, name))
    return {"files": written, "total_size": plan.metadata["total_size"], "sharded": plan.is_sharded}


def _remove_stale_weights(directory: str, written: List[str]) -> None:
    import fnmatch

    for name in os.listdir(directory):
        if name not in written and (name == INDEX_FILE or fnmatch.fnmatch(name, "model*.safetensors")):
            os.remove(os.path.join(directory, name))


def verify_model_dir(directory: str, weights: Dict[str, torch.Tensor], dtype: Optional[torch.dtype] = None,
                     source_files=()) -> int:
    """Read the directory back, shard by shard, and compare every tensor bit for bit with ``weights``
    (cast as written); ValueError naming the file and key on a difference.  Returns the tensor count."""
    from safetensors import safe_open

    files, weight_map = weight_files(directory)
    mapped = MappedPages({os.path.realpath(f) for f in source_files})
    seen = 0
    for path in files:
        with safe_open(path, framework="pt") as fh:
            for key in fh.keys():
                if key not in weights:
                    raise ValueError(f"round trip: {path} holds {key}, which the checkpoint does not")
                got, want = fh.get_tensor(key), _prepared(weights[key], dtype, False)
                if got.dtype != want.dtype or got.shape != want.shape or not _same_bits(got, want):
                    raise ValueError(f"round trip: {path}: tensor {key} differs from the checkpoint's")
                mapped.release(weights[key])
                seen += 1
    if seen != len(weights):
        raise ValueError(f"round trip: {directory} holds {seen} tensors, the checkpoint {len(weights)}")
    return seen


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if not a.numel():
        return True
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
