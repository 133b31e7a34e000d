#!/usr/bin/env bash
# Fine-tune visual grounding on RefCOCO (default), RefCOCO+ or RefCOCOg (DATASET=refcoco|refcoco+|refcocog).
#   REFCOCO_DIR=/data/refcoco ONE_PEACE_CHECKPOINT=one-peace.pt NUM_GPUS=8 bash run_scripts/refcoco/finetune.sh [hydra overrides]
# Data: $REFCOCO_DIR/${DATASET}_train.tsv and ${DATASET}_val.tsv (convert_refcoco.py), or TRAIN_TSV / VALID_TSV.
# BATCH (4), UPDATE_FREQ (8), EPOCHS (30); RefCOCOg pools the text tokens (use_image_features false).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

DATASET="${DATASET:-refcoco}"
case "$DATASET" in
  refcoco|refcoco+) IMAGE_FEATURES=true ;;
  refcocog) IMAGE_FEATURES=false ;;
  *) die "DATASET must be refcoco, refcoco+ or refcocog, got $DATASET" ;;
esac
TRAIN_TSV="${TRAIN_TSV:-${REFCOCO_DIR:?set REFCOCO_DIR or TRAIN_TSV}/${DATASET}_train.tsv}"
VALID_TSV="${VALID_TSV:-${REFCOCO_DIR:?set REFCOCO_DIR or VALID_TSV}/${DATASET}_val.tsv}"
BATCH="${BATCH:-4}" UPDATE_FREQ="${UPDATE_FREQ:-8}" EPOCHS="${EPOCHS:-30}"

finetune_on_tsvs "$HERE" finetune_refcoco "$DATASET" "model.use_image_features=$IMAGE_FEATURES" "$@"
