"""Print the segmentation demo's held-out figures beside the trivial all-background predictor.

    python run_scripts/segmentation/demo_report.py --valid-tsv VAL.tsv --metrics RESULTS/test_metrics.json

The trivial predictor labels every pixel "background" (class 0); both are scored with the same
metric (``metrics/segmentation.py``, reduce_zero_label, ignore 255) on the same label maps.
"""
import argparse
import json
import os

from one_peace.data_utils.segmentation import load_label_map, prepare_label
from one_peace.data_utils.tsv import TSVReader
from one_peace.metrics.segmentation import confusion_matrix, metrics_from_confusion


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--valid-tsv", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--num-classes", type=int, default=5)
    args = parser.parse_args(argv)
    reader = TSVReader(args.valid_tsv, selected_cols="image,label_map")
    cm = 0
    for i in range(len(reader)):
        path = reader.resolve(reader[i]["label_map"])
        label = prepare_label(load_label_map(path), args.num_classes, True, path)
        cm = cm + confusion_matrix(label * 0, label, args.num_classes)
    trivial = metrics_from_confusion(cm)
    with open(args.metrics, encoding="utf-8") as fh:
        model = json.load(fh)
    print(f"held-out scenes: {len(reader)} ({os.path.basename(args.valid_tsv)})")
    for name, values in (("fine-tuned", model), ("all-background", trivial)):
        print(f"  {name:15s} mIoU {values['mIoU']:6.2f}  mAcc {values['mAcc']:6.2f}  aAcc {values['aAcc']:6.2f}")
    print(f"segmentation demo: mIoU={model['mIoU']:.2f} all_background_mIoU={trivial['mIoU']:.2f}")


if __name__ == "__main__":
    main()
