#!/usr/bin/env bash
# Quickstart: pretrain a tiny ONE-PEACE on a procedural dataset on CPU and evaluate zero-shot.
#
#   bash run_scripts/quickstart.sh [WORKDIR] [--fast]
#
#   1. generates a small image-text and audio-text dataset (python -m one_peace.data_utils.synthetic)
#      in the official TSV layouts under WORKDIR/data;
#   2. stage 1: image-text pretraining (fairseq-hydra-train --user-dir user_src, task image_text_pretrain);
#   3. stage 2: audio-text pretraining from the stage-1 checkpoint (stage2_pretrain: the image branch is
#      dropped and everything shared except the audio adapter/FFNs is frozen);
#   4. zero-shot evaluation on the held-out split: every held-out image (clip) must pick its caption among
#      all distinct captions of its kind.
#
# The last line of stdout is:  quickstart: image_to_text_acc=X audio_to_text_acc=Y
#
# WORKDIR (default ./quickstart_work) receives data/, configs/, logs/, tb/ (tensorboard), stage1/, stage2/
# (checkpoints).  Nothing outside WORKDIR is written or removed.
#
# Environment knobs (defaults in brackets):
#   ONE_PEACE_BPE_DIR           directory with encoder.json vocab.bpe dict.txt
#                               [../shared/assets/bpe next to the repo if present, else ~/.cache/one_peace/bpe]
#   QUICKSTART_FAST=1           (or --fast) the shortened CI variant: less data, fewer updates
#   QUICKSTART_STAGE1_UPDATES   stage-1 updates          [1500; fast: 300]
#   QUICKSTART_STAGE2_UPDATES   stage-2 updates          [1000; fast: 200]
#   QUICKSTART_SEED             data and training seed   [1]
#   QUICKSTART_THREADS          torch CPU threads        [all cores]
#   QUICKSTART_MOTION_SKETCHES=1  stage 1 also learns the captions of run_scripts/video_quickstart.sh [0]
#   QUICKSTART_DATA             train on this prepared dataset instead of generating one: the files the
#                               generator writes (image_text_{train,valid}.tsv, audio_text_{train,valid}.tsv,
#                               image_captions.json, audio_captions.json; run_scripts/real_demo.sh) []
#   QUICKSTART_SAVE_EVERY       also keep a checkpoint every N updates (checkpoint_E_N.pt), or N1,N2 for
#                               stage 1 and stage 2  [none]
#   QUICKSTART_IMAGE_SIZE       image side in pixels      [64]
#   QUICKSTART_MAX_DURATION     seconds of audio kept     [2]
#   PRECISION                   auto | bf16 | fp32 [auto: bf16 where the CPU has bf16 matrix units (AMX-BF16,
#                               AVX512-BF16) and bf16 is measured faster for the tiny model; models/precision.py]
#   PYTHON                      python with one_peace and fairseq installed [<repo>/.venv/bin/python, else python3]
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/quickstart_setup.sh"
quickstart_setup quickstart 37 "$@"

# ---- BPE files ----------------------------------------------------------------------------------------
has_bpe() { [ -f "$1/encoder.json" ] && [ -f "$1/vocab.bpe" ] && [ -f "$1/dict.txt" ]; }
if [ -n "${ONE_PEACE_BPE_DIR:-}" ]; then
  BPE="$ONE_PEACE_BPE_DIR"
elif has_bpe "$REPO/../shared/assets/bpe"; then
  BPE="$(cd "$REPO/../shared/assets/bpe" && pwd)"
else
  BPE="${XDG_CACHE_HOME:-$HOME/.cache}/one_peace/bpe"
fi
if ! has_bpe "$BPE"; then
  cat >&2 <<EOF
quickstart: no BPE files (encoder.json, vocab.bpe, dict.txt) in $BPE.
  Fetch them once:   $PYTHON -m one_peace.data_utils.bpe fetch      (writes ~/.cache/one_peace/bpe)
  or point ONE_PEACE_BPE_DIR to a directory that has them.
EOF
  exit 1
fi
export ONE_PEACE_BPE_DIR="$BPE"

# ---- settings -----------------------------------------------------------------------------------------
SEED="${QUICKSTART_SEED:-1}"
if [ "$FAST" = "1" ]; then
  N_TRAIN_IMAGES=1400; N_VALID_IMAGES=224; N_TRAIN_AUDIO=720; N_VALID_AUDIO=120
  STAGE1_UPDATES="${QUICKSTART_STAGE1_UPDATES:-300}"; STAGE2_UPDATES="${QUICKSTART_STAGE2_UPDATES:-200}"
else
  N_TRAIN_IMAGES=3200; N_VALID_IMAGES=448; N_TRAIN_AUDIO=1440; N_VALID_AUDIO=240
  STAGE1_UPDATES="${QUICKSTART_STAGE1_UPDATES:-1500}"; STAGE2_UPDATES="${QUICKSTART_STAGE2_UPDATES:-1000}"
fi
THREADS="${QUICKSTART_THREADS:-$(nproc 2>/dev/null || echo 2)}"
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
quickstart_precision quickstart  # PREC: bf16 or fp32 (both stages)

# Stage 1 (image-text)
LR1=1e-3; BSZ1=32; WARMUP1=50; IMAGE_SIZE="${QUICKSTART_IMAGE_SIZE:-64}"
# Stage 2 (audio-text)
LR2=2e-3; BSZ2=16; WARMUP2=30; MAX_DURATION="${QUICKSTART_MAX_DURATION:-2}"
# A narrower front end than the tiny preset's [(32,10,5)] + ... : the first conv layers run at the
# highest rates and dominate CPU time; same strides, hence the same 50 frames per second.
AUDIO_SPEC="[(16, 10, 5), (32, 3, 2)] + [(32, 3, 2)] * 3 + [(32, 2, 2)] * 2"

DATA="${QUICKSTART_DATA:-$W/data}"; CFG="$W/configs"; LOGS="$W/logs"; TB="$W/tb"
mkdir -p "$CFG" "$LOGS" "$TB"

START=$(date +%s)
elapsed() { echo "$(( $(date +%s) - START ))s"; }
say() { echo "[quickstart $(elapsed)] $*"; }

# Runs a command with its full output in a log file and the progress lines (fairseq's train_inner /
# epoch / valid lines, warnings, errors) on stdout; on failure prints the end of the log.
PROGRESS_RE='\]\[(train_inner|train|valid)\]|done training|[Ee]rror|Traceback|WARNING'
run_logged() {
  local log="$1"; shift
  set +e
  "$@" 2>&1 | tee "$log" | grep --line-buffered -E "$PROGRESS_RE" | cut -c1-400
  local rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" -ne 0 ]; then
    echo "quickstart: command failed (exit $rc): $*" >&2
    echo "---- last lines of $log ----" >&2
    tail -n 40 "$log" >&2
    exit "$rc"
  fi
}

# ---- 1. data ------------------------------------------------------------------------------------------
if [ -n "${QUICKSTART_DATA:-}" ]; then
  for f in image_text_train.tsv image_text_valid.tsv audio_text_train.tsv audio_text_valid.tsv \
           image_captions.json audio_captions.json; do
    [ -f "$DATA/$f" ] || { echo "quickstart: QUICKSTART_DATA=$DATA has no $f" >&2; exit 1; }
  done
  say "1/4 using the prepared dataset in $DATA"
else
  say "1/4 generating the synthetic dataset in $DATA (seed $SEED)"
  MOTION_FLAG=""
  if [ "${QUICKSTART_MOTION_SKETCHES:-0}" = "1" ]; then MOTION_FLAG="--motion-sketches"; fi
  "$PYTHON" -m one_peace.data_utils.synthetic --out "$DATA" --seed "$SEED" \
    --n-train-images "$N_TRAIN_IMAGES" --n-valid-images "$N_VALID_IMAGES" \
    --n-train-audio "$N_TRAIN_AUDIO" --n-valid-audio "$N_VALID_AUDIO" $MOTION_FLAG
fi

# ---- configs ------------------------------------------------------------------------------------------
# Shared model block: the tiny preset (64 wide, 2 layers, 4 heads; decoder 32 wide, 1 layer) with the
# narrower audio front end above.  Both stages carry the same audio adapter so stage 2 can load stage 1.
model_block() {
  cat <<EOF
model:
  _name: one_peace_pretrain_tiny
  stage2_pretrain: $1
  reset_logit_scale: $1
  encoder:
    use_image_moe: $2
    use_layer_scale: false
    image_adapter:
      bucket_size: $((IMAGE_SIZE / 16))
    audio_adapter:
      feature_encoder_spec: "$AUDIO_SPEC"
  decoder:
    use_image_moe: $2
EOF
}

common_block() {  # $1 stage name, $2 lr, $3 batch size, $4 updates, $5 warmup
  cat <<EOF
# @package _group_
# Written by run_scripts/quickstart.sh; run with
#   fairseq-hydra-train --config-dir $CFG --config-name $1 hydra.job.chdir=False
common:
  cpu: true
EOF
  bf16_yaml
  cat <<EOF
  seed: $SEED
  log_format: simple
  log_interval: 20
  tensorboard_logdir: $TB/$1
  user_dir: $REPO/user_src
dataset:
  batch_size: $3
  num_workers: 0
  # fairseq prefetches batches in a background thread by default; on a 2-core CPU that thread and
  # torch's compute threads slow each other down (stage 2 ran 1.5x slower with it).
  data_buffer_size: 0
  validate_interval: 1000
  ignore_unused_valid_subsets: true
optimization:
  max_update: $4
  lr: [$2]
  clip_norm: 1.0
optimizer:
  _name: adam
  adam_betas: "(0.9, 0.98)"
  weight_decay: 0.01
lr_scheduler:
  _name: cosine
  warmup_updates: $5
EOF
}

save_every_block() {  # $1 stage number: intermediate checkpoints (QUICKSTART_SAVE_EVERY), all kept
  local every="${QUICKSTART_SAVE_EVERY:-}"
  case "$every" in *,*) if [ "$1" = 1 ]; then every="${every%%,*}"; else every="${every#*,}"; fi ;; esac
  if [ -n "$every" ]; then
    printf '  save_interval_updates: %s\n  keep_interval_updates: -1\n' "$every"
  fi
}

{
  common_block stage1 "$LR1" "$BSZ1" "$STAGE1_UPDATES" "$WARMUP1"
  cat <<EOF
task:
  _name: image_text_pretrain
  data: $DATA/image_text_train.tsv
  valid_data: $DATA/image_text_valid.tsv
  bpe_dir: $BPE
  patch_image_size: $IMAGE_SIZE
criterion:
  _name: image_text_pretrain_loss
checkpoint:
  save_dir: $W/stage1
  save_interval: 1000
  no_epoch_checkpoints: true
  no_save_optimizer_state: true
$(save_every_block 1)
EOF
  model_block false true
} > "$CFG/stage1.yaml"

{
  common_block stage2 "$LR2" "$BSZ2" "$STAGE2_UPDATES" "$WARMUP2"
  cat <<EOF
task:
  _name: audio_text_pretrain
  data: $DATA/audio_text_train.tsv
  valid_data: $DATA/audio_text_valid.tsv
  bpe_dir: $BPE
  max_duration: $MAX_DURATION
  feature_encoder_spec: "$AUDIO_SPEC"
criterion:
  _name: audio_text_pretrain_loss
checkpoint:
  save_dir: $W/stage2
  save_interval: 1000
  no_epoch_checkpoints: true
  no_save_optimizer_state: true
$(save_every_block 2)
  restore_file: $W/stage1/checkpoint_last.pt
  reset_optimizer: true
  reset_dataloader: true
  reset_meters: true
  reset_lr_scheduler: true
EOF
  model_block true false
} > "$CFG/stage2.yaml"

# A rerun in the same WORKDIR starts training afresh (fairseq would otherwise resume checkpoint_last.pt).
rm -rf "$W/stage1" "$W/stage2" "$TB/stage1" "$TB/stage2"

train() {  # $1 stage name
  run_logged "$LOGS/$1.log" "$HYDRA_TRAIN" --config-dir "$CFG" --config-name "$1" \
    hydra.job.chdir=False hydra.run.dir="$W/hydra/$1" hydra.output_subdir=null
}

# ---- 2. stage 1 ---------------------------------------------------------------------------------------
say "2/4 stage 1: image-text pretraining ($STAGE1_UPDATES updates, batch $BSZ1, ${IMAGE_SIZE}px, $PREC;" \
    "log $LOGS/stage1.log)"
train stage1

# ---- 3. stage 2 ---------------------------------------------------------------------------------------
say "3/4 stage 2: audio-text pretraining from stage 1 ($STAGE2_UPDATES updates, batch $BSZ2; log $LOGS/stage2.log)"
train stage2

# ---- 4. evaluation ------------------------------------------------------------------------------------
say "4/4 zero-shot evaluation on the held-out split"
"$PYTHON" "$REPO/run_scripts/quickstart_eval.py" --data "$DATA" --bpe-dir "$BPE" \
  --image-checkpoint "$W/stage1/checkpoint_last.pt" --audio-checkpoint "$W/stage2/checkpoint_last.pt" \
  | tee "$LOGS/eval.log" | grep -v '^quickstart:' || true
RESULT="$(grep '^quickstart:' "$LOGS/eval.log" || true)"
if [ -z "$RESULT" ]; then
  echo "quickstart: evaluation failed; see $LOGS/eval.log" >&2
  exit 1
fi
say "done; tensorboard logs: $TB (tensorboard --logdir $TB)"
echo "$RESULT"
