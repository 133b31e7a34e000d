#!/usr/bin/env bash
# Evaluate a fine-tuned image-text retrieval checkpoint on the Karpathy test split: R@1/5/10 both
# directions (txt_r*: image -> text, img_r*: text -> image) and r_mean; top-10 lists per image.
#   RETRIEVAL_DIR=/data/image_text CHECKPOINT=checkpoints/image_text_retrieval_coco/checkpoint_best.pt [DATASET=flickr] bash run_scripts/image_text_retrieval/evaluate.sh [evaluator flags]
# Data: $RETRIEVAL_DIR/{coco,flickr}_test.tsv and _test_texts.json (convert_karpathy.py), or TEST_TSV / TEST_FILE.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

DATASET="${DATASET:-coco}"
TEST_TSV="${TEST_TSV:-${RETRIEVAL_DIR:?set RETRIEVAL_DIR or TEST_TSV}/${DATASET}_test.tsv}"
TEST_FILE="${TEST_FILE:-${RETRIEVAL_DIR:?set RETRIEVAL_DIR or TEST_FILE}/${DATASET}_test_texts.json}"
CHECKPOINT="${CHECKPOINT:-$ONE_PEACE_ROOT/checkpoints/image_text_retrieval_$DATASET/checkpoint_best.pt}"
need_file "$TEST_FILE" TEST_FILE

evaluate_on_tsv "image_text_retrieval_$DATASET" 16 bf16 --valid-file "$TEST_FILE" "$@"
