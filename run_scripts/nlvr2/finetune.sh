#!/usr/bin/env bash
# Fine-tune on NLVR2 (statement true of the image pair or not).
#   NLVR2_DIR=/data/nlvr2 ONE_PEACE_CHECKPOINT=one-peace.pt NUM_GPUS=8 bash run_scripts/nlvr2/finetune.sh [hydra overrides]
# Data: $NLVR2_DIR/nlvr2_train.tsv and nlvr2_dev.tsv (convert_nlvr2.py), or TRAIN_TSV / VALID_TSV.
# BATCH (8), UPDATE_FREQ (2), EPOCHS (25).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TRAIN_TSV="${TRAIN_TSV:-${NLVR2_DIR:?set NLVR2_DIR or TRAIN_TSV}/nlvr2_train.tsv}"
VALID_TSV="${VALID_TSV:-${NLVR2_DIR:?set NLVR2_DIR or VALID_TSV}/nlvr2_dev.tsv}"
BATCH="${BATCH:-8}" UPDATE_FREQ="${UPDATE_FREQ:-2}" EPOCHS="${EPOCHS:-25}"

finetune_on_tsvs "$HERE" finetune_nlvr2 nlvr2 "$@"
