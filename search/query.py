"""``one-peace-search``: nearest neighbours of texts and files in an index, per modality; near-duplicates.

    one-peace-search INDEX_DIR --text "a dog barking"                 # every modality in the index
    one-peace-search INDEX_DIR --file dog.flac --modality image -k 3  # sound -> images
    one-peace-search INDEX_DIR --text "2:a dog" --file bark.wav --minus "text:indoors"   # compound
    one-peace-search INDEX_DIR --text beach --folder ~/Photos/2023 --since 2023-06-01 --offset 10
    one-peace-search INDEX_DIR --duplicates --modality image --json

The query is embedded with the checkpoint that built the index (its recorded path; ``--checkpoint``
names it if moved, and any other file is refused).  Every modality (text, images, audio, video and
any registered one the checkpoint has a branch for) shares one space, so any query modality reaches
any indexed modality.  Several terms combine into one vector (``compound.py``); filters run in
SQLite (``filters.py``), ranking and pages in faiss (``ranking.py``).
"""
import argparse
import json
import sys
from typing import Dict, List

from ..models.modalities import modality_names
from . import vector_index
from .cli_checks import at_least
from .compound import TermEmbedder, parse_cli_terms, query_line
from .duplicates import DEFAULT_THRESHOLD, find_duplicates, format_groups
from .filters import make_filters, parse_min_score
from .scan import check_modalities
from .searcher import SearchIndex


def parse_modalities(value) -> List[str]:
    """``--modality`` / the API's ``modalities``: [] for all, else registered names (``models/modalities.py``)."""
    if not value or value == "all":
        return []
    return check_modalities(m.strip() for m in value.split(",") if m.strip())


def search_options(store_options: vector_index.IndexOptions, nprobe=None, ef_search=None):
    if nprobe is not None:
        store_options.nprobe = nprobe
    if ef_search is not None:
        store_options.ef_search = ef_search
    return store_options


def display_name(hit: Dict) -> str:
    name = f"{hit['path']}:{hit['row']}" if hit.get("row") is not None else hit["path"]
    if hit.get("start_s") is not None:  # a segment of a long file
        name += f" @{clock(hit['start_s'])}-{clock(hit['end_s'])}"
    return name


def clock(seconds) -> str:
    seconds = int(round(seconds or 0))
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}:" if hours else "") + f"{rest // 60:{'02d' if hours else 'd'}}:{rest % 60:02d}"


def format_results(query: Dict, results: Dict[str, List[Dict]], pages: Dict[str, Dict] = None,
                   filtered: bool = False) -> str:
    lines = [f"query: {query_line(query)}"]
    for modality, hits in results.items():
        page = (pages or {}).get(modality, {})
        empty = " (no result passes the filters)" if filtered else \
            " (no more results)" if page.get("offset") else " (nothing indexed)"
        lines.append(f"{modality}:" + ("" if hits else empty))
        for hit in hits:
            snippet = f"  {hit['text'][:60]!r}" if hit.get("text") else ""
            lines.append(f"  {hit['rank']:3d}  {hit['score']:+.4f}  {display_name(hit)}{snippet}")
    return "\n".join(lines)


def more_hint(pages: Dict[str, Dict]) -> str:
    """The next page's option when a modality has more results (printed to stderr: stdout is the ranking)."""
    more = [m for m, page in pages.items() if page.get("has_more")]
    if not more:
        return ""
    page = pages[more[0]]
    return f"one-peace-search: more results ({', '.join(more)}): --offset {page['offset'] + page['limit']}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="one-peace-search", description=__doc__.split("\n\n")[0],
                                     epilog="Terms: WEIGHT:VALUE weighs a term when WEIGHT is a plain number "
                                            "(--text \"2:a dog\"); the query is the normalised weighted sum of "
                                            "the terms' embeddings, --minus terms subtracted (docs/SEARCH.md).")
    parser.add_argument("index", help="index directory built by one-peace-index")
    terms = parser.add_argument_group("query terms (any number, combined)")
    terms.add_argument("--text", action="append", default=[], help="a query text, [WEIGHT:]TEXT (repeatable)")
    terms.add_argument("--file", action="append", default=[],
                       help=f"a query file ({', '.join(modality_names())}), [WEIGHT:]PATH, its modality told by "
                            "its extension (listed by one-peace-index --help; a .tsv is no query) (repeatable)")
    terms.add_argument("--like", action="append", default=[],
                       help="more like this: the stored vector of a result, [WEIGHT:]ID (its \"id\") (repeatable)")
    terms.add_argument("--minus", action="append", default=[],
                       help="subtract a term: [WEIGHT:]text:TEXT, [WEIGHT:]file:PATH, or a PATH that exists, else "
                            "a TEXT (repeatable)")
    parser.add_argument("--modality", default="all",
                        help=f"modalities to search, comma-separated ({','.join(modality_names())}; default all)")
    parser.add_argument("-k", "--top-k", type=int, default=10, help="results per modality and page (default 10)")
    parser.add_argument("--offset", type=int, default=0, help="results to skip in each modality: the next page")
    filters = parser.add_argument_group("filters (of the files; docs/SEARCH.md, \"Filters\")")
    filters.add_argument("--folder", action="append", default=None, help="only files under this folder (repeatable: any)")
    filters.add_argument("--since", help="taken on or after this date (YYYY-MM-DD or YYYY-MM-DDTHH:MM; local time)")
    filters.add_argument("--until", help="taken on or before this date (a date alone: the whole day)")
    filters.add_argument("--min-size", help="at least this size (bytes, or 500k, 10MB, 2GiB)")
    filters.add_argument("--max-size", help="at most this size")
    filters.add_argument("--min-duration", help="at least this long (seconds, 1.5m, 1:30); files without a "
                                                "duration (images) are left out")
    filters.add_argument("--max-duration", help="at most this long")
    filters.add_argument("--min-score", help="leave out results below this cosine score (-1 .. 1)")
    dups = parser.add_argument_group("near-duplicates (no query)")
    dups.add_argument("--duplicates", action="store_true", help="list groups of near-identical files per modality")
    dups.add_argument("--threshold", type=float, default=None,
                      help=f"cosine from which two files are near-duplicates (default {DEFAULT_THRESHOLD})")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--checkpoint", help="the index's checkpoint at a new location (another one is refused)")
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default cpu)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="query precision (default: the index's)")
    parser.add_argument("--bpe-dir", default=None, help="default: the one recorded in the index")
    parser.add_argument("--nprobe", type=int, default=None, help="IVF lists searched (default: the index's)")
    parser.add_argument("--ef-search", type=int, default=None, help="HNSW search breadth (default: the index's)")
    return parser


FILTER_OPTIONS = {"folder": "--folder", "since": "--since", "until": "--until", "min_size": "--min-size",
                  "max_size": "--max-size", "min_duration": "--min-duration", "max_duration": "--max-duration"}


def run_query(args) -> Dict:
    modalities = parse_modalities(args.modality)
    at_least("-k", args.top_k)
    at_least("--offset", args.offset, 0)
    at_least("--nprobe", args.nprobe)
    at_least("--ef-search", args.ef_search)
    has_terms = args.text or args.file or args.like or args.minus
    if args.duplicates:
        if has_terms:
            raise ValueError("--duplicates takes no query (--text, --file, --like, --minus)")
        if args.min_score is not None or args.offset:
            raise ValueError("--duplicates lists every group: --min-score and --offset go with a query")
        index = SearchIndex(args.index, needs_model=False)
        search_options(index.options, args.nprobe, args.ef_search)
        filters = make_filters(index.store.roots(), names=FILTER_OPTIONS,
                               **{name: getattr(args, name) for name in FILTER_OPTIONS})
        threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
        return dict(find_duplicates(index, modalities, threshold, filters), threshold=threshold)
    if args.threshold is not None:
        raise ValueError("--threshold goes with --duplicates")
    if not has_terms:
        raise ValueError("give a query: --text, --file or --like (or --duplicates)")
    terms = parse_cli_terms(args.text, args.file, args.minus, args.like)  # files checked before the model loads
    min_score = parse_min_score(args.min_score, "--min-score")
    index = SearchIndex(args.index, checkpoint=args.checkpoint, device=args.device, dtype=args.dtype,
                        bpe_dir=args.bpe_dir)
    filters = make_filters(index.store.roots(), names=FILTER_OPTIONS,
                           **{name: getattr(args, name) for name in FILTER_OPTIONS})
    search_options(index.options, args.nprobe, args.ef_search)
    vector, query = TermEmbedder(index).embed(terms)
    results, pages = index.search_pages(vector, modalities, args.top_k, args.offset, filters, min_score)
    out = {"index": index.dir, "query": query, "results": results, "pages": pages}
    if filters.active() or min_score is not None:
        out["filters"] = dict(filters.to_dict(), **({} if min_score is None else {"min_score": min_score}))
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = run_query(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"one-peace-search: error: {exc}", file=sys.stderr)
        return 2
    if args.duplicates:
        threshold = out.pop("threshold")
        print(json.dumps(out, indent=1) if args.json else format_groups(out, threshold))
    else:
        print(json.dumps(out, indent=1) if args.json else
              format_results(out["query"], out["results"], out["pages"], "filters" in out))
        if not args.json and more_hint(out["pages"]):
            print(more_hint(out["pages"]), file=sys.stderr)
    return 0


def cli_main():
    sys.exit(main())


if __name__ == "__main__":
    cli_main()
