#!/usr/bin/env bash
# Evaluate a VQAv2 checkpoint: VQA accuracy on a labelled split, and the evaluation-server file
# {RESULTS_DIR}/test_vqa_submission.json ([{"question_id", "answer"}]) for test-dev/test-std.
#   VQA_DIR=/data/vqa CHECKPOINT=checkpoints/vqa/checkpoint_best.pt [TEST_TSV=$VQA_DIR/vqa_test_dev.tsv] bash run_scripts/vqa/evaluate.sh [evaluator flags]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TEST_TSV="${TEST_TSV:-${VQA_DIR:?set VQA_DIR or TEST_TSV}/vqa_val.tsv}"
LABEL_FILE="${LABEL_FILE:-${VQA_DIR:?set VQA_DIR or LABEL_FILE}/answers.json}"
CHECKPOINT="${CHECKPOINT:-$ONE_PEACE_ROOT/checkpoints/vqa/checkpoint_best.pt}"
need_file "$LABEL_FILE" LABEL_FILE

evaluate_on_tsv vqa 16 bf16 --label-file "$LABEL_FILE" "$@"
