#!/usr/bin/env bash
# Evaluate an audio-visual VGGSound checkpoint (accuracy).
#   VGGSOUND_DIR=/data/vggsound CHECKPOINT=checkpoints/vggsound_av/checkpoint_best.pt bash run_scripts/vggsound/evaluate_av.sh [evaluator flags]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TEST_TSV="${TEST_TSV:-${VGGSOUND_DIR:?set VGGSOUND_DIR or TEST_TSV}/vggsound_av_test.tsv}"
CHECKPOINT="${CHECKPOINT:-$ONE_PEACE_ROOT/checkpoints/vggsound_av/checkpoint_best.pt}"

evaluate_on_tsv vggsound_av 4 fp32 "$@"
