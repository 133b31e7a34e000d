#!/usr/bin/env bash
# Gathers here, where PyPI is reachable, what bench/device_check.sh needs on a lent GPU machine and its image
# lacks: wheels for that machine's Python (3.12, manylinux x86-64) of the packages below, at the versions
# installed in this checkout's .venv (the versions the tests passed with); and the part of ../shared that the
# GPU tests and benchmarks read (BPE files, sample media, the official-parity fixtures).  Everything goes to
# .gpu_carry/ (git-ignored, about 40 MB of the call's 64 MiB), which the device call carries:
#
#     bash bench/device_carry.sh                          # -> .gpu_carry/wheels, .gpu_carry/shared
#     PYVER=3.11 DEST=/tmp/carry311 bash bench/device_carry.sh   # the same set for this machine's Python
#
# The image holds torch, triton, numpy, scipy, scikit-learn, pillow, regex, sacrebleu, safetensors,
# huggingface_hub and the rest of fairseq's imports (the device tool's KINDS.md lists them).  PyAV is left out
# (36 MB of the call's 64 MiB; the check decodes no video).  A package published only as a source archive
# (antlr4-python3-runtime 4.9.3, which omegaconf 2.x pins) is built into a wheel here; it must be pure Python.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYVER=${PYVER:-3.12}
DEST=${DEST:-.gpu_carry}
SHARED=${ONE_PEACE_SHARED:-../shared}
PACKAGES=(ve-fairseq hydra-core omegaconf antlr4-python3-runtime bitarray braceexpand cffi pycparser dill
          soundfile tensorboardX webdataset kornia kornia_rs)
PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
           manylinux1_x86_64; do
  PLATFORMS+=(--platform "$tag")
done

rm -rf "$DEST/wheels" "$DEST/shared"
mkdir -p "$DEST/wheels" "$DEST/shared/assets" "$DEST/shared/fixtures"
for name in "${PACKAGES[@]}"; do
  version=$("$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$name") || {
    echo "device_carry: $name is not installed in $PY; install the project first (README set-up)" >&2; exit 1; }
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
       "${PLATFORMS[@]}" -d "$DEST/wheels" "$name==$version" 2>/dev/null; then
    "$PY" -m pip wheel -q --no-deps --no-binary=:all: -w "$DEST/wheels" "$name==$version"
  fi
done
for wheel in "$DEST"/wheels/*.whl; do
  case "$wheel" in  # a compiled wheel built here from source would be tagged for this machine's Python
    *-none-any.whl|*-none-manylinux*|*-cp${PYVER/./}-*|*-abi3-*) ;;
    *) echo "device_carry: $wheel is not for CPython $PYVER on manylinux" >&2; exit 1 ;;
  esac
done
for part in assets/bpe assets/media fixtures/official-parity; do
  [ -d "$SHARED/$part" ] || { echo "device_carry: $SHARED/$part is missing (set ONE_PEACE_SHARED)" >&2; exit 1; }
  cp -r "$SHARED/$part" "$DEST/shared/$part"
done
du -sh "$DEST"
ls "$DEST/wheels"
