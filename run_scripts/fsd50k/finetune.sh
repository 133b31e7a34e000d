#!/usr/bin/env bash
# Fine-tune on FSD50K (200 classes, multi-label); the best checkpoint is chosen on mAP.
#   FSD50K_DIR=/data/fsd50k ONE_PEACE_CHECKPOINT=one-peace.pt NUM_GPUS=8 bash run_scripts/fsd50k/finetune.sh [hydra overrides]
# Data: $FSD50K_DIR/fsd50k_dev.tsv (train) and fsd50k_eval.tsv (validation), from convert_fsd50k.py,
# or TRAIN_TSV / VALID_TSV.  BATCH (8), UPDATE_FREQ (2), EPOCHS (10).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TRAIN_TSV="${TRAIN_TSV:-${FSD50K_DIR:?set FSD50K_DIR or TRAIN_TSV}/fsd50k_dev.tsv}"
VALID_TSV="${VALID_TSV:-${FSD50K_DIR:?set FSD50K_DIR or VALID_TSV}/fsd50k_eval.tsv}"
BATCH="${BATCH:-8}" UPDATE_FREQ="${UPDATE_FREQ:-2}" EPOCHS="${EPOCHS:-10}"

finetune_on_tsvs "$HERE" finetune_fsd50k fsd50k "$@"
