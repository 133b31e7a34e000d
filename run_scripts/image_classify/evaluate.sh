#!/usr/bin/env bash
# Evaluate an ImageNet checkpoint: top-1 accuracy and top5 (percent); predictions hold each image's top-5.
#   IMAGENET_DIR=/data/imagenet CHECKPOINT=checkpoints/image_classify/checkpoint_best.pt bash run_scripts/image_classify/evaluate.sh [evaluator flags]
# Data: $IMAGENET_DIR/imagenet_val.tsv (or TEST_TSV); class names in the predictions with
# --model-overrides "{'task': {'label_file': '$IMAGENET_DIR/imagenet_label.json'}}".
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TEST_TSV="${TEST_TSV:-${IMAGENET_DIR:?set IMAGENET_DIR or TEST_TSV}/imagenet_val.tsv}"
CHECKPOINT="${CHECKPOINT:-$ONE_PEACE_ROOT/checkpoints/image_classify/checkpoint_best.pt}"

evaluate_on_tsv image_classify 16 bf16 "$@"
