"""``one-peace-search``: nearest neighbours of a text or a file in an index, per modality.

    one-peace-search INDEX_DIR --text "a dog barking"                 # every modality in the index
    one-peace-search INDEX_DIR --file dog.flac --modality image -k 3  # sound -> images
    one-peace-search INDEX_DIR --file photo.jpg --json

The query is embedded with the checkpoint that built the index (its recorded path; ``--checkpoint``
names it if moved, and any other file is refused).  Every modality (text, images, audio, video and
any registered one the checkpoint has a branch for) shares one space, so any query modality reaches
any indexed modality.
"""
import argparse
import json
import os
import sys
from typing import Dict, List

from ..models.modalities import modality_names
from . import vector_index
from .cli_checks import at_least
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
    return f"{hit['path']}:{hit['row']}" if hit.get("row") is not None else hit["path"]


def format_results(query: Dict, results: Dict[str, List[Dict]]) -> str:
    what = f"text {query['text']!r}" if "text" in query else f"{query['modality']} file {query['file']}"
    lines = [f"query: {what}"]
    for modality, hits in results.items():
        lines.append(f"{modality}:" + ("" if hits else " (nothing indexed)"))
        for hit in hits:
            snippet = f"  {hit['text'][:60]!r}" if hit.get("text") else ""
            lines.append(f"  {hit['rank']:3d}  {hit['score']:+.4f}  {display_name(hit)}{snippet}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="one-peace-search", description=__doc__.split("\n\n")[0])
    parser.add_argument("index", help="index directory built by one-peace-index")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="query text")
    query.add_argument("--file", help=f"query file ({', '.join(modality_names())}), its modality told by its "
                                      "extension (listed by one-peace-index --help; a .tsv is no query)")
    parser.add_argument("--modality", default="all",
                        help=f"modalities to search, comma-separated ({','.join(modality_names())}; default all)")
    parser.add_argument("-k", "--top-k", type=int, default=10, help="results per modality (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--checkpoint", help="the index's checkpoint at a new location (another one is refused)")
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default cpu)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="query precision (default: the index's)")
    parser.add_argument("--bpe-dir", default=None, help="default: the one recorded in the index")
    parser.add_argument("--nprobe", type=int, default=None, help="IVF lists searched (default: the index's)")
    parser.add_argument("--ef-search", type=int, default=None, help="HNSW search breadth (default: the index's)")
    return parser


def run_query(args) -> Dict:
    modalities = parse_modalities(args.modality)
    at_least("-k", args.top_k)
    at_least("--nprobe", args.nprobe)
    at_least("--ef-search", args.ef_search)
    index = SearchIndex(args.index, checkpoint=args.checkpoint, device=args.device, dtype=args.dtype,
                        bpe_dir=args.bpe_dir)
    search_options(index.options, args.nprobe, args.ef_search)
    if args.text is not None:
        vector, query = index.embed_text(args.text), {"text": args.text}
    else:
        path = os.path.abspath(os.path.expanduser(args.file))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"query file not found: {path}")
        vector, modality = index.embed_file(path)
        query = {"file": path, "modality": modality}
    return {"index": index.dir, "query": query, "results": index.search(vector, modalities, args.top_k)}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = run_query(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"one-peace-search: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=1) if args.json else format_results(out["query"], out["results"]))
    return 0


def cli_main():
    sys.exit(main())


if __name__ == "__main__":
    cli_main()
