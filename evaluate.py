r"""Evaluate a ONE-PEACE checkpoint on a data split, fairseq-generate style.

    one-peace-evaluate --path checkpoint.pt --gen-subset valid \
        --valid-data test.tsv --bpe-dir bpe/ --batch-size 16 --results-path results/ [--cpu] [--bf16]

    # zero-shot: model from the checkpoint, task (and its options) from the command line
    one-peace-evaluate --path one-peace.pt --task audio_text_retrieval --zero-shot \
        --head-type al --use-template --valid-file esc50_label.json --valid-data esc50.tsv ...

Without ``--zero-shot`` the task is the one saved in the checkpoint; task options given
on the command line (those differing from the task's defaults, e.g. ``--valid-data``,
``--bpe-dir``) and ``--model-overrides "{'task': {...}, 'model': {...}}"`` (a Python
literal) override the saved values.  ``--task`` defaults to the checkpoint's task.

Prints the split metrics and writes ``{results_path}/{gen_subset}_predict.json`` (one
entry per row, in row order), ``{results_path}/{gen_subset}_metrics.json`` and, for tasks
with one (VQA), a submission file in the benchmark server's format.  Runs on
CPU (``--cpu`` or no GPU) or GPU; under ``torchrun`` every worker evaluates a share of
the split and the results are gathered.
"""
import ast
import json
import logging
import os
import re
import sys
from typing import Dict, List, Optional

import torch

from .metrics.gather import world_info
from .models.checkpoint_io import is_checkpoint
from .models.model_dir import CONFIG_FILE
from .models.sharded_checkpoint import DCP_METADATA
from .user_src import registry  # noqa: F401 - first of our imports: registers everything; keeps fairseq's import off logging

logger = logging.getLogger("one_peace.evaluate")


# ---- checkpoint and task ---------------------------------------------------------------------
def _peek_saved_cfg(path: str):
    """The checkpoint's saved config, without reading the weights into memory when possible."""
    from .models.checkpoint import load_checkpoint_file

    return _saved_cfg(load_checkpoint_file(path, mmap=True), path)  # mapped unless a legacy pickle


def _saved_cfg(state: dict, path: str):
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    if state.get("cfg") is not None:
        cfg = state["cfg"]
        return cfg if OmegaConf.is_config(cfg) else OmegaConf.create(cfg, flags={"allow_objects": True})
    if state.get("args") is not None:
        return convert_namespace_to_omegaconf(state["args"])
    raise ValueError(f"{path} holds no saved configuration ('cfg' or 'args'); cannot rebuild its task and model")


def _checkpoint_task_name(argv: List[str]) -> Optional[str]:
    """Task name saved in the ``--path`` checkpoint, used when ``--task`` is not given."""
    if any(a == "--task" or a.startswith("--task=") for a in argv):
        return None
    path = None
    for i, arg in enumerate(argv):
        if arg == "--path" and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--path="):
            path = arg.split("=", 1)[1]
    if path is None:
        return None
    if not is_checkpoint(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return _peek_saved_cfg(path).task._name


def _parse_overrides(text: Optional[str]) -> Dict:
    if not text:
        return {}
    try:
        value = ast.literal_eval(text)  # a literal only: fairseq itself eval()s this string
    except (ValueError, SyntaxError) as err:
        raise ValueError(f"--model-overrides must be a Python dict literal, got {text!r}: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--model-overrides must be a dict, got {type(value).__name__}")
    return value


def _explicit_task_options(task_cfg) -> Dict:
    """Task options from the command line that differ from the task's defaults."""
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    defaults = TASK_DATACLASS_REGISTRY[task_cfg._name]()
    out = {}
    for key in task_cfg:
        if key in ("_name", "zero_shot") or not hasattr(defaults, key):
            continue
        if task_cfg[key] != getattr(defaults, key):
            out[key] = task_cfg[key]
    return out


def load_task_and_model(cfg, dtype=torch.float32, device="cpu"):
    """Rebuild (task, model) from ``cfg.common_eval.path`` as described in the module doc; the
    weights land in ``dtype`` on ``device`` as they are read (none is initialised first)."""
    from fairseq import checkpoint_utils, tasks
    from fairseq.dataclass.utils import overwrite_args_by_name
    from omegaconf import open_dict

    from .data_utils.bpe_files import saved_bpe_dir_or_none
    from .models.checkpoint import load_checkpoint_file
    from .models.checkpoint_io import CheckpointMismatchError
    from .models.deferred_init import loading_context
    from .tasks.evaluation import require_evaluable

    path = cfg.common_eval.path
    state = load_checkpoint_file(path, mmap=True)
    saved = _saved_cfg(state, path)
    overrides = _parse_overrides(cfg.common_eval.model_overrides)
    if overrides:
        overwrite_args_by_name(saved, overrides)
    if cfg.task.zero_shot:
        _require_embedding_checkpoint(path, saved)
        from_checkpoint = set()  # the task is the command line's
        task = tasks.setup_task(cfg.task)
        zero_shot_model = getattr(task, "ZERO_SHOT_MODEL", None)
        if zero_shot_model and "_name" not in overrides.get("model", {}) and saved.model._name != zero_shot_model:
            # e.g. a pretraining checkpoint evaluated zero-shot on retrieval: same weights, the retrieval model
            logger.info("zero-shot %s: evaluating the %s checkpoint as %s", cfg.task._name, saved.model._name,
                        zero_shot_model)
            with open_dict(saved.model):
                saved.model._name = zero_shot_model
    else:
        if cfg.task._name != saved.task._name:
            raise ValueError(_task_mismatch(path, saved, cfg.task._name))
        explicit = _explicit_task_options(cfg.task)
        from_checkpoint = set(saved.task) - set(explicit) - set(overrides.get("task", {}))
        with open_dict(saved.task):
            for key, value in explicit.items():
                saved.task[key] = value
            if "bpe_dir" not in explicit:
                saved.task.bpe_dir = saved_bpe_dir_or_none(saved.task.get("bpe_dir"))
        task = tasks.setup_task(saved.task)
    require_evaluable(task)  # before the weights are loaded: a pretraining checkpoint fails here
    check_task_inputs(task, cfg.dataset.gen_subset, from_checkpoint)
    state["cfg"] = saved
    try:
        with loading_context(dtype, device, files=path):
            models, _, task = checkpoint_utils.load_model_ensemble_and_task([path], task=task, state=state)
    except CheckpointMismatchError as err:  # the checkpoint or an option (image size, head type) does not fit
        raise ValueError(f"{path} does not fit the {saved.model.get('_name')} model of task "
                         f"{task.cfg._name}: {' '.join(str(err).split())}") from None
    return task, models[0]


# ---- checks when the command starts (before any weight is read) ------------------------------
def check_options(cfg) -> None:
    """The options that need no checkpoint: one error naming the option, before anything is loaded."""
    from fairseq.tasks import TASK_REGISTRY

    from .tasks.evaluation import zero_shot_tasks

    path = cfg.common_eval.path
    if not is_checkpoint(path):
        raise FileNotFoundError(f"--path: checkpoint not found: {path}" if not os.path.isdir(path)
                                else f"--path: {path} is a directory without {CONFIG_FILE} or {DCP_METADATA} (neither "
                                     "a model directory of one-peace-convert nor a sharded FSDP2 checkpoint); name "
                                     "the checkpoint file in it")
    for option, value, least in (("--batch-size", cfg.dataset.batch_size, 1),
                                 ("--num-workers", cfg.dataset.num_workers, 0)):
        if value is not None and value < least:
            raise ValueError(f"{option} must be at least {least}, got {value}")
    subset = cfg.dataset.gen_subset
    if not subset or os.sep in subset or "/" in subset or subset in (".", ".."):
        raise ValueError(f"--gen-subset names the split in the output files ({{subset}}_predict.json): a plain "
                         f"name such as test or valid, got {subset!r}")
    if subset == "train":  # the task would read its training data, augmented and shuffled, skipping bad rows
        raise ValueError("--gen-subset train evaluates the training split as it is trained on (augmented, "
                         "shuffled, bad rows skipped); name the split otherwise (test, valid, ...) and give its "
                         "TSV with --valid-data")
    results = cfg.common_eval.results_path
    if results:
        if os.path.exists(results) and not os.path.isdir(results):
            raise NotADirectoryError(f"--results-path: {results} exists and is not a directory")
        os.makedirs(results, exist_ok=True)  # now: a folder that cannot be made fails before the evaluation
        if not os.access(results, os.W_OK | os.X_OK):
            raise PermissionError(f"--results-path: cannot write into {results}")
    if cfg.task.zero_shot and not getattr(TASK_REGISTRY.get(cfg.task._name), "ZERO_SHOT_MODEL", None):
        raise ValueError(f"--zero-shot evaluates an embedding checkpoint on a retrieval task "
                         f"({', '.join(zero_shot_tasks())}), not on {cfg.task._name}; task {cfg.task._name} "
                         "evaluates a checkpoint fine-tuned for it, without --zero-shot")


def _is_embedding_model(name: Optional[str]) -> bool:
    """A model that embeds rows and captions (retrieval, pretraining); unknown names pass to fairseq."""
    from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY

    cls = MODEL_REGISTRY.get(name) or ARCH_MODEL_REGISTRY.get(name)
    return cls is None or callable(getattr(cls, "encode", None))


def _require_embedding_checkpoint(path: str, saved) -> None:
    model, task = saved.model.get("_name"), saved.task.get("_name")
    if not _is_embedding_model(model):
        raise ValueError(f"--zero-shot needs an embedding checkpoint (a retrieval or pretraining model, which "
                         f"embeds rows and captions); {path} holds a {model} model fine-tuned for task {task!r}: "
                         f"evaluate it without --zero-shot (--task {task})")


def _task_mismatch(path: str, saved, wanted: str) -> str:
    """What to do when ``--task`` (without --zero-shot) is not the checkpoint's task."""
    from fairseq.tasks import TASK_REGISTRY

    from .tasks.evaluation import is_evaluable, zero_shot_hint, zero_shot_tasks

    task = saved.task.get("_name")
    evaluable = is_evaluable(TASK_REGISTRY.get(task))
    message = (f"{path} was trained with task {task!r}: evaluate it with --task {task} (or without --task)"
               if evaluable else f"{path} was trained with task {task!r}, which has no evaluation (pretraining)")
    embedding = _is_embedding_model(saved.model.get("_name"))
    if embedding and wanted in zero_shot_tasks():
        return f"{message}{', or' if evaluable else ':'} evaluate it on {wanted} with --zero-shot"
    message += f"; task {wanted!r} evaluates a checkpoint fine-tuned for it"
    return message + (f"; this checkpoint can be evaluated zero-shot on a retrieval task: {zero_shot_hint()}"
                      if embedding else "")


# Sizes and counts a task option may not set to 0 or less (they failed at the first batch, or not at all).
POSITIVE_TASK_OPTIONS = ("patch_image_size", "max_src_length", "max_duration", "text_batch_size", "num_frames",
                         "num_choices")


def check_task_inputs(task, subset: str, from_checkpoint=frozenset()) -> None:
    """The files and values the evaluation will read, checked once the task is set up, before the weights.
    ``from_checkpoint``: the task fields whose value is the checkpoint's saved one (the errors say so)."""
    from .data_utils.feature_spec import parse_feature_encoder_spec

    def option(name: str) -> str:
        flag = "--" + name.replace("_", "-")
        return f"{flag} (saved in the checkpoint; give {flag} to replace it)" if name in from_checkpoint else flag

    cfg = task.cfg
    data_root = cfg.get("data_root")
    if data_root and not os.path.isdir(data_root):
        raise NotADirectoryError(f"{option('data_root')}: not a directory: {data_root}")
    if not (cfg.get("valid_data") or cfg.get("data")):
        raise ValueError(f"no data to evaluate: give the {subset} split's TSV with --valid-data")
    source = option("valid_data") if cfg.get("valid_data") else "the task's data (no --valid-data given)"
    try:
        task.reader(subset)  # the TSV: a file with a header, the selected columns and rows
    except (OSError, ValueError) as err:
        raise (FileNotFoundError if isinstance(err, OSError) else ValueError)(f"{source}: {err}") from None
    valid_file = cfg.get("valid_file")
    if valid_file and not os.path.isfile(valid_file):
        raise FileNotFoundError(f"{option('valid_file')}: not found: {valid_file}")
    if cfg.get("feature_encoder_spec"):
        parse_feature_encoder_spec(cfg.feature_encoder_spec)  # a ValueError naming it
    for name in POSITIVE_TASK_OPTIONS:
        value = cfg.get(name)
        if value is not None and value < 1:
            raise ValueError(f"{option(name)} must be at least 1, got {value}")


# ---- evaluation loop -------------------------------------------------------------------------
def _gather(obj):
    import torch.distributed as dist

    rank, world = world_info()
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _prepare(sample, device, dtype):
    from fairseq import utils

    def convert(t):
        t = t.to(device)
        return t.to(dtype) if t.is_floating_point() and dtype != torch.float32 else t

    return utils.apply_to_sample(convert, sample)


def evaluate(task, model, subset: str, batch_size: int, device, dtype=torch.float32, num_workers: int = 0):
    """(metrics dict, predictions list) of ``model`` on ``subset``; every worker returns both."""
    from fairseq import metrics

    from .data_utils.dataset import has_rows
    from .tasks.evaluation import require_evaluable

    require_evaluable(task)
    rank, world = world_info()
    model.to(device=device, dtype=dtype).eval()
    task.load_dataset(subset)
    dataset = task.dataset(subset)
    itr = task.get_batch_iterator(dataset, max_sentences=batch_size, num_shards=world, shard_id=rank,
                                  num_workers=num_workers).next_epoch_itr(shuffle=False)
    task.begin_valid_epoch(1, model)
    logs, predictions = [], []
    with torch.no_grad():
        for sample in itr:
            if not has_rows(sample):  # padding batch of a worker (evaluation reads every row: none is skipped)
                continue
            sample = _prepare(sample, device, dtype)
            log, preds = task.eval_step(model, sample)
            ids = sample["id"].tolist()
            for i, pred in enumerate(preds):
                pred["index"] = ids[i]
            logs.append(log)
            predictions.extend(preds)
    gathered = _gather((logs, predictions))
    logs = [log for part in gathered for log in part[0]]
    predictions = sorted((p for part in gathered for p in part[1]), key=lambda p: p["index"])
    with metrics.aggregate(new_root=True) as agg:
        task.reduce_split_metrics(logs)
        results = {k: _plain(v) for k, v in agg.get_smoothed_values().items()}
        details = getattr(task, "split_details", None)  # e.g. per-class segmentation IoU
        if callable(details):
            results.update(details(agg))
    return results, predictions


def _plain(value):
    if torch.is_tensor(value):
        return value.item() if value.numel() == 1 else value.tolist()
    return float(value) if hasattr(value, "__float__") and not isinstance(value, int) else value


def main(cfg, out: Optional[Dict] = None, **unused):
    """Evaluate as configured; the metrics are returned and, if given, copied into ``out``."""
    from fairseq import utils

    utils.import_user_module(cfg.common)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO,
                        stream=sys.stdout)
    use_cuda = torch.cuda.is_available() and not cfg.common.cpu
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cfg.common.bf16 else torch.float16 if cfg.common.fp16 else torch.float32
    if dtype == torch.float16 and not use_cuda:
        raise ValueError("--fp16 needs a GPU; use --bf16 or float32 on CPU")
    check_options(cfg)
    task, model = load_task_and_model(cfg, dtype, device)
    batch_size = cfg.dataset.batch_size or 1
    subset = cfg.dataset.gen_subset
    if cfg.common_eval.results_path and hasattr(task, "set_results_path"):
        task.set_results_path(os.path.join(cfg.common_eval.results_path, f"{subset}_masks"))  # per-row files
    results, predictions = evaluate(task, model, subset, batch_size, device, dtype,
                                    num_workers=cfg.dataset.num_workers)
    rank, _ = world_info()
    if rank == 0:
        summary = {k: v for k, v in results.items() if not isinstance(v, dict)}  # per-class tables: file only
        logger.info("%s | %s | %s", task.cfg._name, subset, " | ".join(f"{k} {v}" for k, v in summary.items()))
        print(json.dumps({"task": task.cfg._name, "subset": subset, **summary}), flush=True)
        if cfg.common_eval.results_path:
            os.makedirs(cfg.common_eval.results_path, exist_ok=True)
            with open(os.path.join(cfg.common_eval.results_path, f"{subset}_predict.json"), "w") as fh:
                json.dump(predictions, fh)
            with open(os.path.join(cfg.common_eval.results_path, f"{subset}_metrics.json"), "w") as fh:
                json.dump(results, fh, indent=1)
            submission = task.submission(predictions)  # e.g. VQAv2's evaluation-server format
            if submission is not None:
                name, content = submission
                with open(os.path.join(cfg.common_eval.results_path, f"{subset}_{name}"), "w") as fh:
                    json.dump(content, fh)
    if out is not None:
        out.update(results)
    return results


def _optional_data(parser):
    """The task's positional ``data`` (training files) is not needed to evaluate."""
    for action in parser._actions:
        if action.dest == "data" and not action.option_strings:
            action.nargs, action.default, action.required = "?", None, False


def print_help(argv: List[str]) -> None:
    """Our description and options first (the task's own: ``--task NAME --help``); fairseq's generic
    options only with ``--help-all``."""
    import argparse

    from fairseq.dataclass.utils import gen_parser_from_dataclass
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    task = _checkpoint_task_name(argv) or _option_value(argv, "--task") or "vggsound"
    if task not in TASK_DATACLASS_REGISTRY:
        raise SystemExit(f"one-peace-evaluate: unknown task {task!r}; one of {', '.join(sorted(TASK_DATACLASS_REGISTRY))}")
    parser = argparse.ArgumentParser(prog="one-peace-evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    ours = parser.add_argument_group("evaluation")
    for flags, text in (
            (("--path",), "checkpoint to evaluate (required)"),
            (("--task",), "benchmark task (default: the checkpoint's own)"),
            (("--zero-shot",), "model from the checkpoint, task and its options from the command line; a "
                               "pretraining checkpoint is evaluated as the retrieval model on retrieval tasks"),
            (("--gen-subset",), "split name of the outputs (default test)"),
            (("--results-path",), "directory for {subset}_predict.json and {subset}_metrics.json"),
            (("--batch-size",), "rows per batch"),
            (("--model-overrides",), "Python dict literal, e.g. \"{'task': {'label_file': 'l.json'}}\""),
            (("--cpu", "--bf16", "--fp16"), "device and precision (default: GPU if present, float32)"),
            (("--help-all",), "also fairseq's generic options")):
        ours.add_argument(*flags, help=text, action="store_true" if flags[0].startswith(("--cpu", "--zero", "--help"))
                          else None)
    gen_parser_from_dataclass(parser.add_argument_group(f"task {task} (--task NAME --help for another task)"),
                              TASK_DATACLASS_REGISTRY[task]())
    for action in parser._actions:  # literal '%' in field help ("(e-1) % n") would break argparse's formatting
        if action.help:
            action.help = re.sub(r"%(?!\()", "%%", action.help)
    parser.print_help()


def _option_value(argv: List[str], name: str) -> Optional[str]:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def run_cli(argv: Optional[List[str]] = None) -> Dict:
    """Parse ``argv`` (default: sys.argv), evaluate, return the metrics (empty in spawned workers)."""
    from fairseq import distributed_utils, options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help-all" in argv:
        argv = [a if a != "--help-all" else "--help" for a in argv]
    elif "-h" in argv or "--help" in argv:
        print_help([a for a in argv if a not in ("-h", "--help")])
        return {}
    parser = options.get_generation_parser(default_task=_checkpoint_task_name(argv) or "vggsound")
    args = options.parse_args_and_arch(parser, input_args=argv, modify_parser=_optional_data)
    if not args.path:
        parser.error("--path (the checkpoint to evaluate) is required")
    cfg = convert_namespace_to_omegaconf(args)
    results = {}
    # Processes spawned by fairseq (several GPUs without torchrun) fill their own copy.
    distributed_utils.call_main(cfg, main, out=results)
    return results


def cli_main(argv: Optional[List[str]] = None) -> None:
    """Console entry point (``one-peace-evaluate``): a user error is one ``error:`` line (``cli_errors``)."""
    from . import cli_errors

    cli_errors.install(force=True)
    run_cli(argv)


if __name__ == "__main__":
    cli_main()
