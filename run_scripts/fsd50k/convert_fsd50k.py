"""FSD50K release -> TSVs with class ids + vocabulary for ONE-PEACE.

    python run_scripts/fsd50k/convert_fsd50k.py --fsd50k-root /data/FSD50K --out-dir /data/fsd50k

Reads ``FSD50K.ground_truth/{dev,eval,vocabulary}.csv`` and the clips in
``FSD50K.{dev,eval}_audio/`` and writes into ``--out-dir``:

* ``fsd50k_dev.tsv`` (train + val, what the official recipe trains on), ``fsd50k_train.tsv``,
  ``fsd50k_val.tsv``, ``fsd50k_eval.tsv``: uniq_id, audio, text = comma-separated class
  ids (0..199), duration
* ``fsd50k_vocabulary.json``: {class id: label}

Clips missing on disk are skipped and counted.  The clips are 44.1 kHz; the datasets
resample on load.
"""
import argparse
import csv
import json
import os
import sys

HEADER = ["uniq_id", "audio", "text", "duration"]


def read_vocabulary(path):
    with open(path, encoding="utf-8", newline="") as fh:
        return {row[1]: int(row[0]) for row in csv.reader(fh) if row}  # index, label, mid (no header)


def convert(csv_path, audio_dir, vocab, with_duration):
    import soundfile as sf

    rows, missing = {}, 0
    with open(csv_path, encoding="utf-8", newline="") as fh:
        for rec in csv.DictReader(fh):
            audio = os.path.abspath(os.path.join(audio_dir, f"{rec['fname']}.wav"))
            if not os.path.isfile(audio):
                missing += 1
                continue
            try:
                ids = sorted({vocab[name] for name in rec["labels"].split(",")})
            except KeyError as err:
                sys.exit(f"error: {csv_path}: label {err} of clip {rec['fname']} is not in the vocabulary")
            duration = round(sf.info(audio).duration, 3) if with_duration else 0
            row = (rec["fname"], audio, ",".join(map(str, ids)), duration)
            rows.setdefault(rec.get("split", "eval"), []).append(row)
    return rows, missing


def write_tsv(path, rows, header=HEADER):
    # Plain tab-joined lines: the TSV reader does no CSV unquoting.
    with open(path, "w", encoding="utf-8") as fh:
        for row in [header] + list(rows):
            fh.write("\t".join(str(v).replace("\t", " ").replace("\n", " ") for v in row) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fsd50k-root", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--no-duration", action="store_true", help="write 0 instead of reading every clip's length")
    args = parser.parse_args(argv)
    gt = os.path.join(args.fsd50k_root, "FSD50K.ground_truth")
    vocab_csv = os.path.join(gt, "vocabulary.csv")
    if not os.path.isfile(vocab_csv):
        sys.exit(f"error: {vocab_csv} not found (expected the FSD50K release layout)")
    vocab = read_vocabulary(vocab_csv)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "fsd50k_vocabulary.json"), "w", encoding="utf-8") as fh:
        json.dump({str(i): name for name, i in sorted(vocab.items(), key=lambda kv: kv[1])}, fh, indent=1)
    dev, missing_dev = convert(os.path.join(gt, "dev.csv"), os.path.join(args.fsd50k_root, "FSD50K.dev_audio"),
                               vocab, not args.no_duration)
    evaluation, missing_eval = convert(os.path.join(gt, "eval.csv"),
                                       os.path.join(args.fsd50k_root, "FSD50K.eval_audio"), vocab, not args.no_duration)
    write_tsv(os.path.join(args.out_dir, "fsd50k_train.tsv"), dev.get("train", []))
    write_tsv(os.path.join(args.out_dir, "fsd50k_val.tsv"), dev.get("val", []))
    write_tsv(os.path.join(args.out_dir, "fsd50k_dev.tsv"), dev.get("train", []) + dev.get("val", []))
    write_tsv(os.path.join(args.out_dir, "fsd50k_eval.tsv"), evaluation.get("eval", []))
    print(f"{len(vocab)} classes; dev {sum(map(len, dev.values()))} clips ({missing_dev} missing), "
          f"eval {len(evaluation.get('eval', []))} clips ({missing_eval} missing) -> {args.out_dir}")


if __name__ == "__main__":
    main()
