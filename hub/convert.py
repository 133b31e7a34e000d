"""``one-peace-convert CHECKPOINT OUT_DIR [--dtype bfloat16]``: a ``.pt`` checkpoint -> a model directory.

Takes the released files (README "Released checkpoints") and checkpoints of ``fairseq-train`` (best or
last, any task; only the model and its config are kept, not the optimizer state).  The model type comes
from the saved ``cfg.model._name`` (a size architecture such as ``one_peace_classify_4b`` names its model;
a pretraining config whose weights hold no decoder is an embedding checkpoint, ``one_peace_retrieval``);
``--model-type`` overrides it.  Segmentation and audio-visual checkpoints are converted too (weights and
full config) but the hub does not build them.  After writing, the directory is read back and compared
with the checkpoint bit for bit, and the hub builds it, before success is reported.
"""
import argparse
import logging
import os
import sys
from typing import Optional

from omegaconf import OmegaConf

from ..data_utils.bpe_files import resolve_bpe_dir, saved_bpe_dir_or_none
from ..models.architectures import SIZES
from ..models.checkpoint import CheckpointMismatchError, load_checkpoint_file
from ..models.modalities import head_type_for
from ..models.model_dir import dtype_name, save_model_dir, verify_model_dir
from .interface import DTYPES, from_pretrained
from .loading import MODEL_TYPES, modalities_in
from .pretrained_dir import MODEL_CONFIGS, directory_config, full_model_config, preprocessor_config

logger = logging.getLogger(__name__)
PROG = "one-peace-convert"
CLI_DTYPES = ("float32", "bfloat16", "float16")


def checkpoint_model_type(saved_model: dict, weights, override: Optional[str], path: str) -> str:
    if override is not None:
        if override not in MODEL_CONFIGS:
            raise ValueError(f"--model-type must be one of {', '.join(MODEL_CONFIGS)}, got {override!r}")
        return override
    name = saved_model.get("_name")
    if not name:
        raise ValueError(f"{path}: its saved cfg names no model (cfg.model._name is missing); pass --model-type "
                         f"({', '.join(MODEL_CONFIGS)})")
    for size in SIZES:  # an architecture name: <model>_<size>
        if name.endswith(f"_{size}") and name[:-len(size) - 1] in MODEL_CONFIGS:
            name = name[:-len(size) - 1]
    if name not in MODEL_CONFIGS:
        raise ValueError(f"{path} is not a ONE-PEACE checkpoint: its cfg.model._name is {name!r} (ONE-PEACE model "
                         f"types: {', '.join(MODEL_CONFIGS)}); pass --model-type if it is one all the same")
    if name == "one_peace_pretrain" and not any(k.startswith("decoder_wrapper.") for k in weights):
        logger.info("%s: a pretraining config without decoder weights: converted as one_peace_retrieval", path)
        return "one_peace_retrieval"
    return name


def _head_type(model_type: str, task: dict, weights) -> Optional[str]:
    if model_type in ("one_peace_retrieval", "one_peace_pretrain"):  # the branches it has weights for
        present = modalities_in(weights)
        return head_type_for(present) if present else None
    return task.get("head_type") or ("vl" if model_type == "one_peace_classify" else None)


def _check_out_dir(out_dir: str, checkpoint: str, overwrite: bool) -> None:
    if os.path.realpath(out_dir) == os.path.realpath(checkpoint):
        raise ValueError(f"OUT_DIR {out_dir} is the checkpoint itself; name another directory")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"OUT_DIR {out_dir} exists and is not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise ValueError(f"OUT_DIR {out_dir} exists and is not empty; pass --overwrite to replace its model files")


def convert_checkpoint(checkpoint: str, out_dir: str, dtype: Optional[str] = None, model_type: Optional[str] = None,
                       bpe_dir: Optional[str] = None, max_shard_size="5GB", overwrite: bool = False,
                       verify: bool = True) -> dict:
    """Write ``checkpoint`` (a .pt, or a model directory to re-save) as a model directory; returns a summary."""
    checkpoint, out_dir = os.path.expanduser(os.fspath(checkpoint)), os.path.expanduser(os.fspath(out_dir))
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(CLI_DTYPES)}, got {dtype!r}")
    _check_out_dir(out_dir, checkpoint, overwrite)
    state = load_checkpoint_file(checkpoint, mmap=True)
    saved = state.get("cfg")
    saved = OmegaConf.to_container(saved) if OmegaConf.is_config(saved) else saved
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise ValueError(f"{checkpoint} has no saved cfg with a model section: not a ONE-PEACE checkpoint of "
                         "fairseq-train or a released file")
    weights = state["model"]
    if not weights:
        raise ValueError(f"{checkpoint} holds no model weights (its 'model' entry is empty)")
    model_type = checkpoint_model_type(saved["model"], weights, model_type, checkpoint)
    model = full_model_config(model_type, saved["model"], source=checkpoint)
    task = dict(saved.get("task") or {})
    head_type = _head_type(model_type, task, weights)
    tokenizer = resolve_bpe_dir(bpe_dir or saved_bpe_dir_or_none(task.get("bpe_dir")))
    torch_dtype = DTYPES[dtype] if dtype else None
    sources = state.get("weight_files") or [checkpoint]
    summary = save_model_dir(out_dir, weights, directory_config(model_type, head_type, model, task),
                             preprocessor_config(task, model), tokenizer_dir=tokenizer, dtype=torch_dtype,
                             max_shard_size=max_shard_size, source_files=sources)
    summary.update(directory=out_dir, model_type=model_type, head_type=head_type, tensors=len(weights),
                   dtype=dtype_name(weights, torch_dtype), hub_loads=model_type in MODEL_TYPES, verified=False)
    if verify:
        verify_model_dir(out_dir, weights, torch_dtype, sources)
        if model_type in MODEL_TYPES:  # the hub builds it: config.json fits the weights
            hub_dtype = summary["dtype"] if summary["dtype"] in CLI_DTYPES else "float32"
            from_pretrained(out_dir, device="cpu", dtype=hub_dtype)
        summary["verified"] = True
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Convert a ONE-PEACE checkpoint (.pt) into a "
                                     "pickle-free model directory (config.json + safetensors + tokenizer files).")
    parser.add_argument("checkpoint", help="a released file (one-peace.pt, finetune_*.pt) or a fairseq-train "
                        "checkpoint (checkpoint_best.pt, checkpoint_last.pt); a model directory is re-saved")
    parser.add_argument("out_dir", help="the directory to write (must be absent or empty unless --overwrite)")
    parser.add_argument("--dtype", choices=CLI_DTYPES, default=None,
                        help="cast floating weights (default: as stored; the released files are bfloat16)")
    parser.add_argument("--model-type", choices=list(MODEL_CONFIGS), default=None,
                        help="the model type (default: from the checkpoint's saved cfg.model._name)")
    parser.add_argument("--bpe-dir", default=None, help="the BPE files to copy (default: the saved bpe_dir, "
                        "then $ONE_PEACE_BPE_DIR, then the cache)")
    parser.add_argument("--max-shard-size", default="5GB", help="shard the weights past this size (default 5GB, "
                        "as the Hub)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT_DIR")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip reading the directory back and comparing it with the checkpoint")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        s = convert_checkpoint(args.checkpoint, args.out_dir, args.dtype, args.model_type, args.bpe_dir,
                               args.max_shard_size, args.overwrite, args.verify)
    except (ValueError, FileNotFoundError, NotADirectoryError, CheckpointMismatchError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {s['directory']}: {s['model_type']} (head_type {s['head_type']}), {s['tensors']} tensors, "
          f"{s['dtype'] or 'mixed dtypes'}, {s['total_size'] / 2 ** 30:.3f} GiB in {', '.join(s['files'])}")
    if s["verified"]:
        print("read back: every tensor equals the checkpoint's" + (", and from_pretrained builds it"
                                                                  if s["hub_loads"] else ""))
    if s["hub_loads"]:
        print(f"load it with: from one_peace import from_pretrained; hub = from_pretrained({s['directory']!r})")
    else:
        print(f"note: the hub does not build {s['model_type']}; the fairseq layer does (fairseq_glue)")
    return 0


def cli_main():
    from ..cli_errors import install

    install(force=True)
    sys.exit(main())


if __name__ == "__main__":
    cli_main()
