#!/usr/bin/env bash
# Fine-tune on ImageNet-1K (image_classify; hyper-parameters: finetune_imagenet.yaml, ours).
#   IMAGENET_DIR=/data/imagenet ONE_PEACE_CHECKPOINT=one-peace.pt NUM_GPUS=8 bash run_scripts/image_classify/finetune.sh [hydra overrides]
# Data: $IMAGENET_DIR/imagenet_train.tsv and imagenet_val.tsv (convert_imagenet.py), or TRAIN_TSV / VALID_TSV.
# BATCH (16), UPDATE_FREQ (8), EPOCHS (30).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TRAIN_TSV="${TRAIN_TSV:-${IMAGENET_DIR:?set IMAGENET_DIR or TRAIN_TSV}/imagenet_train.tsv}"
VALID_TSV="${VALID_TSV:-${IMAGENET_DIR:?set IMAGENET_DIR or VALID_TSV}/imagenet_val.tsv}"
BATCH="${BATCH:-16}" UPDATE_FREQ="${UPDATE_FREQ:-8}" EPOCHS="${EPOCHS:-30}"

finetune_on_tsvs "$HERE" finetune_imagenet image_classify "$@"
