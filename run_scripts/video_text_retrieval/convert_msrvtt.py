"""MSR-VTT release files -> the ``video_text_retrieval`` TSVs and caption file.

    python run_scripts/video_text_retrieval/convert_msrvtt.py --data-json MSRVTT_data.json \
        --video-dir MSRVTT/videos/all --out-dir /data/msrvtt [--test-csv MSRVTT_JSFUSION_test.csv] \
        [--train-csv MSRVTT_train.9k.csv]

``MSRVTT_data.json`` lists ``videos: [{video_id, split}]`` and ``sentences: [{video_id, caption}]``;
clips are ``--video-dir/<video_id>.mp4``.  Writes into ``--out-dir``:

* ``msrvtt_train.tsv``: one row per (clip, caption) of the training videos (``--train-csv``: the 9k
  list of the usual "1k-A" protocol; else the json's ``train`` and ``validate`` splits), columns
  ``uniq_id, video, text``;
* ``msrvtt_test.tsv`` and ``msrvtt_test_texts.json`` (``{video_id: [captions]}``): with ``--test-csv``
  (JSFusion's ``key, vid_key, video_id, sentence``) the 1000 clips of 1k-A with their one sentence
  each (the benchmark usually reported); else the json's ``test`` split with all its captions.

Missing clips are reported and skipped (``--allow-missing``) or an error naming them.
"""
import argparse
import csv
import json
import os
import sys

HEADER = ["uniq_id", "video", "text"]


def clean(text: str) -> str:
    return " ".join(str(text).split())  # a TSV cell holds no tab or newline


def read_csv_column(path: str, column: str):
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if column not in (reader.fieldnames or []):
            raise ValueError(f"{path}: no {column!r} column (columns: {reader.fieldnames})")
        return list(reader)


def convert(data_json, video_dir, out_dir, test_csv=None, train_csv=None, allow_missing=False):
    with open(data_json, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or "videos" not in data or "sentences" not in data:
        raise ValueError(f"{data_json}: expected MSR-VTT's {{'videos': [...], 'sentences': [...]}}")
    captions, splits = {}, {}
    for video in data["videos"]:
        splits[video["video_id"]] = video.get("split", "")
    for sentence in data["sentences"]:
        captions.setdefault(sentence["video_id"], []).append(clean(sentence["caption"]))
    if train_csv:
        train_ids = [row["video_id"] for row in read_csv_column(train_csv, "video_id")]
    else:
        train_ids = [v for v, s in splits.items() if s in ("train", "validate")]
    if test_csv:
        test = {}
        for row in read_csv_column(test_csv, "video_id"):
            test.setdefault(row["video_id"], []).append(clean(row["sentence"]))
    else:
        test = {v: captions.get(v, []) for v, s in splits.items() if s == "test"}
    missing = []

    def path_of(video_id):
        path = os.path.join(video_dir, f"{video_id}.mp4")
        if not os.path.isfile(path):
            missing.append(path)
            return None
        return path

    train_rows = [(v, p, c) for v in train_ids if (p := path_of(v)) for c in captions.get(v, [])]
    test_rows = [(v, p, texts[0]) for v, texts in test.items() if texts and (p := path_of(v))]
    if missing and not allow_missing:
        raise FileNotFoundError(f"{len(missing)} clips missing (pass --allow-missing to skip them): {missing[:5]}")
    if not test_rows:
        raise ValueError(f"no test clips found ({data_json}, {test_csv or 'the json test split'})")
    os.makedirs(out_dir, exist_ok=True)
    for name, rows in (("msrvtt_train.tsv", train_rows), ("msrvtt_test.tsv", test_rows)):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8", newline="\n") as f:
            f.write("\t".join(HEADER) + "\n")
            for row in rows:
                f.write("\t".join(row) + "\n")
    kept = {v for v, _, _ in test_rows}
    with open(os.path.join(out_dir, "msrvtt_test_texts.json"), "w", encoding="utf-8") as f:
        json.dump({v: texts for v, texts in test.items() if v in kept}, f, indent=1)
    return {"train": len(train_rows), "test": len(test_rows), "missing": len(missing)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-json", required=True, help="MSRVTT_data.json")
    parser.add_argument("--video-dir", required=True, help="folder of <video_id>.mp4")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--test-csv", default=None, help="MSRVTT_JSFUSION_test.csv (the 1k-A test set)")
    parser.add_argument("--train-csv", default=None, help="MSRVTT_train.9k.csv (the 1k-A training list)")
    parser.add_argument("--allow-missing", action="store_true", help="skip clips that are not in --video-dir")
    args = parser.parse_args(argv)
    counts = convert(args.data_json, os.path.abspath(args.video_dir), args.out_dir, args.test_csv, args.train_csv,
                     args.allow_missing)
    print(f"msrvtt: {counts['train']} training pairs, {counts['test']} test clips, {counts['missing']} clips "
          f"missing -> {args.out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
