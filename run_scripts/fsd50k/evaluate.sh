#!/usr/bin/env bash
# Evaluate an FSD50K checkpoint: macro mAP (map) over the eval split.
#   FSD50K_DIR=/data/fsd50k CHECKPOINT=checkpoints/fsd50k/checkpoint_best.pt bash run_scripts/fsd50k/evaluate.sh [evaluator flags]
# Official setting: batch 16 per GPU, bf16 (PRECISION=bf16).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TEST_TSV="${TEST_TSV:-${FSD50K_DIR:?set FSD50K_DIR or TEST_TSV}/fsd50k_eval.tsv}"
CHECKPOINT="${CHECKPOINT:-$ONE_PEACE_ROOT/checkpoints/fsd50k/checkpoint_best.pt}"

evaluate_on_tsv fsd50k 16 bf16 "$@"
