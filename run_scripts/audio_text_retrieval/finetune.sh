#!/usr/bin/env bash
# Fine-tune audio-text retrieval (the official recipe trains on Clotho + AudioCaps + MACS merged
# and validates on AudioCaps val).
#   RETRIEVAL_DIR=/data/audio_text ONE_PEACE_CHECKPOINT=one-peace.pt NUM_GPUS=8 bash run_scripts/audio_text_retrieval/finetune.sh
# Data: $RETRIEVAL_DIR/train.tsv, audiocaps_val.tsv, audiocaps_val_texts.json (convert_captions.py),
# or TRAIN_TSV / VALID_TSV / VALID_FILE.  BATCH (2 pairs per GPU), UPDATE_FREQ (1), EPOCHS (10).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TRAIN_TSV="${TRAIN_TSV:-${RETRIEVAL_DIR:?set RETRIEVAL_DIR or TRAIN_TSV}/train.tsv}"
VALID_TSV="${VALID_TSV:-${RETRIEVAL_DIR:?set RETRIEVAL_DIR or VALID_TSV}/audiocaps_val.tsv}"
VALID_FILE="${VALID_FILE:-${RETRIEVAL_DIR:?set RETRIEVAL_DIR or VALID_FILE}/audiocaps_val_texts.json}"
BATCH="${BATCH:-2}" UPDATE_FREQ="${UPDATE_FREQ:-1}" EPOCHS="${EPOCHS:-10}"
need_file "$VALID_FILE" VALID_FILE

finetune_on_tsvs "$HERE" finetune_audio_text_retrieval audio_text_retrieval "task.valid_file=$VALID_FILE" "$@"
