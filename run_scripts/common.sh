# Shared helpers of the run scripts; source it:  . "$(dirname "$0")/../common.sh"
#
# Environment (all optional except where a script says otherwise):
#   NUM_GPUS             GPUs per node (default 1); > 1 launches torchrun
#   MASTER_PORT          torchrun port (default 29500)
#   ONE_PEACE_CHECKPOINT pretrained checkpoint to fine-tune from (one-peace.pt, or its one-peace-convert directory)
#   BPE_DIR              dir with encoder.json, vocab.bpe, dict.txt (default: $ONE_PEACE_BPE_DIR / the cache)
#   SAVE_DIR, RESULTS_DIR  outputs (defaults under ./checkpoints and ./results)
#   PYTHON               interpreter with one_peace installed (default: the repository's .venv, else python3)
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

# one_peace_train CONFIG_DIR CONFIG_NAME [hydra overrides...]
one_peace_train() {
  local config_dir=$1 config_name=$2
  shift 2
  local args=(--config-dir "$config_dir" --config-name "$config_name"
              "common.user_dir=$ONE_PEACE_ROOT/user_src" hydra.job.chdir=False hydra.output_subdir=null
              "hydra.run.dir=." "distributed_training.distributed_world_size=$NUM_GPUS")
  if [ -n "${BPE_DIR:-}" ]; then args+=("task.bpe_dir=$BPE_DIR"); fi
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
  local results_name=$1 batch=$2 precision=$3
  shift 3
  need_file "$TEST_TSV" TEST_TSV
  need_checkpoint "$CHECKPOINT" CHECKPOINT
  one_peace_evaluate --path "$CHECKPOINT" --gen-subset test --valid-data "$TEST_TSV" \
    --batch-size "${BATCH:-$batch}" --results-path "${RESULTS_DIR:-$ONE_PEACE_ROOT/results/$results_name}" \
    $(precision_flags "$precision") "$@"
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

# precision_flags DEFAULT -> evaluator flag for $PRECISION (bf16 | fp16 | fp32), DEFAULT if unset
precision_flags() {
  case "${PRECISION:-$1}" in
    bf16) echo "--bf16" ;;
    fp16) echo "--fp16" ;;
    fp32) echo "" ;;
    *) die "PRECISION must be bf16, fp16 or fp32, got ${PRECISION:-$1}" ;;
  esac
}
