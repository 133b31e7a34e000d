#!/usr/bin/env bash
# Fine-tune on VGGSound, audio only (309 classes).
#   VGGSOUND_DIR=/data/vggsound ONE_PEACE_CHECKPOINT=one-peace.pt NUM_GPUS=8 bash run_scripts/vggsound/finetune.sh [hydra overrides]
# Data: $VGGSOUND_DIR/vggsound_{train,test}.tsv (docs/DATA.md), or TRAIN_TSV / VALID_TSV.
# Per-GPU batch, update_freq and epochs: BATCH (8), UPDATE_FREQ (8), EPOCHS (10).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TRAIN_TSV="${TRAIN_TSV:-${VGGSOUND_DIR:?set VGGSOUND_DIR or TRAIN_TSV}/vggsound_train.tsv}"
VALID_TSV="${VALID_TSV:-${VGGSOUND_DIR:?set VGGSOUND_DIR or VALID_TSV}/vggsound_test.tsv}"
BATCH="${BATCH:-8}" UPDATE_FREQ="${UPDATE_FREQ:-8}" EPOCHS="${EPOCHS:-10}"

finetune_on_tsvs "$HERE" finetune_vggsound vggsound "$@"
