#!/usr/bin/env bash
# ESC-50 zero-shot classification (the paper's ESC-50 number): every clip is matched against
# "This is a sound of <label>" for the 50 labels; txt_r1 is the accuracy.
#   ESC50_DIR=/data/esc50 ONE_PEACE_CHECKPOINT=one-peace.pt bash run_scripts/esc50/zero_shot_evaluate.sh [evaluator flags]
# Data: $ESC50_DIR/esc50.tsv and esc50_label.json from convert_esc50.py (or ESC50_TSV / ESC50_LABELS).
# The model comes from the checkpoint (rebuilt as one_peace_retrieval), the task from here.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

ESC50_TSV="${ESC50_TSV:-${ESC50_DIR:?set ESC50_DIR or ESC50_TSV}/esc50.tsv}"
ESC50_LABELS="${ESC50_LABELS:-${ESC50_DIR:?set ESC50_DIR or ESC50_LABELS}/esc50_label.json}"
CHECKPOINT="${CHECKPOINT:-${ONE_PEACE_CHECKPOINT:?set ONE_PEACE_CHECKPOINT or CHECKPOINT}}"
need_file "$ESC50_TSV" ESC50_TSV
need_file "$ESC50_LABELS" ESC50_LABELS
need_checkpoint "$CHECKPOINT" CHECKPOINT
PRECISION_FLAGS="$(precision_flags bf16 "$@")" || exit 1  # a bad PRECISION stops here

one_peace_evaluate "$ESC50_TSV" --path "$CHECKPOINT" --gen-subset esc50 \
  --task audio_text_retrieval --zero-shot --head-type al --use-template \
  --valid-file "$ESC50_LABELS" --selected-cols uniq_id,audio,text,duration \
  --model-overrides "{'model': {'_name': 'one_peace_retrieval'}}" \
  --batch-size "${BATCH:-16}" --results-path "${RESULTS_DIR:-$ONE_PEACE_ROOT/results/esc50}" \
  $PRECISION_FLAGS "$@"
