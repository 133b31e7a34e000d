#!/usr/bin/env bash
# Zero-shot video-text retrieval (MSR-VTT) from a checkpoint: a video_text_pretrain checkpoint, or one
# without video weights (one-peace.pt), whose video branch then starts from its image branch.
#   VIDEO_DIR=/data/msrvtt ONE_PEACE_CHECKPOINT=one-peace.pt bash run_scripts/video_text_retrieval/zero_shot_evaluate.sh [evaluator flags]
# Data: $VIDEO_DIR/msrvtt_test.tsv and msrvtt_test_texts.json (convert_msrvtt.py), or TEST_TSV / TEST_FILE.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TEST_TSV="${TEST_TSV:-${VIDEO_DIR:?set VIDEO_DIR or TEST_TSV}/msrvtt_test.tsv}"
TEST_FILE="${TEST_FILE:-${VIDEO_DIR:?set VIDEO_DIR or TEST_FILE}/msrvtt_test_texts.json}"
CHECKPOINT="${CHECKPOINT:-${ONE_PEACE_CHECKPOINT:?set ONE_PEACE_CHECKPOINT or CHECKPOINT}}"
need_file "$TEST_TSV" TEST_TSV
need_file "$TEST_FILE" TEST_FILE
need_checkpoint "$CHECKPOINT" CHECKPOINT
PRECISION_FLAGS="$(precision_flags fp32 "$@")" || exit 1  # a bad PRECISION stops here

one_peace_evaluate "$TEST_TSV" --path "$CHECKPOINT" --gen-subset msrvtt_test \
  --task video_text_retrieval --zero-shot --head-type vt --valid-file "$TEST_FILE" \
  --num-frames "${FRAMES:-8}" --patch-image-size "${PATCH_IMAGE_SIZE:-256}" \
  --model-overrides "{'model': {'_name': 'one_peace_retrieval'}}" \
  --batch-size "${BATCH:-8}" --results-path "${RESULTS_DIR:-$ONE_PEACE_ROOT/results/zero_shot_msrvtt}" \
  $PRECISION_FLAGS "$@"
