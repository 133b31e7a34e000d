#!/usr/bin/env bash
# The standing GPU duty in one call of the device tool.  Here first: `bash bench/device_carry.sh`; then
#
#     run(command="bash bench/device_check.sh", carry=[".gpu_carry"], timeout_s=540)
#
# Steps, in order of what matters most, each under its own time limit and all within DEVICE_CHECK_SECONDS
# (default 480: with the machine's start, a part can still be rerun inside the session's 15 device minutes):
#   env        the GPU, torch, triton, and an import of the plugin with fairseq (fails without CUDA)
#   self_check python -m one_peace.models.kernels_self_check (Triton kernels against float64, then timing)
#   attention  bench/attention.py (fused Triton attention against SDPA and the explicit reference)
#   train      fairseq-train, 10 updates of the tiny model each with --fp16, --bf16, --memory-efficient-bf16
#              and --fp16 with the fused kernels switched on; each must write its checkpoint with finite losses
#   pretrain   bench/pretrain.py --device cuda (base, both stages, fp32 / bf16)
#   load       bench/load.py --throughput --device cuda (hub embedding rate, base size, fp32 / bf16)
#   gpu_tests  pytest -m gpu (the kernel tests that skip without CUDA)
# `bash bench/device_check.sh attention load` runs only the named steps; DEVICE_CHECK_TRAIN_ARGS adds flags to
# the fairseq-train runs (`--cpu` tries the bf16 ones on a machine without a GPU).  Each step's output goes to
# $OUT/<step>.log (the files that come back); the last lines printed are one row per step.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CARRY=${DEVICE_CARRY:-$REPO/.gpu_carry}  # written by bench/device_carry.sh
OUT=${OUT:-$(mktemp -d)}
WORK=${TMPDIR:-/tmp}/one_peace_device_check
BUDGET=${DEVICE_CHECK_SECONDS:-480}

if [ "${1:-}" = --inner ]; then  # a step's body, run under `timeout` by the outer script
  case "$2" in
    env)
      set -e
      nvidia-smi -L
      nvidia-smi --query-gpu=clocks.sm,clocks.mem,memory.used,memory.total --format=csv
      python3 -c 'import torch, triton; assert torch.cuda.is_available(), "torch sees no CUDA device"
print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
      python3 -c 'import fairseq, one_peace.user_src; print("fairseq", fairseq.__version__, "plugin imports")' ;;
    train)
      rm -rf "$WORK/data" && python3 -m one_peace.data_utils.synthetic --out "$WORK/data" --n-train-images 64 \
        --n-valid-images 16 --n-train-audio 0 --n-valid-audio 0 || exit 1
      status=0
      for variant in fp16:--fp16 bf16:--bf16 bf16-memory-efficient:--memory-efficient-bf16 fp16-fused:--fp16; do
        name=${variant%%:*} flag=${variant#*:} save="$WORK/ckpt_${variant%%:*}"
        attention=sdpa layer_norm=torch; [ "$name" = fp16-fused ] && attention=fused layer_norm=fused
        rm -rf "$save"
        echo "--- fairseq-train $flag, ONE_PEACE_ATTENTION=$attention ONE_PEACE_LAYER_NORM=$layer_norm"
        start=$(date +%s)
        ONE_PEACE_ATTENTION=$attention ONE_PEACE_LAYER_NORM=$layer_norm fairseq-train \
          "$WORK/data/image_text_train.tsv" --valid-data "$WORK/data/image_text_valid.tsv" --user-dir user_src \
          --task image_text_pretrain --arch one_peace_pretrain_tiny --criterion image_text_pretrain_loss \
          --optimizer adam --lr 1e-4 --batch-size 8 --max-update 10 --log-interval 2 --log-format simple \
          --data-buffer-size 0 --ignore-unused-valid-subsets --save-dir "$save" "$flag" ${DEVICE_CHECK_TRAIN_ARGS:-} \
          > "$WORK/train.log" 2>&1
        rc=$?
        cat "$WORK/train.log"
        if [ $rc -ne 0 ] || [ ! -f "$save/checkpoint_last.pt" ]; then
          echo "--- $name: FAILED (rc $rc, checkpoint_last.pt $( [ -f "$save/checkpoint_last.pt" ] && echo written ||
            echo missing))"; status=1
        elif grep -qiE "loss[ =:|]+(nan|inf)" "$WORK/train.log"; then
          echo "--- $name: FAILED (a loss is not finite)"; status=1
        else
          echo "--- $name: ok in $(( $(date +%s) - start )) s; $(grep -E 'train \| epoch' "$WORK/train.log" | tail -1)"
        fi
      done
      exit $status ;;
  esac
  exit 2
fi

declare -A LIMIT=([env]=60 [self_check]=150 [gpu_tests]=120 [attention]=90 [train]=200 [pretrain]=150 [load]=90)
declare -A COMMAND=(
  [env]="bash $REPO/bench/device_check.sh --inner env"
  [self_check]="python3 -m one_peace.models.kernels_self_check"
  [gpu_tests]="python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py tests/test_layer_norm_kernel.py"
  [attention]="python3 bench/attention.py --iters 10"
  [train]="bash $REPO/bench/device_check.sh --inner train"
  [pretrain]="python3 bench/pretrain.py --device cuda --arch base --stage 1 2 --precision fp32 bf16 --steps 5"
  [load]="python3 bench/load.py --throughput --size base --precision fp32 bf16 --device cuda --images 32 --clips 16 --workdir $WORK/load"
)
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(env self_check attention train pretrain load gpu_tests)
for step in "${STEPS[@]}"; do
  [ -n "${COMMAND[$step]:-}" ] || { echo "device_check: no step '$step' (${!COMMAND[*]})"; exit 2; }
done

T0=$(date +%s)
if [ -d "$CARRY/wheels" ]; then  # what the image lacks (bench/device_carry.sh); the plugin itself through a link
  python3 -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$CARRY"/wheels/*.whl || { echo "device_check: the carried wheels did not install"; exit 1; }
fi
mkdir -p /tmp/plugin && ln -sfn "$REPO" /tmp/plugin/one_peace
export PYTHONPATH=/tmp/plugin:/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
[ -d "$CARRY/shared" ] && export ONE_PEACE_SHARED=$CARRY/shared ONE_PEACE_BPE_DIR=$CARRY/shared/assets/bpe
mkdir -p "$WORK" "$OUT"

ROWS=()
failed=0
for step in "${STEPS[@]}"; do
  left=$(( BUDGET - ($(date +%s) - T0) ))
  limit=${LIMIT[$step]}
  if [ "$left" -lt 30 ]; then ROWS+=("| $step | skipped: DEVICE_CHECK_SECONDS spent | - |"); failed=1; continue; fi
  [ "$limit" -gt "$left" ] && limit=$left
  start=$(date +%s)
  echo "=== $step (limit ${limit} s): ${COMMAND[$step]}"
  # shellcheck disable=SC2086  # the commands are word lists
  timeout -k 10 "$limit" ${COMMAND[$step]} > "$OUT/$step.log" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  case $rc in
    0) verdict=ok ;;
    124|137) verdict="timed out after ${limit} s"; failed=1 ;;
    *) verdict="failed (exit $rc)"; failed=1 ;;
  esac
  ROWS+=("| $step | $verdict | $took |")
  echo "=== $step: $verdict in $took s; last lines:"
  tail -n 6 "$OUT/$step.log"
done
echo
echo "| step | result | seconds |"
echo "|---|---|---|"
printf '%s\n' "${ROWS[@]}" | tee "$OUT/summary.md"
exit $failed
