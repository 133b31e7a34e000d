"""A TSV of the official layouts -> WebDataset tar shards in img2dataset's layout (``docs/DATA.md``).

    python -m one_peace.data_utils.tsv_to_shards image_text_train.tsv shards/ [--samples-per-shard 1000]

Each row becomes one sample: ``KEY.<ext>`` (the media file's bytes as stored, under its own lower-cased
suffix: ``.jpg``, ``.png``, ``.flac``, ``.wav``, ``.ogg``, ``.mp4`` ...), ``KEY.txt`` (the caption or text
column) and ``KEY.json`` (every field of the row).  Keys are img2dataset's: the shard number then the
sample's place in it (``000010042``).  Shards are ``OUT/00000.tar, 00001.tar, ...`` of
``--samples-per-shard`` samples (the last holds the rest), written under a temporary name and renamed
when complete, plus ``OUT/sizes.json`` (``{"00000.tar": 1000, ...}``), which the training loader reads.

The layout is found from the header: an ``image`` column (stage 1, ``image_id, image, caption``), an
``audio`` one (stage 2, ``uniq_id, audio, text, duration``) or a ``video`` one (``uniq_id, video, text``);
``--media-column`` / ``--text-column`` choose others.  Media paths resolve as the tasks resolve them
(``--data-root``, else the TSV's folder).  Rows whose media file is missing, empty or a folder, or whose
fields do not match the header, are reported as the training datasets report bad rows (``FILE, row N:
reason``), left out and counted in the summary.  The last line names the shard pattern for ``task.data``.
"""
import argparse
import glob
import json
import os
import sys
from typing import List, Optional

import numpy as np
from webdataset import TarWriter

from .dataset import BadSampleError
from .image import check_media_file
from .shards import SIZES_FILE
from .tsv import TSVReader, TSVRowError

MEDIA_COLUMNS = ("image", "audio", "video")
TEXT_COLUMNS = ("caption", "text")


def pick_column(header: List[str], chosen: Optional[str], candidates, what: str, path: str) -> str:
    if chosen is not None:
        if chosen not in header:
            raise ValueError(f"{path}: no column {chosen!r} (--{what}-column); columns: {', '.join(header)}")
        return chosen
    found = [c for c in candidates if c in header]
    if len(found) != 1:
        reason = "none" if not found else "several: " + ", ".join(found)
        raise ValueError(f"{path}: which column holds the {what}? Looked for {', '.join(candidates)}, found "
                         f"{reason}; name it with --{what}-column (columns: {', '.join(header)})")
    return found[0]


def shard_pattern(out_dir: str, count: int) -> str:
    """The brace pattern of ``count`` shards written to ``out_dir`` (``task.data``)."""
    last = f"{count - 1:05d}"
    return os.path.join(out_dir, "00000.tar" if count == 1 else f"{{00000..{last}}}.tar")


def convert(tsv: str, out_dir: str, samples_per_shard: int = 1000, data_root: Optional[str] = None,
            media_column: Optional[str] = None, text_column: Optional[str] = None,
            shuffle_seed: Optional[int] = None) -> dict:
    """Write the shards and ``sizes.json``; returns ``{"pattern", "shards", "samples", "skipped", "sizes"}``."""
    if samples_per_shard < 1:
        raise ValueError(f"--samples-per-shard must be >= 1, got {samples_per_shard}")
    reader = TSVReader(tsv, data_root=data_root)
    media = pick_column(reader.header, media_column, MEDIA_COLUMNS, "media", tsv)
    text = pick_column(reader.header, text_column, TEXT_COLUMNS, "text", tsv)
    os.makedirs(out_dir, exist_ok=True)
    if glob.glob(os.path.join(out_dir, "*.tar")) or os.path.exists(os.path.join(out_dir, SIZES_FILE)):
        raise ValueError(f"{out_dir} already holds shards: write into an empty folder")
    order = np.arange(len(reader))
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(reader))
    sample_digits = len(str(samples_per_shard - 1))
    mtime = os.path.getmtime(tsv)  # fixed member times: the same TSV gives the same bytes
    sizes, skipped, writer, name, tmp = {}, 0, None, None, None

    def finish():
        writer.close()
        os.replace(tmp, tmp[: -len(".partial")])

    for index in order:
        index = int(index)
        try:
            row = reader[index]
            path = reader.resolve(row[media])
            check_media_file(path, media)
            with open(path, "rb") as fh:
                data = fh.read()
        except TSVRowError as err:
            skipped += _report(BadSampleError(err.path, err.row, err.reason))
            continue
        except (FileNotFoundError, ValueError, OSError) as err:
            skipped += _report(BadSampleError(tsv, reader.line_number(index), str(err)))
            continue
        ext = os.path.splitext(path)[1].lower().lstrip(".")
        if not ext:
            skipped += _report(BadSampleError(tsv, reader.line_number(index),
                                              f"{media} file {path} has no suffix to name its member by"))
            continue
        if name is None or sizes[name] == samples_per_shard:
            if writer is not None:
                finish()
            name = f"{len(sizes):05d}.tar"
            tmp = os.path.join(out_dir, name + ".partial")
            writer, sizes[name] = TarWriter(tmp, mtime=mtime), 0
        key = f"{len(sizes) - 1:05d}{sizes[name]:0{sample_digits}d}"
        writer.write({"__key__": key, ext: data, "txt": row[text], "json": json.dumps(row, ensure_ascii=False)})
        sizes[name] += 1
    if writer is None:
        raise ValueError(f"{tsv}: no row could be converted ({skipped} bad rows, listed above)")
    finish()
    with open(os.path.join(out_dir, SIZES_FILE), "w", encoding="utf-8") as fh:
        json.dump(sizes, fh, indent=1)
    return {"pattern": shard_pattern(out_dir, len(sizes)), "shards": len(sizes), "samples": sum(sizes.values()),
            "skipped": skipped, "sizes": sizes}


def _report(bad: BadSampleError) -> int:
    print(f"tsv_to_shards: skipping bad row ({bad})", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tsv_to_shards", description=__doc__.split("\n")[0])
    parser.add_argument("tsv", help="a headed TSV of the official layouts")
    parser.add_argument("out_dir", help="folder for the shards and sizes.json (empty or new)")
    parser.add_argument("--samples-per-shard", type=int, default=1000, help="samples per tar (default 1000)")
    parser.add_argument("--data-root", help="folder relative media paths are under (default: the TSV's)")
    parser.add_argument("--media-column", help="column of the media paths (default: image, audio or video)")
    parser.add_argument("--text-column", help="column of the texts (default: caption or text)")
    parser.add_argument("--shuffle-seed", type=int, help="write the rows in an order drawn from this seed "
                                                         "(default: the TSV's order)")
    args = parser.parse_args(argv)
    try:
        out = convert(args.tsv, args.out_dir, args.samples_per_shard, args.data_root, args.media_column,
                      args.text_column, args.shuffle_seed)
    except (ValueError, FileNotFoundError) as exc:
        print(f"tsv_to_shards: error: {exc}", file=sys.stderr)
        return 2
    print(f"tsv_to_shards: {out['samples']} samples in {out['shards']} shards, {out['skipped']} bad rows "
          f"skipped; task.data={out['pattern']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
