#!/usr/bin/env bash
# Video quickstart: pretrain the video branch of the quickstart's tiny ONE-PEACE on procedural clips on
# CPU and evaluate zero-shot video -> text retrieval, including captions that differ only in the motion.
#
#   bash run_scripts/video_quickstart.sh [WORKDIR] [--fast]
#
#   1. reuses WORKDIR/stage1 and WORKDIR/stage2 of run_scripts/quickstart.sh, running it first (with
#      QUICKSTART_MOTION_SKETCHES=1: stage 1 learns the motion words from sketches) when they are missing
#      or were trained without the motion sketches;
#   2. generates 8-frame clips of coloured shapes moving left/right/up/down, growing, shrinking or
#      rotating, with templated captions and a disjoint held-out split (python -m
#      one_peace.data_utils.synthetic_video) under WORKDIR/video_data;
#   3. video-text pretraining (task video_text_pretrain) from the stage-2 checkpoint with the stage-2
#      freezing: shared attention and text frozen; the video adapter, FFNs and final LayerNorm train;
#      the video branch starts from the stage-1 image branch (video_adapter.image_init_checkpoint);
#   4. zero-shot evaluation on the held-out clips (run_scripts/video_quickstart_eval.py).
#
# The last line of stdout is:  video_quickstart: video_to_text_acc=X motion_acc=Y
# (X: each clip picks its caption among all 52; Y: its caption against the caption with the reversed
# motion -- left/right, up/down, growing/shrinking -- where a model that ignores time scores 0.5).
#
# Environment knobs (defaults in brackets): QUICKSTART_FAST=1 (or --fast) the shortened CI variant;
#   VIDEO_QUICKSTART_UPDATES  video pretraining updates [2000; fast: 500, after a quickstart --fast
#                             whose stage 1 has 800 updates]
#   PRECISION                 auto | bf16 | fp32 of the video pretraining, and of the quickstart when it runs
#                             [auto: as in run_scripts/quickstart.sh, measured for this job; models/precision.py]
#   QUICKSTART_SEED, QUICKSTART_THREADS, ONE_PEACE_BPE_DIR, PYTHON  as in run_scripts/quickstart.sh
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/quickstart_setup.sh"
quickstart_setup video_quickstart 27 "$@"
quickstart_precision video_quickstart  # PREC: bf16 or fp32 (checked before anything runs)

FAST_STAGE1_UPDATES=800
START=$(date +%s)
say() { echo "[video_quickstart $(( $(date +%s) - START ))s] $*"; }

# ---- 1. the quickstart's checkpoints ------------------------------------------------------------------
# The video captions' motion words must be known to the frozen text tower: stage 1 has to have seen the
# motion sketches (QUICKSTART_MOTION_SKETCHES=1); a quickstart run without them is redone.
if [ ! -f "$W/stage2/checkpoint_last.pt" ] || [ ! -f "$W/stage1/checkpoint_last.pt" ] \
   || ! grep -q '"a red circle moving left"' "$W/data/image_captions.json" 2>/dev/null; then
  say "1/4 no stage-2 checkpoint with the motion words in $W: running run_scripts/quickstart.sh first"
  if [ "$FAST" = "1" ]; then  # the quickstart's --fast stage 1 (300 updates) does not separate the video captions
    export QUICKSTART_STAGE1_UPDATES="${QUICKSTART_STAGE1_UPDATES:-$FAST_STAGE1_UPDATES}"
  fi
  QUICKSTART_FAST="$FAST" QUICKSTART_MOTION_SKETCHES=1 bash "$REPO/run_scripts/quickstart.sh" "$W" \
    | sed -u 's/^quickstart:/[video_quickstart] quickstart result:/'
else
  say "1/4 reusing $W/stage1 and $W/stage2"
fi
BPE="${ONE_PEACE_BPE_DIR:-}"
if [ -z "$BPE" ]; then  # the one the quickstart used
  BPE="$(sed -n 's/^  bpe_dir: //p' "$W/configs/stage2.yaml" | head -n1)"
fi

# ---- settings -----------------------------------------------------------------------------------------
SEED="${QUICKSTART_SEED:-1}"
if [ "$FAST" = "1" ]; then
  N_TRAIN=1040; N_VALID=104; UPDATES="${VIDEO_QUICKSTART_UPDATES:-500}"
else
  N_TRAIN=2080; N_VALID=208; UPDATES="${VIDEO_QUICKSTART_UPDATES:-2000}"
fi
THREADS="${QUICKSTART_THREADS:-$(nproc 2>/dev/null || echo 2)}"
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
LR="${VIDEO_QUICKSTART_LR:-2e-3}"; BSZ=16; WARMUP=30; IMAGE_SIZE=64; FRAMES=8
VD="$W/video_data"; CFG="$W/configs"; LOGS="$W/logs"; TB="$W/tb"
mkdir -p "$CFG" "$LOGS" "$TB"

# ---- 2. data ------------------------------------------------------------------------------------------
say "2/4 generating $N_TRAIN + $N_VALID clips in $VD (seed $SEED)"
"$PYTHON" -m one_peace.data_utils.synthetic_video --out "$VD" --seed "$SEED" --n-train "$N_TRAIN" --n-valid "$N_VALID"

# ---- 3. video-text pretraining ------------------------------------------------------------------------
{
  cat <<YAML
# @package _group_
# Written by run_scripts/video_quickstart.sh; run with
#   fairseq-hydra-train --config-dir $CFG --config-name video hydra.job.chdir=False
common:
  cpu: true
YAML
  bf16_yaml
  cat <<YAML
  seed: $SEED
  log_format: simple
  log_interval: 20
  tensorboard_logdir: $TB/video
  user_dir: $REPO/user_src
dataset:
  batch_size: $BSZ
  num_workers: 0
  data_buffer_size: 0
  validate_interval: 1000
  ignore_unused_valid_subsets: true
optimization:
  max_update: $UPDATES
  lr: [$LR]
  clip_norm: 1.0
optimizer:
  _name: adam
  adam_betas: "(0.9, 0.98)"
  weight_decay: 0.01
lr_scheduler:
  _name: cosine
  warmup_updates: $WARMUP
task:
  _name: video_text_pretrain
  data: $VD/video_text_train.tsv
  valid_data: $VD/video_text_valid.tsv
  bpe_dir: $BPE
  patch_image_size: $IMAGE_SIZE
  num_frames: $FRAMES
criterion:
  _name: video_text_pretrain_loss
checkpoint:
  save_dir: $W/video
  save_interval: 1000
  no_epoch_checkpoints: true
  no_save_optimizer_state: true
  restore_file: $W/stage2/checkpoint_last.pt
  reset_optimizer: true
  reset_dataloader: true
  reset_meters: true
  reset_lr_scheduler: true
model:
  _name: one_peace_pretrain_tiny
  stage2_pretrain: true
  encoder:
    use_image_moe: false
    use_audio_moe: false
    use_video_moe: true
    use_layer_scale: false
    video_adapter:
      bucket_size: $((IMAGE_SIZE / 16))
      num_frames: $FRAMES
      image_init_checkpoint: $W/stage1/checkpoint_last.pt
  decoder:
    use_image_moe: false
    use_audio_moe: false
    use_video_moe: true
YAML
} > "$CFG/video.yaml"
rm -rf "$W/video" "$TB/video"
say "3/4 video-text pretraining from stage 2 ($UPDATES updates, batch $BSZ, $FRAMES frames of ${IMAGE_SIZE}px," \
    "$PREC; log $LOGS/video.log)"
set +e
"$HYDRA_TRAIN" --config-dir "$CFG" --config-name video hydra.job.chdir=False hydra.run.dir="$W/hydra/video" \
  hydra.output_subdir=null 2>&1 | tee "$LOGS/video.log" \
  | grep --line-buffered -E '\]\[(train_inner|train|valid)\]|done training|[Ee]rror|Traceback|video branch' | cut -c1-400
RC=${PIPESTATUS[0]}
set -e
if [ "$RC" -ne 0 ]; then
  echo "video_quickstart: training failed (exit $RC); last lines of $LOGS/video.log:" >&2
  tail -n 40 "$LOGS/video.log" >&2
  exit "$RC"
fi

# ---- 4. evaluation ------------------------------------------------------------------------------------
say "4/4 zero-shot evaluation on the held-out clips"
"$PYTHON" "$REPO/run_scripts/video_quickstart_eval.py" --data "$VD" --bpe-dir "$BPE" \
  --checkpoint "$W/video/checkpoint_last.pt" | tee "$LOGS/video_eval.log" | grep -v '^video_quickstart:' || true
RESULT="$(grep '^video_quickstart:' "$LOGS/video_eval.log" || true)"
[ -n "$RESULT" ] || { echo "video_quickstart: evaluation failed; see $LOGS/video_eval.log" >&2; exit 1; }
say "done"
echo "$RESULT"
