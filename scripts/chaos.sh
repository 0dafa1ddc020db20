#!/usr/bin/env bash
# `make chaos`: the system benchmark with faults injected into the machine's real
# services (docs/chaos.md). Announces itself to other users of those services with
# /tmp/chaos-restarting, and on exit, whatever happened, removes it and starts any
# service still stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:=$HOME/.cache/tollgate/target}"

restore() {
  scripts/ensure-services.sh || echo "chaos: could not restore every service; run scripts/ensure-services.sh" >&2
  rm -f /tmp/chaos-restarting
}
trap restore EXIT
trap 'exit 130' INT TERM

touch /tmp/chaos-restarting
"$CARGO_TARGET_DIR/release/tollgate-bench" system --faults real "$@"
