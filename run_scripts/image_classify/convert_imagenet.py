"""ImageNet-1K release layout -> the ``image_classify`` TSVs and the class names.

    python run_scripts/image_classify/convert_imagenet.py --train-dir ILSVRC/Data/CLS-LOC/train \\
        --val-dir ILSVRC/Data/CLS-LOC/val --val-labels LOC_val_solution.csv \\
        --synsets LOC_synset_mapping.txt --out-dir $IMAGENET_DIR

Inputs (each optional, at least one of ``--train-dir`` / ``--val-dir``):

* ``--train-dir``: ``<wnid>/<image>`` (``train/n01440764/n01440764_10026.JPEG``).
* ``--val-dir``: either class folders like the training set, or flat (``ILSVRC2012_val_00000001.JPEG``)
  with ``--val-labels``, one of
    - Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString``; the first word of the prediction
      string is the wnid), or
    - the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (line i = the devkit class id, 1..1000, of
      ``ILSVRC2012_val_{i:08d}``), which also needs ``--devkit-meta``: the devkit's ``data/meta.mat`` or a
      text file with the devkit's wnids in id order, one per line.
* ``--synsets``: ``LOC_synset_mapping.txt`` (``n01440764 tench, Tinca tinca`` per line): the class order and
  the names.  Without it the classes are the sorted wnids (the same order) and the names are the wnids.

Outputs in ``--out-dir``: ``imagenet_train.tsv`` / ``imagenet_val.tsv`` (header ``image<TAB>label``, label
1-based = class + 1, image paths relative to ``--out-dir`` unless ``--absolute-paths``),
``imagenet_classes.tsv`` (``class<TAB>wnid<TAB>name``, class 0-based as in the predictions; name = the
first synonym of the synset line) and ``imagenet_label.json`` ({class: name}, for ``task.label_file``).
Missing files, unknown wnids and malformed lines stop the conversion with the file and line named.
"""
import argparse
import csv
import json
import os
import sys

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def fail(message):
    raise SystemExit(f"error: {message}")


def need_file(path, what):
    if not os.path.isfile(path):
        fail(f"{what} not found: {path}")
    return path


def images_in(folder):
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


def class_folders(root):
    return sorted(e.name for e in os.scandir(root) if e.is_dir())


def read_synsets(path):
    """[(wnid, name)] in file order from ``n01440764 tench, Tinca tinca`` lines."""
    synsets = []
    with open(need_file(path, "synset mapping file"), encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            wnid, _, words = line.strip().partition(" ")
            if not (wnid.startswith("n") and wnid[1:].isdigit()) or not words.strip():
                fail(f"{path}, line {number}: expected 'n<digits> <names>', got {line.strip()!r}")
            synsets.append((wnid, words.split(",")[0].strip()))
    if len({w for w, _ in synsets}) != len(synsets):
        fail(f"{path}: a wnid is listed twice")
    return synsets


def read_devkit_wnids(path):
    """The devkit's wnids in class-id order (id k = entry k-1), from ``meta.mat`` or a text file."""
    need_file(path, "devkit meta file")
    if path.endswith(".mat"):
        from scipy.io import loadmat

        try:
            synsets = loadmat(path, squeeze_me=True)["synsets"]
            pairs = sorted((int(s["ILSVRC2012_ID"]), str(s["WNID"])) for s in synsets if int(s["num_children"]) == 0)
        except (KeyError, ValueError, TypeError) as err:
            fail(f"{path}: not the devkit's meta.mat (a 'synsets' struct with ILSVRC2012_ID, WNID, "
                 f"num_children): {err}")
        return [wnid for _, wnid in pairs]
    with open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def read_val_labels(path, devkit_meta):
    """{image stem: wnid} from LOC_val_solution.csv or the devkit's ground-truth text file."""
    need_file(path, "validation labels file")
    labels = {}
    if path.endswith(".csv"):
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
                fail(f"{path}, line 1: expected the header 'ImageId,PredictionString', got {header}")
            for number, row in enumerate(reader, 2):
                words = row[1].split() if len(row) >= 2 else []
                if not row or not row[0].strip() or not words:
                    fail(f"{path}, line {number}: expected 'ImageId,<wnid> ...', got {','.join(row)!r}")
                labels[row[0].strip()] = words[0]
        return labels
    if devkit_meta is None:
        fail(f"{path} holds devkit class ids: give --devkit-meta (the devkit's data/meta.mat or its wnid list)")
    wnids = read_devkit_wnids(devkit_meta)
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            try:
                class_id = int(line.strip())
                if not 1 <= class_id <= len(wnids):
                    raise ValueError
            except ValueError:
                fail(f"{path}, line {number}: expected a devkit class id in [1, {len(wnids)}], got {line.strip()!r}")
            labels[f"ILSVRC2012_val_{number:08d}"] = wnids[class_id - 1]
    return labels


class Writer:
    def __init__(self, out_dir, absolute):
        self.out_dir, self.absolute = out_dir, absolute

    def path(self, path):
        return os.path.abspath(path) if self.absolute else os.path.relpath(path, self.out_dir)

    def tsv(self, name, rows):
        out = os.path.join(self.out_dir, name)
        with open(out, "w", encoding="utf-8") as fh:
            fh.write("image\tlabel\n")
            for path, label in rows:
                fh.write(f"{self.path(path)}\t{label}\n")
        print(f"{len(rows)} images -> {out}")


def folder_rows(root, index, what):
    rows = []
    for wnid in class_folders(root):
        if wnid not in index:
            fail(f"{os.path.join(root, wnid)}: class folder {wnid!r} is not one of the {len(index)} classes")
        rows += [(os.path.join(root, wnid, name), index[wnid] + 1) for name in images_in(os.path.join(root, wnid))]
    if not rows:
        fail(f"no images found in the class folders of {what} {root}")
    return rows


def flat_val_rows(val_dir, labels, labels_path, index):
    files = {os.path.splitext(name)[0]: name for name in images_in(val_dir)}
    unlabelled = sorted(set(files) - set(labels))
    if unlabelled:
        fail(f"{len(unlabelled)} images of {val_dir} have no label in {labels_path} (first: {files[unlabelled[0]]})")
    missing = sorted(set(labels) - set(files))
    if missing:
        fail(f"{len(missing)} images labelled in {labels_path} are not in {val_dir} (first: {missing[0]})")
    rows = []
    for stem in sorted(files):
        if labels[stem] not in index:
            fail(f"{labels_path}: {stem} is labelled {labels[stem]!r}, not one of the {len(index)} classes")
        rows.append((os.path.join(val_dir, files[stem]), index[labels[stem]] + 1))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-dir", help="train/<wnid>/<image>")
    parser.add_argument("--val-dir", help="val/<wnid>/<image>, or flat with --val-labels")
    parser.add_argument("--val-labels", help="LOC_val_solution.csv or ILSVRC2012_validation_ground_truth.txt")
    parser.add_argument("--devkit-meta", help="the devkit's data/meta.mat (or its wnids, one per line, in id order)")
    parser.add_argument("--synsets", help="LOC_synset_mapping.txt: class order and names")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--absolute-paths", action="store_true", help="write absolute image paths")
    args = parser.parse_args(argv)
    if not args.train_dir and not args.val_dir:
        parser.error("give --train-dir and/or --val-dir")
    for option in ("train_dir", "val_dir"):
        if getattr(args, option) and not os.path.isdir(getattr(args, option)):
            fail(f"--{option.replace('_', '-')} is not a directory: {getattr(args, option)}")
    val_labels = read_val_labels(args.val_labels, args.devkit_meta) if args.val_labels else None
    if args.synsets:
        synsets = read_synsets(args.synsets)
    else:  # the standard order is the sorted wnids (LOC_synset_mapping.txt's order)
        wnids = class_folders(args.train_dir) if args.train_dir else (
            sorted(set(val_labels.values())) if val_labels else class_folders(args.val_dir))
        synsets = [(w, w) for w in wnids]
    if not synsets:
        fail("no classes found (no class folders and no --synsets)")
    index = {wnid: i for i, (wnid, _) in enumerate(synsets)}
    os.makedirs(args.out_dir, exist_ok=True)
    writer = Writer(args.out_dir, args.absolute_paths)
    if args.train_dir:
        writer.tsv("imagenet_train.tsv", folder_rows(args.train_dir, index, "--train-dir"))
    if args.val_dir:
        rows = (flat_val_rows(args.val_dir, val_labels, args.val_labels, index) if val_labels is not None
                else folder_rows(args.val_dir, index, "--val-dir"))
        writer.tsv("imagenet_val.tsv", rows)
    with open(os.path.join(args.out_dir, "imagenet_classes.tsv"), "w", encoding="utf-8") as fh:
        fh.write("class\twnid\tname\n")
        fh.writelines(f"{i}\t{wnid}\t{name}\n" for i, (wnid, name) in enumerate(synsets))
    with open(os.path.join(args.out_dir, "imagenet_label.json"), "w", encoding="utf-8") as fh:
        json.dump({str(i): name for i, (_, name) in enumerate(synsets)}, fh, indent=0)
    print(f"{len(synsets)} classes -> {os.path.join(args.out_dir, 'imagenet_classes.tsv')}", file=sys.stderr)


if __name__ == "__main__":
    main()
