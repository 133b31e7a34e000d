"""Samples per second of the tar-shard loader against the TSV loader, over the same real media.

Both read the Tux Paint stamps of ``run_scripts/fetch_real_media.sh`` (the stamp PNGs as stored, and the
stamp sounds as Ogg Vorbis) through the pretraining datasets' whole per-sample work (decoding, the
training transform, masks) and their collaters, epochs alternating between the two (the median of
``--repeats``), in a ``DataLoader`` with 0 and 2 worker processes:

* TSV: the dataset over a TSV of the files, batches drawn from a shuffled order (``BaseTask``'s batching);
* shards: the same rows packed by ``tsv_to_shards`` (``--samples-per-shard``), read by fairseq's epoch
  iterator for shards (``tasks/shard_iterator.py``: shuffled shards, a shuffle buffer, one rank).

It also times the conversion, and the undecoded re-reading a resumed epoch does to skip what was consumed.

    .venv/bin/python bench/shards.py [--media DIR] [--samples-per-shard 64] [--workers 0,2]
"""
import argparse
import csv
import datetime
import logging
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("ONE_PEACE_SHARED", os.path.join(HERE, "..", "..", "shared"))
MEDIA = os.path.join(os.environ.get("ONE_PEACE_REAL_MEDIA", os.path.expanduser("~/.cache/one_peace/real_media")),
                     "tuxpaint")


def write_tsvs(media: str, out: str):
    """image_text.tsv (every stamp picture) and audio_text.tsv (every stamp sound), absolute paths."""
    with open(os.path.join(media, "stamps.tsv"), encoding="utf-8", newline="") as fh:
        stamps = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    with open(os.path.join(out, "image_text.tsv"), "w", encoding="utf-8") as fh:
        fh.write("image_id\timage\tcaption\n")
        fh.writelines(f"{i}\t{os.path.join(media, r['image'])}\t{r['caption']}\n" for i, r in enumerate(stamps))
    with open(os.path.join(out, "audio_text.tsv"), "w", encoding="utf-8") as fh:
        fh.write("uniq_id\taudio\ttext\tduration\n")
        fh.writelines(f"{i}\t{os.path.join(media, r['sound'])}\t{r['caption']}\t0\n"
                      for i, r in enumerate(stamps) if r["sound"])
    return sum(1 for _ in stamps), sum(1 for r in stamps if r["sound"])


def datasets(kind: str, reader, tokenizer):
    from one_peace.data_utils.feature_spec import OFFICIAL_FEATURE_ENCODER_SPEC, parse_feature_encoder_spec
    from one_peace.data_utils.pretrain_datasets import AudioTextPretrainDataset, ImageTextPretrainDataset

    if kind == "image":
        return ImageTextPretrainDataset("train", reader, tokenizer, patch_image_size=256, seed=1)
    return AudioTextPretrainDataset("train", reader, tokenizer,
                                    feature_spec=parse_feature_encoder_spec(OFFICIAL_FEATURE_ENCODER_SPEC), seed=1)


def tsv_epoch(kind, tsv, tokenizer, batch_size, workers):
    from one_peace.data_utils.tsv import TSVReader

    ds = datasets(kind, TSVReader(tsv), tokenizer)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1)).tolist()
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, collate_fn=ds.collater, num_workers=workers)
    return count(loader)


def shard_dataset(kind, pattern, tokenizer):
    from one_peace.data_utils.shard_dataset import SampleFields, ShardDataset, ShardRows
    from one_peace.data_utils.shards import ShardList
    from one_peace.models.modalities import get_modality

    columns = ("image_id", "image", "caption") if kind == "image" else ("uniq_id", "audio", "text")
    shards = ShardList.from_spec(pattern)
    extensions = tuple(e.lstrip(".") for e in get_modality(kind).extensions)
    return ShardDataset(datasets(kind, ShardRows(shards, columns), tokenizer), shards,
                        SampleFields(*columns, extensions), seed=1, shuffle_buffer=1000)


def shard_epoch(kind, pattern, tokenizer, batch_size, workers):
    from one_peace.tasks.shard_iterator import ShardEpochBatchIterator

    iterator = ShardEpochBatchIterator(shard_dataset(kind, pattern, tokenizer), batch_size, num_workers=workers)
    return count(iterator.next_epoch_itr())


def count(batches):
    start, rows, skipped = time.perf_counter(), 0, 0
    for batch in batches:
        rows += batch.get("nsentences", 0)
        skipped += batch.get("num_skipped", 0)
    return rows, skipped, time.perf_counter() - start


def skip_rate(kind, pattern, tokenizer):
    """Raw samples per second a resumed worker drops undecoded (one worker, the whole epoch)."""
    from one_peace.data_utils.shard_dataset import LoaderLayout

    ds = shard_dataset(kind, pattern, tokenizer)
    layout = LoaderLayout(batch_size=1)
    ds.configure(1, layout)
    start = time.perf_counter()
    n = sum(1 for _ in ds.raw_samples(ds.shards_of(1, layout)[0][0], 0))
    return n / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media", default=MEDIA, help="the tuxpaint folder of the real-media cache")
    parser.add_argument("--bpe-dir", default=os.path.join(SHARED, "assets", "bpe"))
    parser.add_argument("--samples-per-shard", type=int, default=64)
    parser.add_argument("--workers", default="0,2", help="DataLoader worker counts, comma separated")
    parser.add_argument("--image-batch", type=int, default=16)
    parser.add_argument("--audio-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="epochs per loader (alternating); the median")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.media, "stamps.tsv")):
        parser.error(f"{args.media}/stamps.tsv not found: run  bash run_scripts/fetch_real_media.sh")
    workers = [int(w) for w in args.workers.split(",")]
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # before fairseq's import sets DEBUG
    torch.set_num_threads(1)  # the loaders' own cost, not torch's thread pool
    from one_peace.data_utils.bpe import TextTokenizer
    from one_peace.data_utils.tsv_to_shards import convert

    tokenizer = TextTokenizer(args.bpe_dir)
    print(f"# {datetime.date.today()} {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as work:
        n_images, n_sounds = write_tsvs(args.media, work)
        patterns = {}
        for kind in ("image", "audio"):
            start = time.perf_counter()
            out = convert(os.path.join(work, f"{kind}_text.tsv"), os.path.join(work, kind), args.samples_per_shard)
            patterns[kind] = out["pattern"]
            print(f"converted {out['samples']} {kind} rows into {out['shards']} shards in "
                  f"{time.perf_counter() - start:.2f} s ({out['skipped']} skipped)")
        print(f"\n{n_images} stamp pictures (patch 256), {n_sounds} stamp sounds (Ogg, up to 15 s)\n")
        print("| data | workers | TSV samples/s | shards samples/s | shards / TSV |")
        print("|---|---|---|---|---|")
        for kind, batch in (("image", args.image_batch), ("audio", args.audio_batch)):
            for w in workers:
                runs = {"tsv": [], "shards": []}
                for _ in range(args.repeats):  # alternating, so both see the same load
                    runs["tsv"].append(tsv_epoch(kind, os.path.join(work, f"{kind}_text.tsv"), tokenizer, batch, w))
                    runs["shards"].append(shard_epoch(kind, patterns[kind], tokenizer, batch, w))
                (rows_t, bad_t, _), (rows_s, bad_s, _) = runs["tsv"][0], runs["shards"][0]
                if (rows_t, bad_t) != (rows_s, bad_s):
                    sys.exit(f"bench/shards.py: the loaders disagree: TSV {rows_t} rows ({bad_t} bad), "
                             f"shards {rows_s} ({bad_s} bad)")
                secs_t, secs_s = (statistics.median(r[2] for r in runs[k]) for k in ("tsv", "shards"))
                print(f"| {kind}-text, batch {batch} | {w} | {rows_t / secs_t:.1f} | {rows_s / secs_s:.1f} | "
                      f"{secs_t / secs_s:.2f} |", flush=True)
        print()
        for kind in ("image", "audio"):
            print(f"resume skip ({kind}): {skip_rate(kind, patterns[kind], tokenizer):.0f} samples/s read undecoded")


if __name__ == "__main__":
    main()
