"""Karpathy-split JSON (COCO or Flickr30K) -> the ``image_text_retrieval`` TSVs and caption files.

    python run_scripts/image_text_retrieval/convert_karpathy.py --karpathy dataset_coco.json \
        --image-root coco --name coco --out-dir /data/image_text

``dataset_coco.json`` / ``dataset_flickr30k.json`` (Karpathy & Fei-Fei's splits) list
``images: [{filepath?, filename, split, imgid?, cocoid?, sentences: [{raw}]}]``.  Writes into ``--out-dir``:

* ``{name}_train.tsv``: one row per (image, caption) pair of ``train`` and ``restval`` (the usual
  practice), columns ``image_id, image, caption``;
* ``{name}_{val,test}.tsv``: one row per image (its first caption in the caption column);
* ``{name}_{val,test}_texts.json``: ``{image_id: [captions]}``, what evaluation ranks.

Image paths are ``--image-root/[filepath/]filename``, absolute if ``--image-root`` is; missing
images are reported and skipped (``--allow-missing``) or an error.
"""
import argparse
import json
import os
import sys

HEADER = ["image_id", "image", "caption"]
SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def clean(text: str) -> str:
    return " ".join(str(text).split())  # a TSV cell holds no tab or newline


def write_tsv(path, rows):
    with open(path, "w", encoding="utf-8") as fh:
        for row in [HEADER] + list(rows):
            fh.write("\t".join(str(v) for v in row) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--karpathy", required=True, help="dataset_coco.json or dataset_flickr30k.json")
    parser.add_argument("--image-root", required=True, help="folder the filepath/filename entries are under")
    parser.add_argument("--name", required=True, help="output prefix, e.g. coco or flickr")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--allow-missing", action="store_true", help="skip (and count) images not on disk")
    args = parser.parse_args(argv)
    with open(args.karpathy, encoding="utf-8") as fh:
        try:
            images = json.load(fh)["images"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            sys.exit(f"{args.karpathy}: not a Karpathy-split file with an 'images' list ({err})")
    os.makedirs(args.out_dir, exist_ok=True)
    rows = {"train": [], "val": [], "test": []}
    texts = {"val": {}, "test": {}}
    missing = 0
    for index, entry in enumerate(images):
        split = SPLITS.get(entry.get("split"))
        captions = [clean(s["raw"]) for s in entry.get("sentences", []) if clean(s.get("raw", ""))]
        if split is None or not captions:
            continue
        image_id = entry.get("cocoid", entry.get("imgid", index))
        path = os.path.join(args.image_root, entry.get("filepath", ""), entry["filename"])
        if not os.path.isfile(path):
            if not args.allow_missing:
                sys.exit(f"{args.karpathy}: image {index} ({entry['filename']}) not found at {path} "
                         "(--allow-missing skips such images)")
            missing += 1
            continue
        if split == "train":
            rows["train"].extend((image_id, path, caption) for caption in captions)
        else:
            rows[split].append((image_id, path, captions[0]))
            texts[split][str(image_id)] = captions
    for split, split_rows in rows.items():
        write_tsv(os.path.join(args.out_dir, f"{args.name}_{split}.tsv"), split_rows)
    for split, captions in texts.items():
        with open(os.path.join(args.out_dir, f"{args.name}_{split}_texts.json"), "w", encoding="utf-8") as fh:
            json.dump(captions, fh)
    print(f"{args.name}: {len(rows['train'])} training pairs, {len(rows['val'])} val and {len(rows['test'])} test "
          f"images, {missing} missing images skipped -> {args.out_dir}")


if __name__ == "__main__":
    main()
