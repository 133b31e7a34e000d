#!/usr/bin/env bash
# Evaluate a grounding checkpoint: iou_acc (IoU >= 0.5) on a split; predictions hold each phrase's box
# in its image's pixels.  Splits: ${DATASET}_{val,testA,testB} (RefCOCO/+), ${DATASET}_{val,test} (RefCOCOg).
#   REFCOCO_DIR=/data/refcoco CHECKPOINT=checkpoints/refcoco/checkpoint_best.pt [DATASET=refcoco+] [SPLIT=testA] bash run_scripts/refcoco/evaluate.sh [evaluator flags]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

DATASET="${DATASET:-refcoco}"
TEST_TSV="${TEST_TSV:-${REFCOCO_DIR:?set REFCOCO_DIR or TEST_TSV}/${DATASET}_${SPLIT:-val}.tsv}"
CHECKPOINT="${CHECKPOINT:-$ONE_PEACE_ROOT/checkpoints/$DATASET/checkpoint_best.pt}"

evaluate_on_tsv "$DATASET" 16 bf16 "$@"
