#!/usr/bin/env bash
# Real-data demonstration: pretrain the tiny ONE-PEACE on real photographs and sounds (CPU) and measure
# zero-shot and emergent retrieval on held-out concepts.
#
#   bash run_scripts/real_demo.sh [WORKDIR] [--fast]        (WORKDIR default ./real_demo_work)
#
#   1. fetches the real media if absent (run_scripts/fetch_real_media.sh: Debian's Tux Paint stamps,
#      real cut-out photographs with human-written captions, a fifth of them with a recorded sound);
#   2. prepares them (run_scripts/real_demo_data.py): whole concepts held out (20% of those with a
#      sound, 20% of the others), captions with the stamp's category ("A frog. Animals: amphibians.");
#   3. runs the quickstart's two stages on them (run_scripts/quickstart.sh with QUICKSTART_DATA):
#      stage 1 images with text, stage 2 sounds with text (text tower frozen) -- images and sounds are
#      never paired;
#   4. evaluates every kept checkpoint (run_scripts/real_demo_eval.py): held-out image->text and
#      audio->text top-1, and the emergent audio->image ranking, against chance; a table of how they
#      move with updates is written to WORKDIR/logs/table.md.
#
# The last line of stdout is
#   real_demo: image_to_text_top1=X (chance c) audio_to_text_top1=Y (chance c) audio_to_image_top1=Z
#   (chance c) audio_to_image_median_rank=R/N (chance r)
#
# Environment knobs (defaults in brackets):
#   REAL_DEMO_STAGE1_UPDATES   [3000; fast: 600]      REAL_DEMO_STAGE2_UPDATES  [1500; fast: 300]
#   REAL_DEMO_CAPTIONS         category | stamp (the caption alone)  [category]
#   REAL_DEMO_SPLIT_SEED       which concepts are held out  [0]
#   QUICKSTART_SEED            training seed  [1]
#   ONE_PEACE_REAL_MEDIA       the media cache  [~/.cache/one_peace/real_media]
#   PRECISION                  auto | bf16 | fp32 of both stages  [auto: as in run_scripts/quickstart.sh,
#                              measured for this job; models/precision.py]
#   ONE_PEACE_BPE_DIR, QUICKSTART_THREADS, PYTHON  as in run_scripts/quickstart.sh
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/quickstart_setup.sh"
DEFAULT_WORKDIR=./real_demo_work quickstart_setup real_demo 30 "$@"
quickstart_precision real_demo  # PREC: bf16 or fp32, handed to quickstart.sh (checked before anything runs)

START=$(date +%s)
say() { echo "[real_demo $(( $(date +%s) - START ))s] $*"; }

MEDIA="${ONE_PEACE_REAL_MEDIA:-$HOME/.cache/one_peace/real_media}"
if [ "$FAST" = "1" ]; then S1="${REAL_DEMO_STAGE1_UPDATES:-600}"; S2="${REAL_DEMO_STAGE2_UPDATES:-300}"
else S1="${REAL_DEMO_STAGE1_UPDATES:-3000}"; S2="${REAL_DEMO_STAGE2_UPDATES:-1500}"; fi
CAPTIONS="${REAL_DEMO_CAPTIONS:-category}"
DATA="$W/data"; LOGS="$W/logs"
mkdir -p "$LOGS"

# ---- 1. media -----------------------------------------------------------------------------------------
if [ ! -f "$MEDIA/tuxpaint/stamps.tsv" ]; then
  say "1/4 no real media in $MEDIA: fetching (run_scripts/fetch_real_media.sh)"
  FETCH_SPEECH=0 bash "$REPO/run_scripts/fetch_real_media.sh" "$MEDIA"
else
  say "1/4 real media in $MEDIA"
fi

# ---- 2. data ------------------------------------------------------------------------------------------
say "2/4 preparing $DATA (captions: $CAPTIONS, split seed ${REAL_DEMO_SPLIT_SEED:-0})"
rm -rf "$DATA"
"$PYTHON" "$REPO/run_scripts/real_demo_data.py" --media "$MEDIA/tuxpaint" --out "$DATA" \
  --captions "$CAPTIONS" --split-seed "${REAL_DEMO_SPLIT_SEED:-0}"

# ---- 3. the two pretraining stages --------------------------------------------------------------------
# Checkpoints at a quarter, half and three quarters of each stage.  fairseq skips an interval checkpoint
# that falls on an epoch's end, so the interval is nudged until none of them does.
interval() {  # $1 updates, $2 training rows, $3 batch size (quickstart.sh's stage batch)
  local every=$(( $1 / 4 )) per_epoch=$(( ($2 + $3 - 1) / $3 ))
  while (( every % per_epoch == 0 || 2 * every % per_epoch == 0 || 3 * every % per_epoch == 0 )); do
    every=$(( every + 1 ))
  done
  echo "$every"
}
E1="$(interval "$S1" $(( $(wc -l < "$DATA/image_text_train.tsv") - 1 )) 32)"
E2="$(interval "$S2" $(( $(wc -l < "$DATA/audio_text_train.tsv") - 1 )) 16)"
say "3/4 pretraining: stage 1 $S1 updates (images-text), stage 2 $S2 updates (sounds-text), $PREC"
PRECISION="$PREC" QUICKSTART_DATA="$DATA" QUICKSTART_STAGE1_UPDATES="$S1" QUICKSTART_STAGE2_UPDATES="$S2" \
  QUICKSTART_SAVE_EVERY="$E1,$E2" QUICKSTART_MAX_DURATION=3 QUICKSTART_FAST=0 \
  bash "$REPO/run_scripts/quickstart.sh" "$W" | sed -u 's/^quickstart:/[real_demo] quickstart line:/'
BPE="${ONE_PEACE_BPE_DIR:-$(sed -n 's/^  bpe_dir: //p' "$W/configs/stage1.yaml" | head -n1)}"

# ---- 4. evaluation ------------------------------------------------------------------------------------
say "4/4 evaluating the kept checkpoints"
nearest_checkpoint() {  # $1 stage dir, $2 updates: the kept checkpoint_E_U.pt with U nearest (fairseq skips
  # the interval checkpoint when an interval ends an epoch), printed as "U PATH"
  local f u d best="" best_d=""
  for f in "$1"/checkpoint_*_*.pt; do
    [ -f "$f" ] || continue
    u="${f##*_}"; u="${u%.pt}"
    d=$(( u > $2 ? u - $2 : $2 - u ))
    if [ -z "$best_d" ] || [ "$d" -lt "$best_d" ]; then best_d=$d; best="$u $f"; fi
  done
  [ -n "$best" ] || { echo "real_demo: no interval checkpoints in $1" >&2; exit 1; }
  echo "$best"
}
{
  echo "| stage-1 / stage-2 updates | image->text held-out (seen) | audio->text held-out (seen) | audio->image top-1 held-out (seen) | audio->image median rank held-out (seen) |"
  echo "|---|---|---|---|---|"
} > "$LOGS/table.md"
for q in 1 2 3 4; do
  if [ "$q" = 4 ]; then
    u1=$S1; u2=$S2; c1="$W/stage1/checkpoint_last.pt"; c2="$W/stage2/checkpoint_last.pt"
  else
    read -r u1 c1 <<< "$(nearest_checkpoint "$W/stage1" $((E1 * q)))"
    read -r u2 c2 <<< "$(nearest_checkpoint "$W/stage2" $((E2 * q)))"
  fi
  "$PYTHON" "$REPO/run_scripts/real_demo_eval.py" --data "$DATA" --bpe-dir "$BPE" --image-checkpoint "$c1" \
    --audio-checkpoint "$c2" --emergent-image-checkpoint "$W/stage1/checkpoint_last.pt" \
    --json "$LOGS/eval_$q.json" > "$LOGS/eval_$q.log"
  "$PYTHON" - "$LOGS/eval_$q.json" "$u1 / $u2" >> "$LOGS/table.md" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
v, t = r["valid"], r["train"]
cell = lambda k, f="{:.3f}": f"{f.format(v[k])} ({f.format(t[k])})"
print(f"| {sys.argv[2]} | {cell('image_to_text_top1')} | {cell('audio_to_text_top1')} | "
      f"{cell('audio_to_image_top1')} | {cell('audio_to_image_median_rank', '{:g}')} of {v['images']} ({t['images']}) |")
PY
done
grep '^\[eval\]' "$LOGS/eval_4.log"
echo "[real_demo] figures by updates (held-out, seen in brackets):"
cat "$LOGS/table.md"
say "done; logs in $LOGS"
tail -n 1 "$LOGS/eval_4.log"
