#!/usr/bin/env bash
# Segmentation learns: fine-tune a quickstart checkpoint on generated scenes and score held-out ones.
#
#   bash run_scripts/segmentation/demo.sh [WORKDIR]
#
#   1. a quickstart stage-1 checkpoint (tiny image-text model, 64 px): $SEG_DEMO_CHECKPOINT if set, else
#      WORKDIR/quickstart/stage1/checkpoint_last.pt, made by run_scripts/quickstart.sh when missing (~5 min);
#   2. scenes (python -m one_peace.data_utils.synthetic_scenes: coloured shapes on textured backgrounds,
#      5 classes, 96x80 px) in the ADE20K layout, 400 training and 60 disjoint held-out ones, converted
#      with convert_ade20k.py;
#   3. finetune.sh: the tiny UperNet on the checkpoint's encoder, 64 px crops, CPU, $SEG_DEMO_EPOCHS
#      epochs (default 6, 50 updates each at batch 8);
#   4. evaluate.sh on the held-out scenes (sliding 64 px windows, stride 32; masks as PNGs), then
#      demo_report.py: the model's mIoU beside the all-background predictor's.
#
# Last line:  segmentation demo: mIoU=X all_background_mIoU=Y
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
. "$HERE/../common.sh"  # -h/--help; PYTHON and its bin directory on PATH
W="${1:-./segmentation_demo}"
mkdir -p "$W" && W="$(cd "$W" && pwd)"
export PYTHONUNBUFFERED=1
THREADS="${SEG_DEMO_THREADS:-$(nproc 2>/dev/null || echo 2)}"
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"

CKPT="${SEG_DEMO_CHECKPOINT:-$W/quickstart/stage1/checkpoint_last.pt}"
if [ ! -f "$CKPT" ]; then
  echo "[demo] no checkpoint at $CKPT: running the quickstart (stage 1 is what we need)"
  bash "$REPO/run_scripts/quickstart.sh" "$W/quickstart"
fi

echo "[demo] generating scenes"
rm -rf "$W/scenes" "$W/data" "$W/ckpt" "$W/results"
"$PYTHON" -m one_peace.data_utils.synthetic_scenes --out "$W/scenes" --n-train 400 --n-valid 60
"$PYTHON" "$HERE/convert_ade20k.py" --ade-root "$W/scenes" --out-dir "$W/data"

echo "[demo] fine-tuning from $CKPT (log $W/finetune.log)"
START=$(date +%s)
# The quickstart model: tiny preset without layer scale, 64 px images (4x4 patches); one CPU process.
TRAIN_TSV="$W/data/ade20k_train.tsv" VALID_TSV="$W/data/ade20k_val.tsv" ONE_PEACE_CHECKPOINT="$CKPT" \
  BATCH=8 UPDATE_FREQ=1 EPOCHS="${SEG_DEMO_EPOCHS:-6}" SAVE_DIR="$W/ckpt" \
  bash "$HERE/finetune.sh" model._name=one_peace_segmentation_tiny ++model.encoder.use_layer_scale=false \
  ++model.encoder.image_adapter.bucket_size=4 model.encoder.drop_path_rate=0.0 \
  model.encoder.checkpoint_activations=false common.cpu=true common.bf16=false common.memory_efficient_bf16=false \
  common.log_interval=25 dataset.num_workers=0 dataset.data_buffer_size=0 dataset.validate_interval=1 \
  checkpoint.save_interval=1 checkpoint.no_epoch_checkpoints=true "optimization.lr=[1e-3]" \
  task.num_classes=5 "task.label_file=$W/scenes/scene_classes.json" task.patch_image_size=64 \
  task.resize_short=80 task.resize_long=384 task.slide_stride=32 > "$W/finetune.log" 2>&1 \
  || { tail -n 40 "$W/finetune.log"; exit 1; }
grep -E "\[valid\]" "$W/finetune.log" | sed 's/.*valid on/  valid/' | cut -c1-200
echo "[demo] fine-tuning took $(( $(date +%s) - START ))s"

TEST_TSV="$W/data/ade20k_val.tsv" CHECKPOINT="$W/ckpt/checkpoint_best.pt" RESULTS_DIR="$W/results" PRECISION=fp32 \
  bash "$HERE/evaluate.sh" --cpu > "$W/evaluate.log" 2>&1 || { tail -n 40 "$W/evaluate.log"; exit 1; }
echo "[demo] masks: $W/results/test_masks/"
"$PYTHON" "$HERE/demo_report.py" --valid-tsv "$W/data/ade20k_val.tsv" --metrics "$W/results/test_metrics.json"
