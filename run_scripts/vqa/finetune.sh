#!/usr/bin/env bash
# Fine-tune on VQAv2 (3129 answers, soft scores).
#   VQA_DIR=/data/vqa ONE_PEACE_CHECKPOINT=one-peace.pt NUM_GPUS=8 bash run_scripts/vqa/finetune.sh [hydra overrides]
# Data: $VQA_DIR/vqa_train.tsv, vqa_val.tsv and answers.json (convert_vqa.py), or TRAIN_TSV / VALID_TSV / LABEL_FILE.
# BATCH (8), UPDATE_FREQ (8), EPOCHS (10).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TRAIN_TSV="${TRAIN_TSV:-${VQA_DIR:?set VQA_DIR or TRAIN_TSV}/vqa_train.tsv}"
VALID_TSV="${VALID_TSV:-${VQA_DIR:?set VQA_DIR or VALID_TSV}/vqa_val.tsv}"
LABEL_FILE="${LABEL_FILE:-${VQA_DIR:?set VQA_DIR or LABEL_FILE}/answers.json}"
BATCH="${BATCH:-8}" UPDATE_FREQ="${UPDATE_FREQ:-8}" EPOCHS="${EPOCHS:-10}"
need_file "$LABEL_FILE" LABEL_FILE
NUM_CLASSES=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))))" "$LABEL_FILE")

finetune_on_tsvs "$HERE" finetune_vqa vqa "task.label_file=$LABEL_FILE" "task.num_classes=$NUM_CLASSES" "$@"
