"""NLVR2 JSON lines -> the ``nlvr2`` TSV.

    python run_scripts/nlvr2/convert_nlvr2.py --jsonl nlvr2/data/train.json --image-dir images/train --out $NLVR2_DIR/nlvr2_train.tsv

Each line holds ``identifier`` (``train-10171-0-0``), ``sentence`` and ``label`` (``True``/``False``);
the pair's images are ``{identifier without its last part}-img0.png`` and ``-img1.png``, searched
under ``--image-dir`` (the release's numbered sub-folders included).  Rows whose images are
missing are reported and skipped.
"""
import argparse
import json
import os


def index_images(root):
    found = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            found[name] = os.path.join(dirpath, name)
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jsonl", required=True)
    parser.add_argument("--image-dir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    images = index_images(args.image_dir)
    rows, missing = [], 0
    with open(args.jsonl, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                stem = item["identifier"].rsplit("-", 1)[0]
                sentence, label = " ".join(item["sentence"].split()), str(item["label"])
            except (json.JSONDecodeError, KeyError) as err:
                raise SystemExit(f"{args.jsonl}, line {number}: not an NLVR2 record ({err})") from None
            pair = [images.get(f"{stem}-img{k}.png") for k in (0, 1)]
            if None in pair:
                missing += 1
                continue
            rows.append((item["identifier"], sentence, pair[0], pair[1], label))
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write("uniq_id\ttext\timage1\timage2\tlabel\n")
        for row in rows:
            fh.write("\t".join(row) + "\n")
    print(f"{len(rows)} pairs -> {args.out} ({missing} with a missing image skipped)")


if __name__ == "__main__":
    main()
