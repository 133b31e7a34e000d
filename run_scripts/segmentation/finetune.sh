#!/usr/bin/env bash
# Fine-tune ADE20K semantic segmentation (UperNet on the image encoder; ours, see finetune_ade20k.yaml).
#   ADE_DIR=/data/ade20k ONE_PEACE_CHECKPOINT=one-peace.pt NUM_GPUS=8 bash run_scripts/segmentation/finetune.sh [hydra overrides]
# Data: $ADE_DIR/ade20k_train.tsv and ade20k_val.tsv (convert_ade20k.py), or TRAIN_TSV / VALID_TSV.
# BATCH (2 crops per GPU), UPDATE_FREQ (1), EPOCHS (130: ~164k updates on 8 GPUs; validation and checkpoints
# every 10 epochs, so keep EPOCHS a multiple of 10 or override dataset.validate_interval / checkpoint.save_interval).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TRAIN_TSV="${TRAIN_TSV:-${ADE_DIR:?set ADE_DIR or TRAIN_TSV}/ade20k_train.tsv}"
VALID_TSV="${VALID_TSV:-${ADE_DIR:?set ADE_DIR or VALID_TSV}/ade20k_val.tsv}"
BATCH="${BATCH:-2}" UPDATE_FREQ="${UPDATE_FREQ:-1}" EPOCHS="${EPOCHS:-130}"

# adjust_polynomial_decay derives its length (total_num_update) from the epochs and the epoch size.
finetune_on_tsvs "$HERE" finetune_ade20k ade20k "$@"
