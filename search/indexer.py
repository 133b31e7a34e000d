"""``one-peace-index``: embed every image, audio clip, video and text under some folders.

    one-peace-index INDEX_DIR FOLDER [FOLDER ...] --checkpoint one-peace.pt [--dtype bfloat16]
    one-peace-index INDEX_DIR                      # again: only new/changed files, removed ones dropped

Incremental rules (``docs/SEARCH.md``): a file is embedded again when its size or mtime changed, a
file gone from the roots is removed, a file that failed is retried only when it changed (or with
``--retry-failed``).  Batches are committed as they finish, so an interrupted run keeps its work.
"""
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import asdict
from typing import Dict, List

from ..models.checkpoint_io import is_checkpoint
from ..models.host_memory import keep_freed_host_memory
from . import vector_index
from .admin import run_admin, scan_options
from .cli_checks import check_index_arguments
from .embed import bpe_dir_for, branches_for, checkpoint_modalities, embed, embedding_dim, load_hub
from .embed_sources import MAX_PIXELS_REASON, MediaOptions, embed_sources, pil_pixel_limit
from .health import collapsed_modalities
from .identity import checkpoint_identity, verify_checkpoint
from .index_cli import build_parser, check_arguments
from .index_report import Progress, Summary
from .scan import TSV_EXTENSION, Source, check_modalities, normalise_root, scan, tsv_text_column, under_root
from .searcher import build_faiss
from .store import IndexStore, exclusive

logger = logging.getLogger("one_peace.search")


def _identity(store: IndexStore, args) -> Dict:
    """The checkpoint to embed with: the recorded one, or ``--checkpoint`` (refused unless the same)."""
    recorded = store.get("model")
    if args.checkpoint is None:
        if recorded is None:
            raise ValueError(f"{store.dir} is a new index: --checkpoint is required")
        if not is_checkpoint(recorded["checkpoint"]):
            raise FileNotFoundError(f"the checkpoint that built {store.dir} is not at {recorded['checkpoint']} "
                                    "any more: pass --checkpoint with its new location")
        identity = verify_checkpoint(recorded, recorded["checkpoint"], store.dir)
    elif recorded is not None:
        identity = verify_checkpoint(recorded, args.checkpoint, store.dir)
    else:
        identity = checkpoint_identity(args.checkpoint)
    for key, value in (("model_type", args.model_type), ("dtype", args.dtype)):
        if recorded is not None and value is not None and recorded[key] != value:
            raise ValueError(f"{store.dir} was built with --{key.replace('_', '-')} "
                             f"{recorded[key]}; refusing {value} (vectors of one index come from one model)")
    identity["model_type"] = (recorded or {}).get("model_type") or args.model_type or "one_peace_retrieval"
    identity["dtype"] = (recorded or {}).get("dtype") or args.dtype or "float32"
    return identity


def _roots(store: IndexStore, args) -> List[str]:
    recorded = store.roots()
    forget = {normalise_root(r) for r in args.forget_root or []}
    unknown = sorted(forget - set(recorded))
    if unknown:
        raise ValueError(f"--forget-root {', '.join(unknown)}: not a folder of this index (its folders: "
                         f"{', '.join(recorded) or 'none yet'})")
    roots = sorted((set(recorded) | {normalise_root(r) for r in args.roots}) - forget)
    if not roots:
        raise ValueError("no folders to index: name at least one")
    return roots


def _scan_options(store: IndexStore, args, known: Dict) -> Dict:
    """``--modality`` / ``--tsv-column`` of this run, else those recorded by the last; recorded for the
    next.  A changed TSV column marks the TSVs whose text column it changes (and those that failed) to be
    embedded again; this run or, if interrupted, a later one does it."""
    old = scan_options(store)
    new = dict(old)
    if args.modality is not None:
        names = [m.strip() for m in args.modality.split(",") if m.strip() and m.strip() != "all"]
        new["modality"] = check_modalities(names) or None
    if args.tsv_column is not None:
        new["tsv_column"] = args.tsv_column.strip() or None
    if new != old:
        stale = []
        if new["tsv_column"] != old["tsv_column"]:
            stale = [p for p, (_, _, _, status) in known.items() if p.lower().endswith(TSV_EXTENSION) and (
                status == "failed" or tsv_text_column(p, old["tsv_column"]) != tsv_text_column(p, new["tsv_column"]))]
        store.mark_stale(stale)
        store.set("scan_options", new)
        for path in stale:
            known[path] = known[path][:2] + (-1,) + known[path][3:]
    return new


def _media_options(store: IndexStore, args, known: Dict) -> MediaOptions:
    """``--exclude`` and the limits of this run, else those recorded by the last; recorded for the next.
    A changed ``--max-pixels`` retries the files it refused; a changed ``--max-duration`` or
    ``--segment-seconds`` marks the sounds and videos it changes (longer than the smaller value) to be
    embedded again."""
    recorded = store.get("media_options")
    old = MediaOptions.from_dict(recorded)
    new = MediaOptions.from_dict(old.to_dict())
    if args.exclude is not None:
        new.exclude = tuple(p.strip() for p in args.exclude if p.strip())  # --exclude '' clears them
    for name in ("max_pixels", "max_duration", "segment_seconds"):
        if getattr(args, name) is not None:
            setattr(new, name, getattr(args, name))
    if new == old and recorded is not None:
        return new
    stale = []
    if new.max_pixels != old.max_pixels:
        stale += [p for p, _, reason in store.failures() if MAX_PIXELS_REASON in (reason or "")]
    longer = [min(a, b) for a, b in ((old.max_duration, new.max_duration), (old.segment_seconds, new.segment_seconds))
              if a != b]
    if longer:
        stale += [p for (p,) in store.db.execute(
            "SELECT path FROM files WHERE modality IN ('audio', 'video') AND status = 'ok' AND duration_s > ?",
            (min(longer),))]
    store.mark_stale(stale)
    store.set("media_options", new.to_dict())
    for path in stale:
        if path in known:
            known[path] = known[path][:2] + (-1,) + known[path][3:]
    return new


def run_index(args) -> Summary:
    store = IndexStore(args.index, create=True)
    summary = Summary(index=store.dir)
    start = time.perf_counter()
    identity = _identity(store, args)
    roots = _roots(store, args)
    known = store.files()
    options = _scan_options(store, args, known)
    summary.options = dict(options)
    media = _media_options(store, args, known)
    summary.media_options = media.to_dict()
    wanted = options["modality"]
    sources, summary.missing_roots = scan(roots, wanted, media.exclude)
    for root in summary.missing_roots:
        logger.warning("root %s does not exist (unmounted?): its files are kept; --forget-root drops them", root)
    store.set_roots(roots)
    summary.found = dict(Counter(s.modality for s in sources))
    seen = {s.path for s in sources}
    present = [r for r in roots if r not in summary.missing_roots]
    # Removed: no longer under any root (--forget-root), or gone from a root that exists (or --exclude'd);
    # files of a modality outside --modality are kept (as they were) while they exist.
    gone = [p for p, (m, *_) in known.items() if p not in seen and (not under_root(p, roots) or (
        under_root(p, present) and (wanted is None or m in wanted or not os.path.exists(p))))]
    summary.removed = store.delete_files(gone)
    todo = []
    for source in sources:
        old = known.get(source.path)
        if old is None:
            summary.new += 1
        elif (old[0], old[1], old[2]) != (source.modality, source.size, source.mtime_ns):
            summary.changed += 1
        elif old[3] == "failed" and not args.retry_failed:
            summary.skipped_failed += 1
            continue
        elif old[3] == "failed":
            summary.changed += 1
        else:
            summary.unchanged += 1
            continue
        todo.append(source)
    if todo:
        _embed_all(store, identity, todo, args, summary, media)
    processed = summary.embedded + len(summary.failed)
    summary.files_per_s = processed / summary.embed_seconds if summary.embed_seconds > 0 else 0.0
    _finish_faiss(store, args, summary)
    if not summary.interrupted:
        summary.degenerate = collapsed_modalities(store)
        for found in summary.degenerate:
            logger.warning("%s", found["message"])
    summary.seconds = time.perf_counter() - start
    return summary


def _embed_all(store: IndexStore, identity: Dict, todo: List[Source], args, summary: Summary,
               media: MediaOptions) -> None:
    recorded = store.get("model") or {}
    has = checkpoint_modalities(identity["checkpoint"])
    needed = sorted({s.modality for s in todo})
    branches = branches_for(has, sorted(set(needed) | set(recorded.get("modalities", ()))))
    start = time.perf_counter()
    # The BPE directory is recorded: later runs and queries tokenise with the same files (a fallback to
    # $ONE_PEACE_BPE_DIR for a recorded folder that lost its files is used, not recorded).
    bpe_dir = bpe_dir_for(args.bpe_dir, recorded.get("bpe_dir"), store.dir)
    hub = load_hub(identity["checkpoint"], identity["model_type"], identity["dtype"], args.device, bpe_dir, branches)
    if getattr(args, "backend", "torch") == "onnx":  # texts and sounds through onnxruntime (search/onnx_backend.py)
        from .onnx_backend import onnx_hub

        hub = onnx_hub(hub, identity, store.dir, needed)
    summary.load_seconds = time.perf_counter() - start
    built = tuple(hub.model.modalities)
    model = dict(identity, dim=embedding_dim(hub), modalities=list(built),
                 bpe_dir=bpe_dir if args.bpe_dir else recorded.get("bpe_dir"))
    if recorded and recorded["dim"] != model["dim"]:
        raise ValueError(f"embedding dim {model['dim']} differs from the index's {recorded['dim']}")
    store.set("model", model)
    progress = Progress(len(todo), args.progress)
    start = time.perf_counter()

    def commit(entries):
        store.commit_batch(entries)
        for source, status, reason, vectors, *info in entries:
            limit = (info[0] if info else {}).get("limit")
            record = {"path": source.path, "modality": source.modality, "reason": reason}
            if status == "ok":
                summary.embedded += 1
                summary.vectors += len(vectors)
                summary.segments += sum(1 for v in vectors if len(v) > 3 and v[4] is not None)
                if limit == "max_duration":
                    logger.warning("%s: %s", source.path, reason)
                    summary.truncated.append(record)
            else:
                logger.warning("cannot index %s: %s", source.path, reason)
                summary.failed.append(record)
                summary.over_max_pixels += limit == "max_pixels"
        progress.update(len(entries))

    try:
        with pil_pixel_limit(media.max_pixels):
            for modality in sorted(needed):
                group = [s for s in todo if s.modality == modality]
                if modality not in built:
                    commit([(s, "failed", f"the checkpoint has no {modality} branch", []) for s in group])
                    continue
                # ``embed`` looked up here, at call time: a test may replace this module's ``embed``
                embed_sources(hub, modality, group, args.batch_size, summary.options["tsv_column"], media, commit,
                              embed_fn=embed)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        progress.close()
        summary.embed_seconds = time.perf_counter() - start


def _finish_faiss(store: IndexStore, args, summary: Summary) -> None:
    options = vector_index.IndexOptions.from_dict(store.get("index_options"))
    for name in ("index_type", "approx_threshold", "approx_type", "nlist", "nprobe", "ef_search"):
        if getattr(args, name, None) is not None:
            setattr(options, name, getattr(args, name))
    changed = options.to_dict() != store.get("index_options")
    store.set("index_options", options.to_dict())
    model = store.get("model")
    summary.counts = store.counts()
    for modality in summary.counts:
        saved = store.get(f"faiss:{modality}") or {}
        if model and not summary.interrupted and (changed or saved.get("version") != store.version(modality)):
            try:
                build_faiss(store, modality, int(model["dim"]), options)
            except RuntimeError as exc:  # faiss refuses the recorded options: say which and how to change them
                raise ValueError(f"cannot build the {modality} faiss index with {options.to_dict()}: "
                                 f"{str(exc).strip().splitlines()[-1]}; run again with other --index-type / --nlist "
                                 "(they replace the recorded ones)") from None
        summary.index_types[modality] = (store.get(f"faiss:{modality}") or {}).get("type", "stale")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("one_peace.search").setLevel(logging.INFO)
    try:
        check_arguments(args)
        if args.stats or args.list or args.clear_failures:
            return run_admin(args)
        check_index_arguments(args.index, args.roots, args.checkpoint)
        keep_freed_host_memory()  # embedding batch after batch: freed memory reused (models/host_memory.py)
        if args.bpe_dir:
            bpe_dir_for(args.bpe_dir, None, args.index)  # a wrong --bpe-dir before the checkpoint is hashed
        with exclusive(normalise_root(args.index)):
            summary = run_index(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"one-peace-index: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(asdict(summary), indent=1))
    else:
        print("\n".join(summary.lines()))
    return 130 if summary.interrupted else 0


def cli_main():
    sys.exit(main())


if __name__ == "__main__":
    cli_main()
