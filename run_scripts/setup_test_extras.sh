#!/usr/bin/env bash
# What the full test suite needs beyond the Python packages (the README's install command runs it):
#
#   bash run_scripts/setup_test_extras.sh
#
#   * Debian's Chromium (/usr/bin/chromium) for the search page's browser test
#     (tests/test_search_browser.py, driven by Playwright; Playwright's own browser download is never
#     used), installed with apt-get when absent and we are root (or have passwordless sudo);
#   * the real media of the conformance suite and run_scripts/real_demo.sh
#     (run_scripts/fetch_real_media.sh into $ONE_PEACE_REAL_MEDIA, default ~/.cache/one_peace/real_media;
#     spoken captions skipped: FETCH_SPEECH=0 unless set).
#
# Idempotent: what is present is kept.  Without root, Chromium is reported missing (its test then skips
# with that reason) and the rest goes on.  Environment: PYTHON as in fetch_real_media.sh.
set -euo pipefail

case "${1:-}" in
  -h|--help) awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; exit 0 ;;
esac
[ $# -eq 0 ] || { echo "setup_test_extras: no arguments expected (see --help)" >&2; exit 2; }
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { echo "setup_test_extras: $*"; }

if [ -x /usr/bin/chromium ]; then
  say "chromium present ($(/usr/bin/chromium --version 2>/dev/null || echo unknown version))"
else
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
  fi
  if [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; then
    say "installing Debian's chromium (apt-get)"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
    say "chromium installed ($(/usr/bin/chromium --version 2>/dev/null || echo '?'))"
  else
    say "warning: /usr/bin/chromium is absent and apt-get needs root: the browser test will skip" \
        "(install it with: sudo apt-get install chromium)" >&2
  fi
fi

FETCH_SPEECH="${FETCH_SPEECH:-0}" bash "$REPO/run_scripts/fetch_real_media.sh"
