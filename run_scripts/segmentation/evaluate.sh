#!/usr/bin/env bash
# Evaluate a segmentation checkpoint: mIoU, mAcc, aAcc (percent; sliding windows at the test scale), the
# per-class IoU/Acc in {RESULTS_DIR}/test_metrics.json and each predicted mask as a palette PNG
# (ADE20K colours, annotation values) in {RESULTS_DIR}/test_masks/.
#   ADE_DIR=/data/ade20k CHECKPOINT=checkpoints/ade20k/checkpoint_best.pt [TEST_TSV=...] bash run_scripts/segmentation/evaluate.sh [evaluator flags]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TEST_TSV="${TEST_TSV:-${ADE_DIR:?set ADE_DIR or TEST_TSV}/ade20k_val.tsv}"
CHECKPOINT="${CHECKPOINT:-$ONE_PEACE_ROOT/checkpoints/ade20k/checkpoint_best.pt}"

evaluate_on_tsv ade20k 2 bf16 "$@"
