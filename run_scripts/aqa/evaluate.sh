#!/usr/bin/env bash
# Evaluate an AVQA checkpoint: accuracy over the validation split.
#   AVQA_DIR=/data/avqa CHECKPOINT=checkpoints/aqa/checkpoint_best.pt bash run_scripts/aqa/evaluate.sh [evaluator flags]
# Official setting: batch 4 questions per GPU, bf16.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TEST_TSV="${TEST_TSV:-${AVQA_DIR:?set AVQA_DIR or TEST_TSV}/avqa_val.tsv}"
CHECKPOINT="${CHECKPOINT:-$ONE_PEACE_ROOT/checkpoints/aqa/checkpoint_best.pt}"

evaluate_on_tsv aqa 4 bf16 "$@"
