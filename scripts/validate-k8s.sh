#!/usr/bin/env bash
# Offline validation of the deployment files (run by scripts/test.sh before cargo test):
# renders k8s/overlays/{dev,prod} with kustomize, validates every object strictly
# against the Kubernetes schemas (kubernetes-validate) and the vendored CRD schemas
# (k8s/schemas), checks cross-references, alert and dashboard metric names, compose.yaml
# and the Dockerfile (hadolint), PromQL syntax (Prometheus' grammar), then scans with checkov (zero findings; skips with
# reasons in k8s/.checkov.yaml). Needs no cluster, no Docker and no network once the
# Python tools are installed (scripts/python-tools.sh).
# Usage: scripts/validate-k8s.sh [OUTPUT_DIR]   (rendered overlays go there; default
#        $CARGO_TARGET_DIR/k8s-rendered)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/python-tools.sh
venv="${TOLLGATE_VENV:-$HOME/.cache/tollgate/venv}"
# PromQL is parsed with Prometheus' own grammar, an npm package (pinned), installed once.
node_tools="${TOLLGATE_NODE_TOOLS:-$HOME/.cache/tollgate/node-tools}"
promql_package="@prometheus-io/lezer-promql@0.315.0"
if ! grep -qs '"version": "0.315.0"' "$node_tools/node_modules/@prometheus-io/lezer-promql/package.json"; then
  command -v npm >/dev/null 2>&1 || { echo "validate-k8s: npm is needed (Debian: nodejs npm)" >&2; exit 1; }
  mkdir -p "$node_tools"
  (
    flock 9
    grep -qs '"version": "0.315.0"' "$node_tools/node_modules/@prometheus-io/lezer-promql/package.json" ||
      npm install --silent --no-audit --no-fund --prefix "$node_tools" "$promql_package" >&2
  ) 9>"$node_tools.lock" || { echo "validate-k8s: npm install $promql_package failed" >&2; exit 1; }
fi
export NODE_PATH="$node_tools/node_modules"
out="${1:-${CARGO_TARGET_DIR:-$HOME/.cache/tollgate/target}/k8s-rendered}"
exec "$venv/bin/python" scripts/validate_k8s.py "$out"
