#!/usr/bin/env bash
# Dependency audit (`make audit`; docs/security.md, "Dependency audit"):
#   1. cargo-deny: licenses, bans (wildcards; duplicate versions reported), sources
#      (crates.io only), against deny.toml. Installs cargo-deny from crates.io when
#      missing (about 3 minutes on 2 cores).
#   2. cargo-deny advisories: the RustSec database is a Git repository on GitHub;
#      where GitHub cannot be reached the check is skipped with a notice, unless
#      AUDIT_REQUIRE_ADVISORIES=1 (then it fails).
#   3. npm audit of tests/browser, where the registry serves its audit endpoint.
#   4. The Python test tools' virtualenv against PyPI's advisories (scripts/audit-python.py).
# Exit status: non-zero on any finding, or on a check that could not run when required.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=0.20.2
# CVE-2024-23342 (python-ecdsa, Minerva timing on P-256 signing; no fixed release):
# ecdsa comes with checkov, which validates k8s/ offline and signs nothing.
PYTHON_IGNORED=(CVE-2024-23342)

log() { echo "audit: $*" >&2; }
failed=0

if ! cargo deny --version 2>/dev/null | grep -q "$CARGO_DENY_VERSION"; then
  log "installing cargo-deny $CARGO_DENY_VERSION from crates.io (a few minutes)"
  build_dir="$(mktemp -d)"
  trap 'rm -rf "$build_dir"' EXIT
  CARGO_TARGET_DIR="$build_dir" cargo install --locked --quiet "cargo-deny@$CARGO_DENY_VERSION"
fi

log "cargo deny: licenses, bans, sources"
cargo deny --log-level error check licenses bans sources || failed=1
duplicates="$(cargo deny check bans 2>&1 | grep -c '^warning\[duplicate\]' || true)"
log "crates in more than one version: ${duplicates} (allowed; \`cargo deny check bans\` lists them)"

if [ "${AUDIT_REQUIRE_ADVISORIES:-0}" = 1 ] ||
  timeout 20 git ls-remote --exit-code https://github.com/RustSec/advisory-db HEAD >/dev/null 2>&1; then
  log "cargo deny: advisories (RustSec)"
  cargo deny --log-level error check advisories || failed=1
else
  log "SKIPPED cargo deny advisories: the RustSec database (github.com/RustSec/advisory-db) is unreachable from here"
fi

if command -v npm >/dev/null 2>&1; then
  log "npm audit: tests/browser"
  report="$(cd tests/browser && npm audit --json 2>/dev/null || true)"
  verdict="$(printf '%s' "$report" | python3 -c '
import json, sys
try:
    report = json.load(sys.stdin)
except ValueError:
    print("unreadable"); sys.exit()
if "vulnerabilities" in report:
    counts = report.get("metadata", {}).get("vulnerabilities", {})
    print("clean" if not report["vulnerabilities"] else "vulnerable " + json.dumps(counts))
else:
    print("unavailable " + str(report.get("message", report.get("error", ""))))
')"
  case "$verdict" in
    clean) log "npm audit: no known vulnerability" ;;
    vulnerable*) log "npm audit: ${verdict}"; (cd tests/browser && npm audit) || true; failed=1 ;;
    *) log "SKIPPED npm audit: the registry's audit endpoint did not answer (${verdict})" ;;
  esac
fi

scripts/python-tools.sh
venv="${TOLLGATE_VENV:-$HOME/.cache/tollgate/venv}"
log "Python test tools: PyPI advisories"
ignores=()
for id in "${PYTHON_IGNORED[@]}"; do ignores+=(--ignore "$id"); done
scripts/audit-python.py "$venv" "${ignores[@]}" || failed=1

if [ "$failed" -ne 0 ]; then
  log "FAILED (see above)"
  exit 1
fi
log "ok"
