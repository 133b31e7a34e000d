#!/usr/bin/env bash
# Fine-tune on AVQA audio question answering (4 candidates per question, hinge loss).
#   AVQA_DIR=/data/avqa ONE_PEACE_CHECKPOINT=one-peace.pt NUM_GPUS=8 bash run_scripts/aqa/finetune.sh [hydra overrides]
# Data: $AVQA_DIR/avqa_{train,val}.tsv (convert_avqa.py), or TRAIN_TSV / VALID_TSV.
# BATCH (1 question per GPU), UPDATE_FREQ (16), EPOCHS (10).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TRAIN_TSV="${TRAIN_TSV:-${AVQA_DIR:?set AVQA_DIR or TRAIN_TSV}/avqa_train.tsv}"
VALID_TSV="${VALID_TSV:-${AVQA_DIR:?set AVQA_DIR or VALID_TSV}/avqa_val.tsv}"
BATCH="${BATCH:-1}" UPDATE_FREQ="${UPDATE_FREQ:-16}" EPOCHS="${EPOCHS:-10}"

finetune_on_tsvs "$HERE" finetune_aqa aqa "$@"
