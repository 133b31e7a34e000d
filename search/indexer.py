"""``one-peace-index``: embed every image, audio clip, video and text under some folders.

    one-peace-index INDEX_DIR FOLDER [FOLDER ...] --checkpoint one-peace.pt [--dtype bfloat16]
    one-peace-index INDEX_DIR                      # again: only new/changed files, removed ones dropped

Incremental rules (``docs/SEARCH.md``): a file is embedded again when its size or mtime changed, a
file gone from the roots is removed, a file that failed is retried only when it changed (or with
``--retry-failed``).  Batches are committed as they finish, so an interrupted run keeps its work.
"""
import argparse
import json
import logging
import math
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

from . import vector_index
from .admin import run_admin, scan_options
from .cli_checks import at_least, check_index_arguments
from .embed import bpe_dir_for, branches_for, checkpoint_modalities, embed, embedding_dim, load_hub
from .health import collapsed_modalities
from .identity import checkpoint_identity, verify_checkpoint
from .scan import (
    TSV_EXTENSION,
    Source,
    check_modalities,
    extensions,
    normalise_root,
    read_text_file,
    read_tsv_texts,
    scan,
    tsv_text_column,
    under_root,
)
from .searcher import build_faiss
from .store import IndexStore, exclusive

logger = logging.getLogger("one_peace.search")
TEXT_KEPT = 2000  # characters of an embedded text kept for display


@dataclass
class Summary:
    index: str
    found: Dict[str, int] = field(default_factory=dict)
    unchanged: int = 0
    new: int = 0
    changed: int = 0
    removed: int = 0
    skipped_failed: int = 0  # failed before and unchanged since
    embedded: int = 0
    vectors: int = 0
    failed: List[Dict[str, str]] = field(default_factory=list)
    missing_roots: List[str] = field(default_factory=list)
    seconds: float = 0.0  # the whole run
    load_seconds: float = 0.0  # loading the checkpoint
    embed_seconds: float = 0.0  # decoding + embedding + committing
    files_per_s: float = 0.0  # embedded (or failed) files per second of embed_seconds
    index_types: Dict[str, str] = field(default_factory=dict)
    counts: Dict[str, int] = field(default_factory=dict)
    options: Dict = field(default_factory=dict)  # --modality / --tsv-column in force (recorded in the index)
    degenerate: List[Dict] = field(default_factory=list)  # collapsed modalities (health.py)
    interrupted: bool = False

    def lines(self) -> List[str]:
        found = ", ".join(f"{m} {n}" for m, n in sorted(self.found.items())) or "none"
        out = [f"one-peace-index: {self.index}",
               f"  found {sum(self.found.values())} files ({found}): {self.unchanged} unchanged, {self.new} new, "
               f"{self.changed} changed, {self.removed} removed",
               f"  embedded {self.embedded} files ({self.vectors} vectors) in {self.embed_seconds:.1f} s "
               f"({self.files_per_s:.2f} files/s; checkpoint loaded in {self.load_seconds:.1f} s, "
               f"{self.seconds:.1f} s in all)"]
        if self.skipped_failed:
            out.append(f"  {self.skipped_failed} files that failed before are unchanged and were not retried "
                       "(--retry-failed)")
        out.append(f"  failed: {len(self.failed)}")
        out += [f"    {f['path']}: {f['reason']}" for f in self.failed]
        out += [f"  missing root (its files were kept): {r}" for r in self.missing_roots]
        out.append("  index: " + (", ".join(f"{m} {n} vectors ({self.index_types.get(m, '?')})"
                                            for m, n in sorted(self.counts.items())) or "empty"))
        if self.options.get("modality") or self.options.get("tsv_column"):
            out.append(f"  remembered for the next runs: --modality {','.join(self.options['modality'] or ['all'])}"
                       f" --tsv-column {self.options['tsv_column'] or '(default: text, else caption)'}")
        if self.interrupted:
            out.append("  interrupted: what was committed is kept; run again to continue")
        return out


class Progress:
    """tqdm on a terminal, else a line to stderr every ``every`` seconds (files, files/s, ETA)."""

    def __init__(self, total: int, mode: str = "auto", every: float = 10.0):
        self.total, self.done, self.start, self.every, self.last = total, 0, time.perf_counter(), every, 0.0
        self.mode = ("bar" if sys.stderr.isatty() else "lines") if mode == "auto" else mode
        self.bar = None
        if self.mode == "bar" and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="file", desc="embedding", file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if self.mode == "lines" and (now - self.last >= self.every or self.done == self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else math.inf
            eta_text = f"{int(eta // 60)}m{int(eta % 60):02d}s" if math.isfinite(eta) else "?"
            print(f"embedding: {self.done}/{self.total} files ({100 * self.done / max(self.total, 1):.0f}%), "
                  f"{rate:.2f} files/s, ETA {eta_text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _chunks(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _embed_sources(hub, modality: str, sources: List[Source], batch_size: int, tsv_column: Optional[str], commit):
    """Embed ``sources`` in batches; ``commit(entries)`` after each batch (a TSV is one batch).

    Every modality but text hands its file paths to its registry processor; texts are read here
    (a .txt is one text, each row of a .tsv another)."""
    if modality != "text":
        for chunk in _chunks(sources, batch_size):
            vectors, good, failed = embed(hub, modality, [s.path for s in chunk])
            commit([(chunk[i], "ok", None, [(None, None, vectors[j])]) for j, i in enumerate(good)]
                   + [(chunk[i], "failed", reason, []) for i, reason in failed])
        return
    plain = [s for s in sources if not s.path.lower().endswith(TSV_EXTENSION)]
    for chunk in _chunks(plain, batch_size):
        entries, texts, owners = [], [], []
        for source in chunk:
            try:
                texts.append(read_text_file(source.path))
                owners.append(source)
            except (OSError, ValueError) as exc:
                entries.append((source, "failed", f"{type(exc).__name__}: {exc}", []))
        if texts:
            vectors, good, failed = embed(hub, "text", texts)
            entries += [(owners[i], "ok", None, [(None, texts[i][:TEXT_KEPT], vectors[j])]) for j, i in enumerate(good)]
            entries += [(owners[i], "failed", reason, []) for i, reason in failed]
        commit(entries)
    for source in (s for s in sources if s.path.lower().endswith(TSV_EXTENSION)):
        try:
            rows = read_tsv_texts(source.path, tsv_column)
        except (OSError, ValueError) as exc:
            commit([(source, "failed", f"{type(exc).__name__}: {exc}", [])])
            continue
        kept, bad = [], []
        for chunk in _chunks(rows, batch_size):
            vectors, good, failed = embed(hub, "text", [text for _, text in chunk])
            kept += [(chunk[i][0], chunk[i][1][:TEXT_KEPT], vectors[j]) for j, i in enumerate(good)]
            bad += [f"line {chunk[i][0]}: {reason}" for i, reason in failed]
        for reason in bad:
            logger.warning("%s, %s", source.path, reason)
        reason = f"{len(bad)} of {len(rows)} rows failed (first: {bad[0]})" if bad else None
        commit([(source, "ok" if kept else "failed", reason, kept)])


def _identity(store: IndexStore, args) -> Dict:
    """The checkpoint to embed with: the recorded one, or ``--checkpoint`` (refused unless the same)."""
    recorded = store.get("model")
    if args.checkpoint is None:
        if recorded is None:
            raise ValueError(f"{store.dir} is a new index: --checkpoint is required")
        if not os.path.isfile(recorded["checkpoint"]):
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


def run_index(args) -> Summary:
    store = IndexStore(args.index, create=True)
    summary = Summary(index=store.dir)
    start = time.perf_counter()
    identity = _identity(store, args)
    roots = _roots(store, args)
    known = store.files()
    options = _scan_options(store, args, known)
    summary.options = dict(options)
    wanted = options["modality"]
    sources, summary.missing_roots = scan(roots, wanted)
    for root in summary.missing_roots:
        logger.warning("root %s does not exist (unmounted?): its files are kept; --forget-root drops them", root)
    store.set_roots(roots)
    summary.found = dict(Counter(s.modality for s in sources))
    seen = {s.path for s in sources}
    present = [r for r in roots if r not in summary.missing_roots]
    # Removed: no longer under any root (--forget-root), or gone from a root that exists; files of a
    # modality outside --modality are kept (as they were) while they exist.
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
        _embed_all(store, identity, todo, args, summary)
    processed = summary.embedded + len(summary.failed)
    summary.files_per_s = processed / summary.embed_seconds if summary.embed_seconds > 0 else 0.0
    _finish_faiss(store, args, summary)
    if not summary.interrupted:
        summary.degenerate = collapsed_modalities(store)
        for found in summary.degenerate:
            logger.warning("%s", found["message"])
    summary.seconds = time.perf_counter() - start
    return summary


def _embed_all(store: IndexStore, identity: Dict, todo: List[Source], args, summary: Summary) -> None:
    recorded = store.get("model") or {}
    has = checkpoint_modalities(identity["checkpoint"])
    needed = sorted({s.modality for s in todo})
    branches = branches_for(has, sorted(set(needed) | set(recorded.get("modalities", ()))))
    start = time.perf_counter()
    # The BPE directory is recorded: later runs and queries tokenise with the same files (a fallback to
    # $ONE_PEACE_BPE_DIR for a recorded folder that lost its files is used, not recorded).
    bpe_dir = bpe_dir_for(args.bpe_dir, recorded.get("bpe_dir"), store.dir)
    hub = load_hub(identity["checkpoint"], identity["model_type"], identity["dtype"], args.device, bpe_dir, branches)
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
        for source, status, reason, vectors in entries:
            if status == "ok":
                summary.embedded += 1
                summary.vectors += len(vectors)
            else:
                logger.warning("cannot index %s: %s", source.path, reason)
                summary.failed.append({"path": source.path, "modality": source.modality, "reason": reason})
        progress.update(len(entries))

    try:
        for modality in sorted(needed):
            group = [s for s in todo if s.modality == modality]
            if modality not in built:
                commit([(s, "failed", f"the checkpoint has no {modality} branch", []) for s in group])
                continue
            _embed_sources(hub, modality, group, args.batch_size, summary.options["tsv_column"], commit)
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


def build_parser() -> argparse.ArgumentParser:
    # the registry's modalities and extensions (``Modality.extensions``), read when the parser is built
    exts = "; ".join(f"{m}: {' '.join(e)}" for m, e in extensions().items())
    parser = argparse.ArgumentParser(prog="one-peace-index", description=__doc__.split("\n\n")[0],
                                     epilog=f"Extensions: {exts}. A .tsv is a table of texts (a 'text' or "
                                            "'caption' column, header row required).")
    parser.add_argument("index", help="index directory (created if absent)")
    parser.add_argument("roots", nargs="*", help="folders or files to index (added to the index's recorded ones)")
    parser.add_argument("--checkpoint", help="checkpoint to embed with (required for a new index; any other "
                                             "checkpoint than the one that built the index is refused)")
    parser.add_argument("--model-type", choices=["one_peace_retrieval", "one_peace_pretrain"], default=None,
                        help="default one_peace_retrieval")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="default float32")
    parser.add_argument("--batch-size", type=int, default=16, help="files embedded together (default 16)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cpu)")
    parser.add_argument("--bpe-dir", default=None, help="BPE files (default: the checkpoint's, $ONE_PEACE_BPE_DIR, "
                                                        "the cache)")
    parser.add_argument("--modality", help=f"only these modalities, comma-separated ({','.join(extensions())}); "
                                           "remembered by the index until changed ('all': every one)")
    parser.add_argument("--tsv-column", help="text column of .tsv files (default: text, else caption); remembered "
                                             "by the index until changed ('' for the default)")
    parser.add_argument("--forget-root", action="append", help="drop a recorded root and its files (repeatable)")
    parser.add_argument("--retry-failed", action="store_true", help="retry files that failed, even unchanged")
    parser.add_argument("--index-type", choices=vector_index.INDEX_TYPES, default=None,
                        help="faiss index per modality (default auto: flat below --approx-threshold vectors)")
    parser.add_argument("--approx-threshold", type=int, default=None,
                        help=f"vectors from which auto uses --approx-type (default "
                             f"{vector_index.DEFAULT_APPROX_THRESHOLD}, measured: docs/BENCHMARKS.md)")
    parser.add_argument("--approx-type", choices=["hnsw", "ivf"], default=None, help="default ivf")
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default 2 sqrt(N))")
    parser.add_argument("--nprobe", type=int, default=None, help="IVF lists searched per query (default 32)")
    parser.add_argument("--ef-search", type=int, default=None, help="HNSW search breadth (default 64)")
    parser.add_argument("--progress", choices=["auto", "bar", "lines", "none"], default="auto",
                        help="auto: a bar on a terminal, else a line every 10 s")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--stats", action="store_true", help="describe the index (roots, remembered options, "
                                                             "counts, failures, checkpoint) and exit; no model")
    action.add_argument("--list", action="store_true", help="list the indexed files (--modality to filter) and exit")
    action.add_argument("--clear-failures", action="store_true",
                        help="forget the files that failed (the next run tries them again) and exit")
    return parser


def check_arguments(args) -> None:
    """Numbers that cannot work, refused before anything is read or created."""
    at_least("--batch-size", args.batch_size)
    at_least("--approx-threshold", args.approx_threshold, 0)
    for option in ("nlist", "nprobe", "ef_search"):
        at_least(f"--{option.replace('_', '-')}", getattr(args, option))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("one_peace.search").setLevel(logging.INFO)
    try:
        check_arguments(args)
        if args.stats or args.list or args.clear_failures:
            return run_admin(args)
        check_index_arguments(args.index, args.roots, args.checkpoint)
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
