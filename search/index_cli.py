"""The command line of ``one-peace-index`` (``indexer.py`` runs it): its options, and the checks of their
values made before anything is read or created."""
import argparse
import math

from . import vector_index
from .cli_checks import at_least
from .embed_sources import DEFAULT_MAX_DURATION, DEFAULT_SEGMENT_SECONDS
from .media_info import DEFAULT_MAX_PIXELS
from .scan import extensions

DESCRIPTION = "one-peace-index: embed every image, audio clip, video and text under some folders."


def build_parser() -> argparse.ArgumentParser:
    # the registry's modalities and extensions (``Modality.extensions``), read when the parser is built
    exts = "; ".join(f"{m}: {' '.join(e)}" for m, e in extensions().items())
    parser = argparse.ArgumentParser(prog="one-peace-index", description=DESCRIPTION,
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
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                        help="onnx: texts and sounds through onnxruntime (float32 on the CPU, faster than torch "
                             "there; graphs exported into INDEX_DIR/onnx on first use)")
    parser.add_argument("--bpe-dir", default=None, help="BPE files (default: the checkpoint's, $ONE_PEACE_BPE_DIR, "
                                                        "the cache)")
    parser.add_argument("--modality", help=f"only these modalities, comma-separated ({','.join(extensions())}); "
                                           "remembered by the index until changed ('all': every one)")
    parser.add_argument("--tsv-column", help="text column of .tsv files (default: text, else caption); remembered "
                                             "by the index until changed ('' for the default)")
    parser.add_argument("--forget-root", action="append", help="drop a recorded root and its files (repeatable)")
    parser.add_argument("--exclude", action="append", metavar="PATTERN",
                        help="skip files and folders whose path under its folder, or whose name, matches this "
                             "fnmatch pattern ('*.tmp', 'raw', 'trips/2019/*'; repeatable); remembered by the index "
                             "until given again ('' for none); an excluded file already indexed is removed")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help=f"refuse pictures and video frames of more pixels, read from the header before "
                             f"decoding (default {DEFAULT_MAX_PIXELS}, PIL's own limit); remembered")
    parser.add_argument("--max-duration", type=float, default=None,
                        help=f"seconds of a sound or video decoded and embedded; the rest of a longer file is left "
                             f"out (default {DEFAULT_MAX_DURATION:g}); remembered")
    parser.add_argument("--segment-seconds", type=float, default=None,
                        help=f"a sound or video longer than this gets one vector per window of this length, with "
                             f"its time span (default {DEFAULT_SEGMENT_SECONDS:g}; audio windows are at most the "
                             f"checkpoint's max_duration); remembered")
    parser.add_argument("--retry-failed", action="store_true", help="retry files that failed, even unchanged")
    parser.add_argument("--index-type", choices=vector_index.INDEX_TYPES, default=None,
                        help="faiss index per modality (default auto: flat below --approx-threshold vectors)")
    parser.add_argument("--approx-threshold", type=int, default=None,
                        help=f"vectors from which auto uses --approx-type (default "
                             f"{vector_index.DEFAULT_APPROX_THRESHOLD}, measured: docs/BENCHMARKS.md)")
    parser.add_argument("--approx-type", choices=vector_index.APPROX_TYPES, default=None,
                        help=f"default {vector_index.IndexOptions.approx_type} (IVF over 8-bit codes, candidates "
                             "re-ranked exactly; docs/SEARCH.md)")
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default 2 sqrt(N))")
    parser.add_argument("--nprobe", type=int, default=None, help=f"IVF lists searched per query (default "
                                                                 f"{vector_index.IndexOptions.nprobe})")
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
    for option in ("nlist", "nprobe", "ef_search", "max_pixels"):
        at_least(f"--{option.replace('_', '-')}", getattr(args, option))
    for option, low in (("max_duration", 0.0), ("segment_seconds", 1.0)):
        value = getattr(args, option)
        if value is not None and not (math.isfinite(value) and value > 0 and value >= low):
            need = f"of at least {low:g}" if low else "above 0"
            raise ValueError(f"--{option.replace('_', '-')} must be a number of seconds {need}, got {value:g}")
