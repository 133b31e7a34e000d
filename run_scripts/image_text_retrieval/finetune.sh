#!/usr/bin/env bash
# Fine-tune image-text retrieval on COCO (default) or Flickr30K (Karpathy splits).
#   RETRIEVAL_DIR=/data/image_text ONE_PEACE_CHECKPOINT=one-peace.pt NUM_GPUS=8 [DATASET=flickr] bash run_scripts/image_text_retrieval/finetune.sh
# Data: $RETRIEVAL_DIR/{coco,flickr}_train.tsv, _val.tsv and _val_texts.json (convert_karpathy.py),
# or TRAIN_TSV / VALID_TSV / VALID_FILE.  BATCH (2 images per GPU), UPDATE_FREQ (1),
# EPOCHS (15 COCO, 20 Flickr30K); lr 8e-5 / 7e-5 and drop_path 0.5 / 0.4 as the official recipes.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

DATASET="${DATASET:-coco}"
case "$DATASET" in
  coco) LR=8e-5 DROP_PATH=0.5 DEFAULT_EPOCHS=15 ;;
  flickr) LR=7e-5 DROP_PATH=0.4 DEFAULT_EPOCHS=20 ;;
  *) die "DATASET must be coco or flickr, got $DATASET" ;;
esac
TRAIN_TSV="${TRAIN_TSV:-${RETRIEVAL_DIR:?set RETRIEVAL_DIR or TRAIN_TSV}/${DATASET}_train.tsv}"
VALID_TSV="${VALID_TSV:-${RETRIEVAL_DIR:?set RETRIEVAL_DIR or VALID_TSV}/${DATASET}_val.tsv}"
VALID_FILE="${VALID_FILE:-${RETRIEVAL_DIR:?set RETRIEVAL_DIR or VALID_FILE}/${DATASET}_val_texts.json}"
BATCH="${BATCH:-2}" UPDATE_FREQ="${UPDATE_FREQ:-1}" EPOCHS="${EPOCHS:-$DEFAULT_EPOCHS}"
need_file "$VALID_FILE" VALID_FILE

finetune_on_tsvs "$HERE" finetune_image_text_retrieval "image_text_retrieval_$DATASET" \
  "task.valid_file=$VALID_FILE" "optimization.lr=[$LR]" "model.encoder.drop_path_rate=$DROP_PATH" "$@"
