#!/usr/bin/env bash
# Evaluate audio-text retrieval on AudioCaps (test split): R@1/5/10 both directions.
#   RETRIEVAL_DIR=/data/audio_text CHECKPOINT=checkpoints/audio_text_retrieval/checkpoint_best.pt bash run_scripts/audio_text_retrieval/evaluate_audiocaps.sh [evaluator flags]
# Data: $RETRIEVAL_DIR/audiocaps_test.tsv and audiocaps_test_texts.json (convert_captions.py), or TEST_TSV / TEST_FILE.
# Official setting: batch 16 per GPU, bf16.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TEST_TSV="${TEST_TSV:-${RETRIEVAL_DIR:?set RETRIEVAL_DIR or TEST_TSV}/audiocaps_test.tsv}"
TEST_FILE="${TEST_FILE:-${RETRIEVAL_DIR:?set RETRIEVAL_DIR or TEST_FILE}/audiocaps_test_texts.json}"
CHECKPOINT="${CHECKPOINT:-$ONE_PEACE_ROOT/checkpoints/audio_text_retrieval/checkpoint_best.pt}"
need_file "$TEST_FILE" TEST_FILE

evaluate_on_tsv audiocaps 16 bf16 --valid-file "$TEST_FILE" "$@"
