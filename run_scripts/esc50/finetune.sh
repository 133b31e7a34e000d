#!/usr/bin/env bash
# Supervised ESC-50 fine-tuning on 4 folds, testing on fold FOLD (not in the paper; see
# finetune_esc50.yaml).  ESC50_DIR=/data/esc50 FOLD=1 ONE_PEACE_CHECKPOINT=one-peace.pt bash run_scripts/esc50/finetune.sh
# Data: $ESC50_DIR/esc50_fold{FOLD}_{train,test}.tsv from convert_esc50.py, or TRAIN_TSV / VALID_TSV.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

FOLD="${FOLD:-1}"
TRAIN_TSV="${TRAIN_TSV:-${ESC50_DIR:?set ESC50_DIR or TRAIN_TSV}/esc50_fold${FOLD}_train.tsv}"
VALID_TSV="${VALID_TSV:-${ESC50_DIR:?set ESC50_DIR or VALID_TSV}/esc50_fold${FOLD}_test.tsv}"
BATCH="${BATCH:-8}" UPDATE_FREQ="${UPDATE_FREQ:-1}" EPOCHS="${EPOCHS:-10}"

finetune_on_tsvs "$HERE" finetune_esc50 "esc50_fold$FOLD" "$@"
