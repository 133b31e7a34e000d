#!/usr/bin/env bash
# Evaluate a VGGSound (audio-only) checkpoint: accuracy over the test split.
#   VGGSOUND_DIR=/data/vggsound CHECKPOINT=checkpoints/vggsound/checkpoint_best.pt bash run_scripts/vggsound/evaluate.sh [evaluator flags, e.g. --cpu]
# Official setting: batch 4 per GPU, float32 (PRECISION=fp32).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TEST_TSV="${TEST_TSV:-${VGGSOUND_DIR:?set VGGSOUND_DIR or TEST_TSV}/vggsound_test.tsv}"
CHECKPOINT="${CHECKPOINT:-$ONE_PEACE_ROOT/checkpoints/vggsound/checkpoint_best.pt}"

evaluate_on_tsv vggsound 4 fp32 "$@"
