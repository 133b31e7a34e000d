#!/usr/bin/env bash
# Fine-tune on VGGSound with audio and video frames (task vggsound_av, docs/AUDIO_VISUAL.md).
#   VGGSOUND_DIR=/data/vggsound ONE_PEACE_CHECKPOINT=one-peace.pt NUM_GPUS=8 bash run_scripts/vggsound/finetune_av.sh [hydra overrides]
# Data: $VGGSOUND_DIR/vggsound_av_{train,test}.tsv (with a frames column), or TRAIN_TSV / VALID_TSV.
# BATCH (8), UPDATE_FREQ (8), EPOCHS (10); frames per clip: task.num_frames=N (4).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TRAIN_TSV="${TRAIN_TSV:-${VGGSOUND_DIR:?set VGGSOUND_DIR or TRAIN_TSV}/vggsound_av_train.tsv}"
VALID_TSV="${VALID_TSV:-${VGGSOUND_DIR:?set VGGSOUND_DIR or VALID_TSV}/vggsound_av_test.tsv}"
BATCH="${BATCH:-8}" UPDATE_FREQ="${UPDATE_FREQ:-8}" EPOCHS="${EPOCHS:-10}"

finetune_on_tsvs "$HERE" finetune_vggsound_av vggsound_av "$@"
