#!/usr/bin/env bash
# Evaluate audio-text retrieval on Clotho (evaluation split): R@1/5/10 both directions.
#   RETRIEVAL_DIR=/data/audio_text CHECKPOINT=checkpoints/audio_text_retrieval/checkpoint_best.pt bash run_scripts/audio_text_retrieval/evaluate_clotho.sh [evaluator flags]
# Data: $RETRIEVAL_DIR/clotho_evaluation.tsv and clotho_evaluation_texts.json (convert_captions.py), or TEST_TSV / TEST_FILE.
# Official setting: batch 8 per GPU, bf16.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TEST_TSV="${TEST_TSV:-${RETRIEVAL_DIR:?set RETRIEVAL_DIR or TEST_TSV}/clotho_evaluation.tsv}"
TEST_FILE="${TEST_FILE:-${RETRIEVAL_DIR:?set RETRIEVAL_DIR or TEST_FILE}/clotho_evaluation_texts.json}"
CHECKPOINT="${CHECKPOINT:-$ONE_PEACE_ROOT/checkpoints/audio_text_retrieval/checkpoint_best.pt}"
need_file "$TEST_FILE" TEST_FILE

evaluate_on_tsv clotho 8 bf16 --valid-file "$TEST_FILE" "$@"
