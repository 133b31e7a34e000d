"""AudioCaps / Clotho caption CSVs -> ONE-PEACE retrieval TSVs and caption JSONs.

    # one split: clips TSV (evaluation), caption JSON, pairs TSV (training)
    python run_scripts/audio_text_retrieval/convert_captions.py audiocaps --csv test.csv \
        --audio-dir /data/audiocaps/test --name audiocaps_test --out-dir /data/audio_text
    python run_scripts/audio_text_retrieval/convert_captions.py clotho --csv clotho_captions_evaluation.csv \
        --audio-dir /data/clotho/evaluation --name clotho_evaluation --out-dir /data/audio_text
    # training set: merge pairs TSVs (the official recipe merges Clotho, AudioCaps and MACS)
    python run_scripts/audio_text_retrieval/convert_captions.py merge --out /data/audio_text/train.tsv \
        /data/audio_text/audiocaps_train_pairs.tsv /data/audio_text/clotho_development_pairs.tsv

Per split ``NAME``: ``NAME.tsv`` (one row per clip: uniq_id, audio, first caption,
duration), ``NAME_texts.json`` ({uniq_id: [captions]}, the task's ``valid_file``) and
``NAME_pairs.tsv`` (one row per caption, for training).  Evaluate on the one-row-per-clip
TSV: duplicated clips would distort text->audio ranks.

AudioCaps CSV columns: audiocap_id, youtube_id, start_time, caption; clips are grouped by
youtube id and found as ``--audio-dir/{youtube_id}.wav`` (``--audio-name`` also knows
{audiocap_id} and {start_time}).  Clotho CSV columns: file_name, caption_1..caption_5.
Clips missing on disk are skipped and counted.
"""
import argparse
import csv
import json
import os
import sys

HEADER = ["uniq_id", "audio", "text", "duration"]


def read_audiocaps(path, audio_dir, audio_name):
    clips = {}
    with open(path, encoding="utf-8", newline="") as fh:
        for rec in csv.DictReader(fh):
            audio = os.path.join(audio_dir, audio_name.format(**rec))
            clips.setdefault(rec["youtube_id"], (audio, []))[1].append(rec["caption"].strip())
    return clips


def read_clotho(path, audio_dir):
    clips = {}
    with open(path, encoding="utf-8", newline="") as fh:
        for rec in csv.DictReader(fh):
            captions = [rec[k].strip() for k in sorted(rec) if k.startswith("caption") and rec[k].strip()]
            clips[os.path.splitext(rec["file_name"])[0]] = (os.path.join(audio_dir, rec["file_name"]), captions)
    return clips


def write_tsv(path, rows, header=HEADER):
    # Plain tab-joined lines: the TSV reader does no CSV unquoting.
    with open(path, "w", encoding="utf-8") as fh:
        for row in [header] + list(rows):
            fh.write("\t".join(str(v).replace("\t", " ").replace("\n", " ") for v in row) + "\n")


def clean(text):
    return " ".join(text.replace("\t", " ").split())


def write_split(clips, out_dir, name):
    import soundfile as sf

    found = {uid: v for uid, v in clips.items() if os.path.isfile(v[0]) and v[1]}
    duration = {uid: round(sf.info(v[0]).duration, 3) for uid, v in found.items()}
    os.makedirs(out_dir, exist_ok=True)
    write_tsv(os.path.join(out_dir, f"{name}.tsv"),
              [(uid, os.path.abspath(a), clean(caps[0]), duration[uid]) for uid, (a, caps) in found.items()])
    write_tsv(os.path.join(out_dir, f"{name}_pairs.tsv"),
              [(uid, os.path.abspath(a), clean(c), duration[uid]) for uid, (a, caps) in found.items() for c in caps])
    with open(os.path.join(out_dir, f"{name}_texts.json"), "w", encoding="utf-8") as fh:
        json.dump({uid: [clean(c) for c in caps] for uid, (_, caps) in found.items()}, fh, indent=1)
    print(f"{name}: {len(found)} clips, {sum(len(v[1]) for v in found.values())} captions "
          f"({len(clips) - len(found)} clips missing) -> {out_dir}")


def merge(out, inputs):
    with open(out, "w", encoding="utf-8") as dst:
        dst.write("\t".join(HEADER) + "\n")
        for path in inputs:
            with open(path, encoding="utf-8") as src:
                header = src.readline().rstrip("\n").split("\t")
                if header != HEADER:
                    sys.exit(f"error: {path} has columns {header}, expected {HEADER}")
                dst.writelines(src)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for kind in ("audiocaps", "clotho"):
        p = sub.add_parser(kind)
        p.add_argument("--csv", required=True)
        p.add_argument("--audio-dir", required=True)
        p.add_argument("--name", required=True, help="output prefix, e.g. audiocaps_test")
        p.add_argument("--out-dir", required=True)
        if kind == "audiocaps":
            p.add_argument("--audio-name", default="{youtube_id}.wav")
    p = sub.add_parser("merge")
    p.add_argument("--out", required=True)
    p.add_argument("inputs", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "merge":
        merge(args.out, args.inputs)
    elif args.command == "audiocaps":
        write_split(read_audiocaps(args.csv, args.audio_dir, args.audio_name), args.out_dir, args.name)
    else:
        write_split(read_clotho(args.csv, args.audio_dir), args.out_dir, args.name)


if __name__ == "__main__":
    main()
