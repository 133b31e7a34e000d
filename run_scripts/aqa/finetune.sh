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
need_file "$TRAIN_TSV" TRAIN_TSV
need_file "$VALID_TSV" VALID_TSV
schedule "$TRAIN_TSV" "$BATCH" "$UPDATE_FREQ" "$EPOCHS"

one_peace_train "$HERE" finetune_aqa \
  "task.data=$TRAIN_TSV" "task.valid_data=$VALID_TSV" \
  "dataset.batch_size=$BATCH" "optimization.update_freq=[$UPDATE_FREQ]" "optimization.max_epoch=$EPOCHS" \
  "optimization.max_update=$MAX_UPDATE" "lr_scheduler.warmup_updates=$WARMUP_UPDATES" \
  "checkpoint.save_dir=${SAVE_DIR:-$ONE_PEACE_ROOT/checkpoints/aqa}" "$@"
