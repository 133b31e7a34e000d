"""Zero-shot image classification (ImageNet) from an image-text checkpoint, one-peace-evaluate style.

    python -m one_peace.zero_shot_classify --path one-peace.pt --data $IMAGENET_DIR/imagenet_val.tsv \\
        --class-names $IMAGENET_DIR/imagenet_classes.tsv --templates clip80 --results-path results/zs [--cpu]

``--data``: an ``image_classify`` TSV (``image<TAB>label``, label 1-based; paths relative to the TSV or
``--data-root``).  ``--class-names``: ``imagenet_classes.tsv`` of ``convert_imagenet.py`` (a ``name``
column, in class order) or a JSON label map ``{class id: name}``.  ``--templates``: ``default`` (CLIP's 7
selected prompts), ``clip80`` (CLIP's 80 ImageNet prompts) or a text file with one template per line.
The class embeddings come from ``hub.zero_shot_classifier`` and the scores from the same code as
``hub.zero_shot_classify`` (``hub/zero_shot.py``).

Prints the metrics and writes ``{results_path}/{subset}_predict.json`` (per row: ``index``, ``image``,
``target`` (0-based), ``prediction``, ``top5``, ``top5_labels``, ``top5_scores``) and
``{results_path}/{subset}_metrics.json`` (``accuracy`` and ``top5`` in percent, ``count``).
"""
import argparse
import csv
import json
import logging
import os
import sys
from typing import Dict, List, Optional

import torch

logger = logging.getLogger("one_peace.zero_shot_classify")


def read_class_names(path: str) -> List[str]:
    """Class names in class order from a classes TSV (``name`` column) or a JSON label map."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class names file not found: {path}")
    if path.endswith(".json"):
        from .data_utils.labels import load_label_names

        names = load_label_names(path, option="class_names")
        if sorted(names) != list(range(len(names))):
            raise ValueError(f"{path}: class ids must be 0..{len(names) - 1} without gaps")
        return [names[i] for i in range(len(names))]
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        if not reader.fieldnames or "name" not in reader.fieldnames:
            raise ValueError(f"{path}, line 1: expected a header with a 'name' column "
                             f"(class<TAB>wnid<TAB>name), got {reader.fieldnames}")
        names = []
        for number, row in enumerate(reader, 2):
            if not (row.get("name") or "").strip():
                raise ValueError(f"{path}, line {number}: empty class name")
            names.append(row["name"].strip())
    if not names:
        raise ValueError(f"{path}: no classes")
    return names


def load_rows(reader, num_classes: int):
    """(image path, 0-based target, row number) of every row; errors name the file and row."""
    from .data_utils.dataset import BadSampleError
    from .tasks.vision_tasks.image_classify import parse_label

    rows = []
    for index in range(len(reader)):
        try:
            row = reader[index]
            if "image" not in row or "label" not in row:
                raise KeyError(f"columns image and label required (header: {', '.join(reader.header)})")
            rows.append((reader.resolve(row["image"]), parse_label(row["label"], num_classes), index + 2))
        except (KeyError, ValueError) as err:
            raise BadSampleError(reader.path, index + 2, str(err)) from None
    return rows


def evaluate(hub, rows, class_names, templates=None, batch_size: int = 64, k: int = 5, source: str = "data"):
    """(metrics, predictions) of the zero-shot classifier over ``rows`` = [(image path, target, row)] of the
    TSV ``source``;
    the scores are ``hub.zero_shot_classify``'s, the metrics image_classify's (``metrics/accuracy.py``)."""
    from .data_utils.dataset import BadSampleError
    from .data_utils.image import load_image
    from .hub.zero_shot import top_k
    from .metrics.accuracy import accuracy_sum, topk_accuracy_sum

    classifier = hub.zero_shot_classifier(class_names, templates)
    predictions, score, top_score = [], 0.0, 0.0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        images = []
        for path, _, row in chunk:
            try:
                images.append(load_image(path))
            except (FileNotFoundError, ValueError) as err:
                raise BadSampleError(source, row, str(err)) from None
        logits = hub.zero_shot_logits(images, classifier).cpu()
        targets = torch.tensor([t for _, t, _ in chunk])
        score += accuracy_sum(logits, targets)[0]
        top_score += topk_accuracy_sum(logits, targets, k)[0]
        top = top_k(logits, k)
        for offset, (path, target, _) in enumerate(chunk):
            classes = top.indices[offset].tolist()
            predictions.append({"index": start + offset, "image": path, "target": target, "prediction": classes[0],
                                "top5": classes, "top5_labels": [class_names[c] for c in classes],
                                "top5_scores": top.values[offset].tolist()})
    count = len(rows)
    metrics = {"accuracy": round(100.0 * score / max(count, 1), 4),
               "top5": round(100.0 * top_score / max(count, 1), 4), "count": count}
    return metrics, predictions


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--path", required=True, help="image-text checkpoint (one-peace.pt, a retrieval checkpoint)")
    parser.add_argument("--data", required=True, help="image_classify TSV (image, label 1-based)")
    parser.add_argument("--class-names", required=True, help="imagenet_classes.tsv or a JSON {class id: name}")
    parser.add_argument("--templates", default="default", help="default, clip80, or a file of templates")
    parser.add_argument("--results-path", help="where {subset}_predict.json and {subset}_metrics.json go")
    parser.add_argument("--subset", default="val", help="name of the split in the output files")
    parser.add_argument("--data-root", help="directory the TSV's image paths are relative to")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bf16", "fp16"])
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--bpe-dir")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO,
                        stream=sys.stdout)
    from .data_utils.tsv import TSVReader
    from .hub import from_pretrained
    from .hub.zero_shot import resolve_templates

    templates = resolve_templates(args.templates)  # bad templates fail before the model loads
    class_names = read_class_names(args.class_names)
    rows = load_rows(TSVReader(args.data, data_root=args.data_root), len(class_names))
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    hub = from_pretrained(args.path, model_type="one_peace_retrieval", device=device, dtype=args.dtype,
                          bpe_dir=args.bpe_dir)
    metrics, predictions = evaluate(hub, rows, class_names, templates, args.batch_size, args.topk, args.data)
    logger.info("zero-shot %s | %d classes, %d templates | %s", args.subset, len(class_names), len(templates),
                " | ".join(f"{k} {v}" for k, v in metrics.items()))
    print(json.dumps({"subset": args.subset, **metrics}), flush=True)
    if args.results_path:
        os.makedirs(args.results_path, exist_ok=True)
        with open(os.path.join(args.results_path, f"{args.subset}_predict.json"), "w") as fh:
            json.dump(predictions, fh)
        with open(os.path.join(args.results_path, f"{args.subset}_metrics.json"), "w") as fh:
            json.dump(metrics, fh, indent=1)
    return metrics


if __name__ == "__main__":
    main()
