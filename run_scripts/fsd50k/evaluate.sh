#!/usr/bin/env bash
# Evaluate an FSD50K checkpoint: macro mAP (map) over the eval split.
#   FSD50K_DIR=/data/fsd50k CHECKPOINT=checkpoints/fsd50k/checkpoint_best.pt bash run_scripts/fsd50k/evaluate.sh [evaluator flags]
# Official setting: batch 16 per GPU, bf16 (PRECISION=bf16).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TEST_TSV="${TEST_TSV:-${FSD50K_DIR:?set FSD50K_DIR or TEST_TSV}/fsd50k_eval.tsv}"
CHECKPOINT="${CHECKPOINT:-$ONE_PEACE_ROOT/checkpoints/fsd50k/checkpoint_best.pt}"
need_file "$TEST_TSV" TEST_TSV
need_file "$CHECKPOINT" CHECKPOINT

one_peace_evaluate --path "$CHECKPOINT" --gen-subset test --valid-data "$TEST_TSV" \
  --batch-size "${BATCH:-16}" --results-path "${RESULTS_DIR:-$ONE_PEACE_ROOT/results/fsd50k}" \
  $(precision_flags bf16) "$@"
