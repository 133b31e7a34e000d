"""ESC-50 release -> TSVs + label map for ONE-PEACE.

    python run_scripts/esc50/convert_esc50.py --esc50-root ESC-50-master --out-dir /data/esc50 [--resample]

Reads ``meta/esc50.csv`` (filename, fold, target, category, ...) and writes into ``--out-dir``:

* ``esc50.tsv`` (zero-shot): uniq_id = class id (target), audio, text = label, duration
* ``esc50_label.json``: {class id: [label]} ("chirping_birds" -> "chirping birds")
* ``esc50_fold{k}_{train,test}.tsv`` (supervised, k = 1..5): text = class id

The clips are 44.1 kHz; the datasets resample on load, or ``--resample`` writes 16 kHz
copies under ``out-dir/audio16k`` once (faster training).
"""
import argparse
import csv
import json
import os
import sys

HEADER = ["uniq_id", "audio", "text", "duration"]


def write_tsv(path, rows, header=HEADER):
    # Plain tab-joined lines: the TSV reader does no CSV unquoting.
    with open(path, "w", encoding="utf-8") as fh:
        for row in [header] + list(rows):
            fh.write("\t".join(str(v).replace("\t", " ").replace("\n", " ") for v in row) + "\n")


def resample_to(src, dst):
    import soundfile as sf

    from one_peace.data_utils.audio import load_audio

    sf.write(dst, load_audio(src, target_sr=16000), 16000)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--esc50-root", required=True, help="folder holding meta/esc50.csv and audio/")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--resample", action="store_true", help="write 16 kHz copies under out-dir/audio16k")
    args = parser.parse_args(argv)
    meta = os.path.join(args.esc50_root, "meta", "esc50.csv")
    if not os.path.isfile(meta):
        sys.exit(f"error: {meta} not found (expected the ESC-50 repository layout)")
    os.makedirs(args.out_dir, exist_ok=True)
    with open(meta, encoding="utf-8", newline="") as fh:
        records = list(csv.DictReader(fh))
    labels, rows = {}, []
    for rec in records:
        audio = os.path.abspath(os.path.join(args.esc50_root, "audio", rec["filename"]))
        if args.resample:
            os.makedirs(os.path.join(args.out_dir, "audio16k"), exist_ok=True)
            target = os.path.join(args.out_dir, "audio16k", rec["filename"])
            if not os.path.isfile(target):
                resample_to(audio, target)
            audio = os.path.join("audio16k", rec["filename"])  # relative to the TSV's directory
        label = rec["category"].replace("_", " ")
        labels[int(rec["target"])] = label
        rows.append((int(rec["fold"]), int(rec["target"]), audio, label))
    write_tsv(os.path.join(args.out_dir, "esc50.tsv"), [(t, a, lab, 5.0) for _, t, a, lab in rows])
    with open(os.path.join(args.out_dir, "esc50_label.json"), "w", encoding="utf-8") as fh:
        json.dump({str(k): [labels[k]] for k in sorted(labels)}, fh, indent=1)
    for fold in range(1, 6):
        for split, held_out in (("train", False), ("test", True)):
            write_tsv(os.path.join(args.out_dir, f"esc50_fold{fold}_{split}.tsv"),
                      [(f"{t}_{i}", a, t, 5.0) for i, (f, t, a, _) in enumerate(rows) if (f == fold) == held_out])
    print(f"{len(rows)} clips, {len(labels)} classes -> {args.out_dir}")


if __name__ == "__main__":
    main()
