"""RefCOCO / RefCOCO+ / RefCOCOg release -> the ``refcoco`` TSVs, one per split.

    python run_scripts/refcoco/convert_refcoco.py --refs refcoco/refs(unc).p --instances refcoco/instances.json \
        --image-dir coco/train2014 --name refcoco --out-dir $REFCOCO_DIR

``refs(*).p`` is a pickle of plain lists and dicts (ref_id, ann_id, image_id, split, sentences); it is
read with a restricted unpickler that admits no class or function at all, so no code in the file
can run.  ``instances.json`` gives each annotation's ``bbox`` (x, y, w, h) and each image's file name.
Writes ``{name}_{split}.tsv`` (``uniq_id, image, text, region_coord`` with one row per sentence and
``region_coord = x0,y0,x1,y1`` in pixels) for every split in the refs (train, val, testA, testB, test).
"""
import argparse
import collections
import json
import os
import pickle


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickles containers, strings and numbers only: any global (class, function) is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: the refs file must hold plain data only")


def load_refs(path):
    with open(path, "rb") as fh:
        refs = PlainDataUnpickler(fh, encoding="latin1").load()
    if not isinstance(refs, list):
        raise SystemExit(f"{path}: expected a list of refs, got {type(refs).__name__}")
    return refs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--refs", required=True)
    parser.add_argument("--instances", required=True)
    parser.add_argument("--image-dir", required=True)
    parser.add_argument("--name", required=True, help="output prefix: refcoco, refcoco+ or refcocog")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    refs = load_refs(args.refs)
    with open(args.instances, encoding="utf-8") as fh:
        instances = json.load(fh)
    boxes = {a["id"]: a["bbox"] for a in instances["annotations"]}
    files = {i["id"]: i["file_name"] for i in instances["images"]}
    rows = collections.defaultdict(list)
    for ref in refs:
        x, y, w, h = boxes[ref["ann_id"]]
        image = os.path.join(args.image_dir, files[ref["image_id"]])
        for k, sentence in enumerate(ref["sentences"]):
            text = " ".join(str(sentence.get("sent", sentence.get("raw", ""))).split())
            rows[ref["split"]].append((f"{ref['ref_id']}-{k}", image, text, f"{x},{y},{x + w},{y + h}"))
    os.makedirs(args.out_dir, exist_ok=True)
    for split, split_rows in rows.items():
        with open(os.path.join(args.out_dir, f"{args.name}_{split}.tsv"), "w", encoding="utf-8") as fh:
            fh.write("uniq_id\timage\ttext\tregion_coord\n")
            for row in split_rows:
                fh.write("\t".join(row) + "\n")
    print(", ".join(f"{split}: {len(r)}" for split, r in sorted(rows.items())) + f" -> {args.out_dir}")


if __name__ == "__main__":
    main()
