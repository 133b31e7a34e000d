"""Evaluate a ONE-PEACE checkpoint with MTEB's own evaluation loop; MTEB writes its result files.

    python -m one_peace.mteb_eval.run --checkpoint one-peace.pt --output-folder results
    python -m one_peace.mteb_eval.run --checkpoint one-peace.pt --benchmark "MIEB(lite)" --output-folder results

Without ``--tasks`` / ``--benchmark`` it runs the local tasks over the Tux Paint stamps of
``run_scripts/fetch_real_media.sh`` (``local_tasks.py``: image, fused audio+text, audio and text tasks,
offline).  ``--tasks`` takes local task names and any MTEB task name; ``--benchmark`` an MTEB benchmark
(``MIEB(lite)``, ``MAEB(v1)``, ``MVEB(v1)``, ...; their data comes from the Hugging Face Hub).  Results:
``OUTPUT/results/<model name>/<revision>/<task>.json`` and ``model_meta.json`` (MTEB's ``ResultCache``);
the revision defaults to the checkpoint's SHA-256 prefix (``meta.py``).  docs/EVALUATION.md.
"""
import argparse
import logging
import os
import sys

TOOL = "one-peace-mteb"
logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=TOOL, description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="a retrieval or pretraining checkpoint (one-peace.pt, ...)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--tasks", nargs="+", metavar="TASK",
                       help="local task names (default: all of them) and/or MTEB task names")
    which.add_argument("--benchmark", help='an MTEB benchmark, e.g. "MIEB(lite)", "MAEB(v1)", "MVEB(v1)"')
    p.add_argument("--output-folder", default="results", help="MTEB's result cache folder (default: results)")
    p.add_argument("--model-name", default=None,
                   help="the name results are filed under (default OFA-Sys/ONE-PEACE: use another for your own "
                        "checkpoints)")
    p.add_argument("--revision", default=None, help="the revision results are filed under (default: sha256- and "
                                                    "the first 12 hex digits of the checkpoint's SHA-256)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if present)")
    p.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16")
    p.add_argument("--bpe-dir", default=None, help="the BPE folder (default: the checkpoint's, $ONE_PEACE_BPE_DIR, "
                                                   "the cache)")
    p.add_argument("--media", default=None, help="local tasks: the real-media cache (default $ONE_PEACE_REAL_MEDIA "
                                                 "or ~/.cache/one_peace/real_media)")
    p.add_argument("--image-size", type=int, default=256, help="local tasks: stamp images are this square size")
    p.add_argument("--per-category", type=int, default=None,
                   help="local tasks: only the first N concepts of each category (a quick run)")
    p.add_argument("--overwrite", action="store_true", help="rerun tasks whose results are already in the folder")
    p.add_argument("--keep-going", action="store_true",
                   help="a failing task is reported at the end instead of stopping the run (exit status 1)")
    return p


def check_options(args) -> None:
    """Everything that can be checked before a weight is read."""
    if not os.path.exists(os.path.expanduser(args.checkpoint)):
        raise FileNotFoundError(f"--checkpoint {args.checkpoint} does not exist")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.image_size < 1:
        raise ValueError(f"--image-size must be >= 1, got {args.image_size}")
    if args.per_category is not None and args.per_category < 1:
        raise ValueError(f"--per-category must be >= 1, got {args.per_category}")
    if os.path.exists(args.output_folder) and not os.path.isdir(args.output_folder):
        raise NotADirectoryError(f"--output-folder {args.output_folder} exists and is not a folder")


def resolve_tasks(args) -> list:
    """Task instances: the local ones (built with the media options) and MTEB's by name, or a benchmark's."""
    import mteb

    from .local_tasks import LOCAL_TASKS
    from .tuxpaint import stamps_folder

    if args.benchmark:
        try:
            return list(mteb.get_benchmark(args.benchmark).tasks)
        except KeyError as exc:
            raise ValueError(f"--benchmark: {exc.args[0] if exc.args else exc}") from None
    names = args.tasks or list(LOCAL_TASKS)
    local = [n for n in names if n in LOCAL_TASKS]
    if local:
        stamps_folder(args.media)  # FileNotFoundError naming the fetch script before any weight is read
    others = [n for n in names if n not in LOCAL_TASKS]
    tasks = {n: LOCAL_TASKS[n](media=args.media, image_size=args.image_size, per_category=args.per_category)
             for n in local}
    for name in others:
        try:
            tasks[name] = mteb.get_task(name)
        except KeyError as exc:
            raise ValueError(f"--tasks: {exc.args[0] if exc.args else exc} (local tasks: "
                             f"{', '.join(LOCAL_TASKS)})") from None
    return [tasks[n] for n in dict.fromkeys(names)]


def load(args, tasks):
    """The encoder with its ModelMeta; a video branch (from the image branch, docs/VIDEO.md) is built when
    a task has video and the checkpoint has images but no video."""
    from .meta import NAME, content_revision, load_encoder

    options = dict(device=args.device, dtype=args.dtype, bpe_dir=args.bpe_dir)
    name, revision = args.model_name or NAME, args.revision or content_revision(args.checkpoint)
    encoder = load_encoder(args.checkpoint, name=name, revision=revision, **options)
    wants_video = any("video" in task.metadata.modalities for task in tasks)
    if wants_video and "video" not in encoder.modalities and "image" in encoder.modalities:
        logger.info("building a video branch from the image branch of %s", args.checkpoint)
        encoder = load_encoder(args.checkpoint, name=name, revision=revision,
                               modalities=(*encoder.modalities, "video"), **options)
    lacking = {task.metadata.name: sorted(set(task.metadata.modalities) - set(encoder.modalities)) for task in tasks}
    lacking = {name: mods for name, mods in lacking.items() if mods}
    if lacking:
        raise ValueError(f"{args.checkpoint} embeds {', '.join(encoder.modalities)}; these tasks need more: "
                         + "; ".join(f"{name} ({', '.join(mods)})" for name, mods in lacking.items()))
    return encoder


def run(args) -> int:
    import mteb

    check_options(args)
    tasks = resolve_tasks(args)
    encoder = load(args, tasks)
    result = mteb.evaluate(encoder, tasks, cache=mteb.ResultCache(args.output_folder),
                           encode_kwargs={"batch_size": args.batch_size},
                           overwrite_strategy="always" if args.overwrite else "only-missing",
                           raise_error=not args.keep_going)
    cache = mteb.ResultCache(args.output_folder)
    for task_result in result.task_results:
        path = cache.get_task_result_path(task_result.task_name, encoder.mteb_model_meta)
        print(f"{task_result.task_name}\t{task_result.get_score():.4f}\t{path}")
    for error in result.exceptions:
        print(f"{TOOL}: task {error.task_name} failed: {error.exception}", file=sys.stderr)
    return 1 if result.exceptions else 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # MTEB logs every step at INFO; warnings, and our own progress lines (the caller's level restored after)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ours = logging.getLogger("one_peace")
    level = ours.level
    ours.setLevel(logging.INFO)
    try:
        return run(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
        if os.environ.get("ONE_PEACE_TRACEBACK"):
            raise
        print(f"{TOOL}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        ours.setLevel(level)


def cli_main():
    sys.exit(main())


if __name__ == "__main__":
    cli_main()
