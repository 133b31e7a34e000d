"""``one-peace-index INDEX --stats | --list | --clear-failures``: look into an index and tidy it
without a checkpoint (nothing is embedded, no model is loaded).

* ``--stats``: the roots (and whether they exist), the options the index remembers, files and
  vectors per modality, the faiss index of each, every failure with its reason, the checkpoint's
  identity, and any modality whose vectors collapsed (``health.py``);
* ``--list``: every recorded file with its modality, status, vector count and failure reason
  (``--modality`` keeps some modalities);
* ``--clear-failures``: forget the files that failed, so the next run tries them again.
"""
import json
import os
from typing import Dict, List

from .health import collapsed_modalities
from .identity import describe
from .scan import check_modalities
from .store import IndexStore, exclusive

DEFAULT_SCAN_OPTIONS = {"modality": None, "tsv_column": None}


def scan_options(store: IndexStore) -> Dict:
    """What one run's ``--modality`` / ``--tsv-column`` left for the next (None: every modality / the
    default column, ``text`` else ``caption``)."""
    return dict(DEFAULT_SCAN_OPTIONS, **(store.get("scan_options") or {}))


def stats(store: IndexStore) -> Dict:
    model = store.get("model")
    return {
        "index": store.dir,
        "roots": [{"path": r, "exists": os.path.exists(r)} for r in store.roots()],
        "options": {"scan": scan_options(store), "faiss": store.get("index_options"),
                    "media": store.get("media_options")},
        "checkpoint": model,
        "files": store.file_counts(),
        "vectors": store.counts(),
        "faiss": {m: store.get(f"faiss:{m}") for m in store.counts()},
        "failures": [{"path": p, "modality": m, "reason": r} for p, m, r in store.failures()],
        "degenerate": collapsed_modalities(store),
    }


def stats_lines(out: Dict) -> List[str]:
    lines = [f"index: {out['index']}", "roots:"]
    lines += [f"  {r['path']}" + ("" if r["exists"] else "  (missing)") for r in out["roots"]] or ["  none"]
    scan, faiss = out["options"]["scan"], out["options"]["faiss"] or {}
    lines.append(f"options: modality {','.join(scan['modality']) if scan['modality'] else 'all'}; "
                 f"tsv column {scan['tsv_column'] or 'default (text, else caption)'}; "
                 + ", ".join(f"{k} {v}" for k, v in faiss.items() if v is not None))
    media = out["options"].get("media") or {}
    if media:  # the limits and segmenting of one-peace-index (--max-pixels, --max-duration, --exclude ...)
        lines.append("media limits: " + ", ".join(f"{k} {v}" for k, v in media.items()))
    model = out["checkpoint"]
    if model:
        lines.append(f"checkpoint: {describe(model)}")
        lines.append(f"  {model['model_type']}, {model['dtype']}, dim {model['dim']}, branches "
                     f"{', '.join(model['modalities'])}, BPE folder {model.get('bpe_dir') or 'default'}")
    else:
        lines.append("checkpoint: none recorded yet (nothing embedded)")
    lines.append("files and vectors:")
    for modality in sorted(set(out["files"]) | set(out["vectors"])):
        files = out["files"].get(modality, {})
        saved = out["faiss"].get(modality) or {}
        lines.append(f"  {modality}: {files.get('ok', 0)} files indexed, {files.get('failed', 0)} failed, "
                     f"{out['vectors'].get(modality, 0)} vectors ({saved.get('type', 'no faiss index yet')})")
    lines.append(f"failures: {len(out['failures'])}" + (" (--clear-failures retries them)" if out["failures"] else ""))
    lines += [f"  {f['path']}: {f['reason']}" for f in out["failures"]]
    lines += [f"warning: {d['message']}" for d in out["degenerate"]]
    return lines


def listing_lines(rows: List[Dict]) -> List[str]:
    return [f"{r['status']:6s}  {r['modality']:6s}  {r['vectors']:5d}  {r['path']}"
            + (f"  ({r['reason']})" if r["reason"] else "") for r in rows] + [f"{len(rows)} files"]


def run_admin(args) -> int:
    """The ``--stats`` / ``--list`` / ``--clear-failures`` action; prints its answer."""
    if args.roots or args.forget_root:
        flag = "--stats" if args.stats else "--list" if args.list else "--clear-failures"
        raise ValueError(f"{flag} acts on the index alone: give no folders (or --forget-root) with it")
    store = IndexStore(args.index)  # an existing index only: never created here
    if args.stats:
        out = stats(store)
        print(json.dumps(out, indent=1) if args.json else "\n".join(stats_lines(out)))
    elif args.list:
        wanted = check_modalities(m.strip() for m in (args.modality or "").split(",") if m.strip())
        rows = [r for r in store.listing() if not wanted or r["modality"] in wanted]
        print(json.dumps(rows, indent=1) if args.json else "\n".join(listing_lines(rows)))
    else:
        with exclusive(store.dir):  # not while an indexer runs
            cleared = store.clear_failures()
        print(json.dumps({"index": store.dir, "cleared": cleared}) if args.json else
              f"one-peace-index: {store.dir}: forgot {cleared} failed files; the next run tries them again")
    return 0
