# Shared helpers of the run scripts; source it:  . "$(dirname "$0")/../common.sh"
#
# Environment (all optional except where a script says otherwise):
#   NUM_GPUS             GPUs per node (default 1); > 1 launches torchrun
#   MASTER_PORT          torchrun port (default 29500)
#   ONE_PEACE_CHECKPOINT pretrained checkpoint to fine-tune from (one-peace.pt, or its one-peace-convert directory)
#   BPE_DIR              dir with encoder.json, vocab.bpe, dict.txt (default: $ONE_PEACE_BPE_DIR / the cache)
#   SAVE_DIR, RESULTS_DIR  outputs (defaults under ./checkpoints and ./results)
#   PYTHON               interpreter with one_peace installed (default: the repository's .venv, else python3)
#   PRECISION            auto (default) | bf16 | fp32 for fine-tuning; evaluation also takes fp16.  auto: bf16 on
#                        a GPU that supports it, and on a CPU with bf16 matrix units (AMX-BF16, AVX512-BF16) for the
#                        jobs measured faster in bf16 (models/precision.py); fp32 otherwise
#
# Sourcing it also answers -h/--help (the calling script's header comment) and puts the interpreter's
# bin directory first on PATH, so one-peace-evaluate, one-peace-hydra-train and torchrun are the
# project's own without activating the venv.
ONE_PEACE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# print_usage SCRIPT: its header comment (the lines after the shebang up to the first non-comment line)
print_usage() {
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$1"
}

# find_project_python: sets and exports PYTHON, checked to import one_peace; exits with a clear message if not
find_project_python() {
  if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ONE_PEACE_ROOT/.venv/bin/python" ]; then PYTHON="$ONE_PEACE_ROOT/.venv/bin/python"
    else PYTHON="$(command -v python3 || true)"; fi
  fi
  if [ -z "$PYTHON" ] || ! "$PYTHON" -c "import one_peace" 2>/dev/null; then
    echo "error: ${PYTHON:-python3} cannot import one_peace; install the project first (README, Set-up:" \
         "python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e '.[dev]') or set PYTHON" >&2
    exit 1
  fi
  PATH="$(dirname "$PYTHON"):$PATH"
  export PYTHON PATH
}

case "${1:-}" in -h|--help) print_usage "$0"; exit 0 ;; esac
find_project_python
NUM_GPUS="${NUM_GPUS:-1}"
MASTER_PORT="${MASTER_PORT:-29500}"

die() { echo "error: $*" >&2; exit 1; }

need_file() {  # need_file PATH WHAT
  [ -n "$1" ] || die "$2 is not set"
  [ -f "$1" ] || die "$2 not found: $1"
}

need_checkpoint() {  # need_checkpoint PATH WHAT: a .pt file, or a model directory of one-peace-convert
  [ -n "$1" ] || die "$2 is not set"
  [ -f "$1" ] || [ -f "$1/config.json" ] || die "$2 not found: $1 (a checkpoint file or a model directory)"
}

tsv_rows() {  # data rows of a TSV (header excluded)
  echo $(( $(wc -l < "$1") - 1 ))
}

# resolve_precision JOB DEVICE: prints bf16 or fp32 for $PRECISION (auto when unset) on DEVICE (cpu | cuda |
# auto: cuda when torch sees a GPU); a bad PRECISION prints one error line and fails
resolve_precision() {
  "$PYTHON" -m one_peace.models.precision "$1" --requested "${PRECISION:-auto}" --device "$2"
}

# one_peace_train CONFIG_DIR CONFIG_NAME [hydra overrides...]
one_peace_train() {
  local config_dir=$1 config_name=$2 device=cpu precision arg note overridden=""
  shift 2
  if [ "$NUM_GPUS" -gt 0 ]; then device=auto; fi
  precision="$(resolve_precision finetune "$device")" || exit 2
  for arg in "$@"; do  # the caller's precision overrides, named in the message (they win)
    case "$arg" in
      *common.bf16=*|*common.memory_efficient_bf16=*|*common.fp16=*|*common.amp=*) overridden+=" $arg" ;;
    esac
  done
  note="[one_peace_train] precision: $precision (PRECISION=${PRECISION:-auto})"
  echo "$note${overridden:+, then the overrides$overridden}" >&2
  local args=(--config-dir "$config_dir" --config-name "$config_name"
              "common.user_dir=$ONE_PEACE_ROOT/user_src" hydra.job.chdir=False hydra.output_subdir=null
              "hydra.run.dir=." "distributed_training.distributed_world_size=$NUM_GPUS")
  if [ -n "${BPE_DIR:-}" ]; then args+=("task.bpe_dir=$BPE_DIR"); fi
  # The yamls say bf16 + memory_efficient_bf16 (the official recipe); fp32 turns both off.  Overrides
  # given to the script come later and win.
  if [ "$precision" = fp32 ]; then args+=(common.bf16=false common.memory_efficient_bf16=false); fi
  if [ -n "${ONE_PEACE_CHECKPOINT:-}" ]; then
    need_checkpoint "$ONE_PEACE_CHECKPOINT" ONE_PEACE_CHECKPOINT
    # Starts from the pretrained weights on the first launch only; a restarted run resumes
    # from SAVE_DIR/checkpoint_last.pt (the official reset_* flags would restart from scratch).
    args+=("checkpoint.finetune_from_model=$ONE_PEACE_CHECKPOINT")
  fi
  if [ "$NUM_GPUS" -gt 1 ]; then
    torchrun --nproc_per_node="$NUM_GPUS" --master_port="$MASTER_PORT" \
      "$(command -v one-peace-hydra-train)" "${args[@]}" "$@"
  else
    one-peace-hydra-train "${args[@]}" "$@"
  fi
}

# finetune_on_tsvs CONFIG_DIR CONFIG_NAME RUN_NAME [hydra overrides...]
# Fine-tunes on $TRAIN_TSV / $VALID_TSV for $EPOCHS epochs of $BATCH per GPU x $UPDATE_FREQ
# (the schedulers derive the run's length from the epochs and the epoch size); checkpoints go to
# $SAVE_DIR (default checkpoints/RUN_NAME).
finetune_on_tsvs() {
  local config_dir=$1 config_name=$2 run_name=$3
  shift 3
  need_file "$TRAIN_TSV" TRAIN_TSV
  need_file "$VALID_TSV" VALID_TSV
  one_peace_train "$config_dir" "$config_name" \
    "task.data=$TRAIN_TSV" "task.valid_data=$VALID_TSV" \
    "dataset.batch_size=$BATCH" "optimization.update_freq=[$UPDATE_FREQ]" "optimization.max_epoch=$EPOCHS" \
    "checkpoint.save_dir=${SAVE_DIR:-$ONE_PEACE_ROOT/checkpoints/$run_name}" "$@"
}

# evaluate_on_tsv RESULTS_NAME DEFAULT_BATCH DEFAULT_PRECISION [evaluator flags...]
# Evaluates $CHECKPOINT on $TEST_TSV; per-sample results go to $RESULTS_DIR (default
# results/RESULTS_NAME); $BATCH and $PRECISION override the defaults.
evaluate_on_tsv() {
  local results_name=$1 batch=$2 flags
  flags="$(precision_flags "$3" "${@:4}")" || exit 1  # a bad PRECISION stops here, not in a subshell only
  shift 3
  need_file "$TEST_TSV" TEST_TSV
  need_checkpoint "$CHECKPOINT" CHECKPOINT
  one_peace_evaluate --path "$CHECKPOINT" --gen-subset test --valid-data "$TEST_TSV" \
    --batch-size "${BATCH:-$batch}" --results-path "${RESULTS_DIR:-$ONE_PEACE_ROOT/results/$results_name}" \
    $flags "$@"
}

# one_peace_evaluate [one-peace-evaluate arguments...]
one_peace_evaluate() {
  local args=()
  if [ -n "${BPE_DIR:-}" ]; then args+=(--bpe-dir "$BPE_DIR"); fi
  if [ "$NUM_GPUS" -gt 1 ]; then
    torchrun --nproc_per_node="$NUM_GPUS" --master_port="$MASTER_PORT" -m one_peace.evaluate "${args[@]}" "$@"
  else
    one-peace-evaluate "${args[@]}" "$@"
  fi
}

# precision_flags DEFAULT [evaluator flags...] -> evaluator flag for $PRECISION (bf16 | fp16 | fp32), DEFAULT
# if unset or auto.  A bf16 DEFAULT is fp32 on a CPU without bf16 matrix units (models/precision.py), where
# bf16 is emulated and slow; the evaluator runs on the CPU with --cpu or without a GPU.
precision_flags() {
  local precision="${PRECISION:-auto}" device=auto arg
  if [ "$precision" = auto ]; then
    precision=$1
    for arg in "${@:2}"; do if [ "$arg" = --cpu ]; then device=cpu; fi; done
    if [ "$precision" = bf16 ]; then precision="$(PRECISION=auto resolve_precision evaluate "$device")" || exit 1; fi
  fi
  case "$precision" in
    bf16) echo "--bf16" ;;
    fp16) echo "--fp16" ;;
    fp32) echo "" ;;
    *) die "PRECISION must be auto, bf16, fp16 or fp32, got $precision" ;;
  esac
}
