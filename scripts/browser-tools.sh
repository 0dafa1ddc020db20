#!/usr/bin/env bash
# What the billing page's browser test needs (crates/billing/tests/api/page.rs):
#   - Debian's Chromium at /usr/bin/chromium (apt package chromium; never a browser
#     downloaded by a tool), and Node.js with npm (apt packages nodejs, npm);
#   - playwright-core exactly as tests/browser/package-lock.json pins it, installed with
#     `npm ci` into $HOME/.cache/tollgate/browser (override with TOLLGATE_BROWSER_MODULES),
#     outside the clone, reinstalled only when the lock file changes.
# Quiet when all is there; safe to run concurrently (one installer at a time).
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${TOLLGATE_BROWSER_MODULES:-$HOME/.cache/tollgate/browser}"
lock=tests/browser/package-lock.json

log() { echo "browser-tools: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "install ${missing[*]} yourself (not a Debian/Ubuntu system)"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  log "installing ${missing[*]} (Debian packages)"
  $sudo_cmd apt-get update -qq >/dev/null || die "apt-get update failed"
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    die "apt-get install ${missing[*]} failed"
fi

want="$(sha256sum "$lock" | cut -d' ' -f1)"
installed() {
  [ -f "$dir/node_modules/playwright-core/package.json" ] && [ "$(cat "$dir/.lock.sha256" 2>/dev/null)" = "$want" ]
}
installed && exit 0

mkdir -p "$dir"
exec 9>"$dir.lock"
flock 9
installed && exit 0 # another run installed it while we waited

log "installing playwright-core into $dir (npm ci)"
cp tests/browser/package.json "$lock" "$dir/"
# The browser is Debian's: nothing may download one.
(cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null) ||
  die "npm ci failed (is the npm registry reachable?)"
echo "$want" >"$dir/.lock.sha256"
