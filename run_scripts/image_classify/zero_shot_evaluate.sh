#!/usr/bin/env bash
# Zero-shot ImageNet classification straight from an image-text checkpoint (one-peace.pt or a retrieval
# checkpoint): class-name prompts (TEMPLATES: default = CLIP's 7 selected, clip80 = CLIP's 80 ImageNet
# templates, or a file with one template per line), averaged per class; top-1 accuracy and top5.
#   IMAGENET_DIR=/data/imagenet ONE_PEACE_CHECKPOINT=one-peace.pt [TEMPLATES=clip80] bash run_scripts/image_classify/zero_shot_evaluate.sh [--cpu ...]
# Data: $IMAGENET_DIR/imagenet_val.tsv and imagenet_classes.tsv (convert_imagenet.py), or TEST_TSV / CLASS_NAMES.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../common.sh"

TEST_TSV="${TEST_TSV:-${IMAGENET_DIR:?set IMAGENET_DIR or TEST_TSV}/imagenet_val.tsv}"
CLASS_NAMES="${CLASS_NAMES:-${IMAGENET_DIR:?set IMAGENET_DIR or CLASS_NAMES}/imagenet_classes.tsv}"
CHECKPOINT="${CHECKPOINT:-${ONE_PEACE_CHECKPOINT:?set ONE_PEACE_CHECKPOINT or CHECKPOINT}}"
need_file "$TEST_TSV" TEST_TSV
need_file "$CLASS_NAMES" CLASS_NAMES
need_checkpoint "$CHECKPOINT" CHECKPOINT
args=()
if [ -n "${BPE_DIR:-}" ]; then args+=(--bpe-dir "$BPE_DIR"); fi
case "${PRECISION:-fp32}" in
  bf16|fp16) args+=(--dtype "$PRECISION") ;;
  fp32|auto) ;;  # auto: this script's default, fp32
  *) die "PRECISION must be auto, bf16, fp16 or fp32, got $PRECISION" ;;
esac

"${PYTHON:-python}" -m one_peace.zero_shot_classify --path "$CHECKPOINT" --data "$TEST_TSV" \
  --class-names "$CLASS_NAMES" --templates "${TEMPLATES:-default}" --subset "${SUBSET:-val}" \
  --batch-size "${BATCH:-64}" --results-path "${RESULTS_DIR:-$ONE_PEACE_ROOT/results/zero_shot_imagenet}" \
  "${args[@]}" "$@"
