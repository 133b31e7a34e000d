#!/usr/bin/env bash
# Zero-shot image-text retrieval straight from the pretrained checkpoint (one-peace.pt), in fp32 as
# the official zero-shot script: the model comes from the checkpoint, the task from here.
#   RETRIEVAL_DIR=/data/image_text ONE_PEACE_CHECKPOINT=one-peace.pt [DATASET=flickr] bash run_scripts/image_text_retrieval/zero_shot_evaluate.sh [evaluator flags]
# Data: $RETRIEVAL_DIR/{coco,flickr}_test.tsv and _test_texts.json (convert_karpathy.py), or TEST_TSV / TEST_FILE.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

DATASET="${DATASET:-coco}"
TEST_TSV="${TEST_TSV:-${RETRIEVAL_DIR:?set RETRIEVAL_DIR or TEST_TSV}/${DATASET}_test.tsv}"
TEST_FILE="${TEST_FILE:-${RETRIEVAL_DIR:?set RETRIEVAL_DIR or TEST_FILE}/${DATASET}_test_texts.json}"
CHECKPOINT="${CHECKPOINT:-${ONE_PEACE_CHECKPOINT:?set ONE_PEACE_CHECKPOINT or CHECKPOINT}}"
need_file "$TEST_TSV" TEST_TSV
need_file "$TEST_FILE" TEST_FILE
need_checkpoint "$CHECKPOINT" CHECKPOINT
PRECISION_FLAGS="$(precision_flags fp32 "$@")" || exit 1  # a bad PRECISION stops here

one_peace_evaluate "$TEST_TSV" --path "$CHECKPOINT" --gen-subset "${DATASET}_test" \
  --task image_text_retrieval --zero-shot --head-type vl --valid-file "$TEST_FILE" \
  --selected-cols image_id,image,caption --model-overrides "{'model': {'_name': 'one_peace_retrieval'}}" \
  --batch-size "${BATCH:-16}" --results-path "${RESULTS_DIR:-$ONE_PEACE_ROOT/results/zero_shot_$DATASET}" \
  $PRECISION_FLAGS "$@"
