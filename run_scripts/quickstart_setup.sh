# Shared start of run_scripts/quickstart.sh and run_scripts/video_quickstart.sh; source it as
#   quickstart_setup NAME HELP_LAST_LINE "$@"
# Parses [WORKDIR] [--fast] [-h|--help] and sets FAST, W (the absolute WORKDIR, created), REPO (and cds
# there), PYTHON (exported) and HYDRA_TRAIN; messages start with NAME.  WORKDIR defaults to
# $DEFAULT_WORKDIR, else ./quickstart_work.
quickstart_setup() {
  local name=$1 help_last=$2 workdir="" arg
  shift 2
  REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  FAST="${QUICKSTART_FAST:-0}"
  for arg in "$@"; do
    case "$arg" in
      --fast) FAST=1 ;;
      -h|--help) sed -n "2,${help_last}p" "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
      -*) echo "$name: unknown option $arg" >&2; exit 2 ;;
      *) if [ -n "$workdir" ]; then echo "$name: only one WORKDIR may be given" >&2; exit 2; fi
         workdir="$arg" ;;
    esac
  done
  workdir="${workdir:-${DEFAULT_WORKDIR:-./quickstart_work}}"
  mkdir -p "$workdir"
  W="$(cd "$workdir" && pwd)"   # absolute, resolved against the caller's cwd
  cd "$REPO"
  . "$REPO/run_scripts/common.sh"  # PYTHON (checked to import one_peace), its bin directory first on PATH
  HYDRA_TRAIN="$(dirname "$PYTHON")/fairseq-hydra-train"
  [ -x "$HYDRA_TRAIN" ] || HYDRA_TRAIN="$(command -v fairseq-hydra-train || true)"
  if [ -z "$HYDRA_TRAIN" ]; then
    echo "$name: fairseq-hydra-train not found (install the package: pip install -e .)" >&2
    exit 1
  fi
  export PYTHON PYTHONUNBUFFERED=1
}

# quickstart_precision JOB: sets PREC to bf16 or fp32 from $PRECISION (auto when unset; the quickstarts train
# on the CPU, where auto is bf16 only with bf16 matrix units and for a job measured faster in bf16:
# models/precision.py); a bad PRECISION exits with one error line
quickstart_precision() {
  PREC="$(resolve_precision "$1" cpu)" || exit 2
}

# bf16_yaml: the line of a yaml's common: block that trains in bf16 (none in fp32)
bf16_yaml() {
  if [ "$PREC" = bf16 ]; then echo "  bf16: true"; fi
}
