"""ADEChallengeData2016 (SceneParsing, 150 classes) -> the ``semantic_segmentation`` TSVs.

    python run_scripts/segmentation/convert_ade20k.py --ade-root ADEChallengeData2016 --out-dir $ADE_DIR

Reads ``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/*.png`` and
writes ``ade20k_train.tsv`` and ``ade20k_val.tsv`` into ``--out-dir`` with columns ``image, label_map``
(paths relative to ``--ade-root`` when it is the TSVs' ``data_root``, else absolute: see
``--relative``).  Images without an annotation (and the reverse) are reported and left out.
"""
import argparse
import os
import sys

SPLITS = (("training", "ade20k_train.tsv"), ("validation", "ade20k_val.tsv"))


def pairs(root: str, split: str):
    """(image path, annotation path) of every image of the split with its annotation; missing ones."""
    image_dir, label_dir = os.path.join(root, "images", split), os.path.join(root, "annotations", split)
    for folder in (image_dir, label_dir):
        if not os.path.isdir(folder):
            raise SystemExit(f"{folder} not found: --ade-root must hold images/{split} and annotations/{split}")
    images = {os.path.splitext(n)[0]: n for n in os.listdir(image_dir) if n.lower().endswith((".jpg", ".jpeg"))}
    labels = {os.path.splitext(n)[0]: n for n in os.listdir(label_dir) if n.lower().endswith(".png")}
    found = [(os.path.join(image_dir, images[k]), os.path.join(label_dir, labels[k]))
             for k in sorted(images) if k in labels]
    missing = sorted(set(images) ^ set(labels))
    return found, missing


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ade-root", required=True, help="the ADEChallengeData2016 folder")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--relative", action="store_true",
                        help="paths relative to --ade-root (then set task.data_root to it)")
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    root = os.path.abspath(args.ade_root)
    for split, name in SPLITS:
        found, missing = pairs(root, split)
        if missing:
            print(f"{split}: {len(missing)} images or annotations without their pair left out "
                  f"(e.g. {missing[:3]})", file=sys.stderr)
        out = os.path.join(args.out_dir, name)
        with open(out, "w", encoding="utf-8", newline="\n") as fh:
            fh.write("image\tlabel_map\n")
            for image, label in found:
                if args.relative:
                    image, label = os.path.relpath(image, root), os.path.relpath(label, root)
                fh.write(f"{image}\t{label}\n")
        print(f"{out}: {len(found)} rows")


if __name__ == "__main__":
    main()
