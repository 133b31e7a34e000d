#!/usr/bin/env bash
# Evaluate a supervised ESC-50 checkpoint (finetune.sh) on fold FOLD: accuracy.
#   ESC50_DIR=/data/esc50 FOLD=1 bash run_scripts/esc50/evaluate.sh [evaluator flags]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

FOLD="${FOLD:-1}"
TEST_TSV="${TEST_TSV:-${ESC50_DIR:?set ESC50_DIR or TEST_TSV}/esc50_fold${FOLD}_test.tsv}"
CHECKPOINT="${CHECKPOINT:-$ONE_PEACE_ROOT/checkpoints/esc50_fold$FOLD/checkpoint_best.pt}"

evaluate_on_tsv "esc50_fold$FOLD" 16 bf16 "$@"
