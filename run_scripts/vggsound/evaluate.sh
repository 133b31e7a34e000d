#!/usr/bin/env bash
# Evaluate a VGGSound (audio-only) checkpoint: accuracy over the test split.
#   VGGSOUND_DIR=/data/vggsound CHECKPOINT=checkpoints/vggsound/checkpoint_best.pt bash run_scripts/vggsound/evaluate.sh [evaluator flags, e.g. --cpu]
# Official setting: batch 4 per GPU, float32 (PRECISION=fp32).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TEST_TSV="${TEST_TSV:-${VGGSOUND_DIR:?set VGGSOUND_DIR or TEST_TSV}/vggsound_test.tsv}"
CHECKPOINT="${CHECKPOINT:-$ONE_PEACE_ROOT/checkpoints/vggsound/checkpoint_best.pt}"
need_file "$TEST_TSV" TEST_TSV
need_file "$CHECKPOINT" CHECKPOINT

one_peace_evaluate --path "$CHECKPOINT" --gen-subset test --valid-data "$TEST_TSV" \
  --batch-size "${BATCH:-4}" --results-path "${RESULTS_DIR:-$ONE_PEACE_ROOT/results/vggsound}" \
  $(precision_flags fp32) "$@"
