#!/usr/bin/env bash
# Evaluate an NLVR2 checkpoint: accuracy on dev (default) or test-P (TEST_TSV=$NLVR2_DIR/nlvr2_test1.tsv).
#   NLVR2_DIR=/data/nlvr2 CHECKPOINT=checkpoints/nlvr2/checkpoint_best.pt bash run_scripts/nlvr2/evaluate.sh [evaluator flags]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TEST_TSV="${TEST_TSV:-${NLVR2_DIR:?set NLVR2_DIR or TEST_TSV}/nlvr2_dev.tsv}"
CHECKPOINT="${CHECKPOINT:-$ONE_PEACE_ROOT/checkpoints/nlvr2/checkpoint_best.pt}"

evaluate_on_tsv nlvr2 16 bf16 "$@"
