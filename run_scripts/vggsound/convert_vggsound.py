"""VGGSound annotation CSV + downloaded clips -> TSVs and label map for ONE-PEACE.

    python run_scripts/vggsound/convert_vggsound.py --csv vggsound.csv --audio-dir /data/vggsound/audio \
        [--frames-dir /data/vggsound/frames] --out-dir /data/vggsound

``vggsound.csv`` (the public release) has no header: youtube id, start second, label,
split (train/test).  Clips are looked up as ``--audio-dir/{ytid}_{start:06d}.wav`` (change
with ``--audio-name``); frames as the sorted images in ``--frames-dir/{ytid}_{start:06d}/``
(``--frames-name``).  Videos that could not be downloaded are skipped and counted.

Writes ``vggsound_{train,test}.tsv`` (uniq_id, audio, text = class id, duration),
``vggsound_av_{train,test}.tsv`` (+ frames, '|'-separated) when ``--frames-dir`` is given,
and ``vggsound_label.json`` ({class id: label}; ids = labels sorted alphabetically over
the whole CSV).  Set ``task.num_classes`` to the number of classes printed.
"""
import argparse
import csv
import glob
import json
import os
import sys

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", required=True)
    parser.add_argument("--audio-dir", required=True)
    parser.add_argument("--audio-name", default="{ytid}_{start:06d}.wav")
    parser.add_argument("--frames-dir", default=None)
    parser.add_argument("--frames-name", default="{ytid}_{start:06d}")
    parser.add_argument("--duration", type=float, default=10.0, help="duration column value (clips are 10 s)")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    with open(args.csv, encoding="utf-8", newline="") as fh:
        records = [r for r in csv.reader(fh) if r]
    if not records or len(records[0]) != 4:
        sys.exit(f"error: {args.csv}: expected rows 'youtube_id,start_seconds,label,split'")
    label_ids = {name: i for i, name in enumerate(sorted({r[2] for r in records}))}
    os.makedirs(args.out_dir, exist_ok=True)
    rows = {"train": [], "test": []}
    av_rows = {"train": [], "test": []}
    missing = missing_frames = 0
    for ytid, start, label, split in records:
        key = dict(ytid=ytid, start=int(start))
        audio = os.path.abspath(os.path.join(args.audio_dir, args.audio_name.format(**key)))
        if not os.path.isfile(audio):
            missing += 1
            continue
        uid = f"{ytid}_{int(start)}"
        rows[split].append((uid, audio, label_ids[label], args.duration))
        if args.frames_dir:
            folder = os.path.join(args.frames_dir, args.frames_name.format(**key))
            frames = sorted(p for p in glob.glob(os.path.join(folder, "*")) if p.lower().endswith(IMAGE_EXTS))
            if not frames:
                missing_frames += 1
                continue
            av_rows[split].append((uid, audio, "|".join(os.path.abspath(p) for p in frames),
                                   label_ids[label], args.duration))
    for split in ("train", "test"):
        write(os.path.join(args.out_dir, f"vggsound_{split}.tsv"), ["uniq_id", "audio", "text", "duration"],
              rows[split])
        if args.frames_dir:
            write(os.path.join(args.out_dir, f"vggsound_av_{split}.tsv"),
                  ["uniq_id", "audio", "frames", "text", "duration"], av_rows[split])
    with open(os.path.join(args.out_dir, "vggsound_label.json"), "w", encoding="utf-8") as fh:
        json.dump({str(i): name for name, i in label_ids.items()}, fh, indent=1)
    print(f"{len(label_ids)} classes; train {len(rows['train'])}, test {len(rows['test'])} clips; "
          f"{missing} without audio, {missing_frames} without frames -> {args.out_dir}")


def write(path, header, rows):
    # Plain tab-joined lines: the TSV reader does no CSV unquoting.
    with open(path, "w", encoding="utf-8") as fh:
        for row in [header] + list(rows):
            fh.write("\t".join(str(v).replace("\t", " ").replace("\n", " ") for v in row) + "\n")


if __name__ == "__main__":
    main()
