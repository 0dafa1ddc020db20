#!/usr/bin/env bash
# Offline validation of the deployment files (run by scripts/test.sh before cargo test):
# renders k8s/overlays/{dev,prod} with kustomize, validates every object strictly
# against the Kubernetes schemas (kubernetes-validate) and the vendored CRD schemas
# (k8s/schemas), checks cross-references, alert and dashboard metric names, compose.yaml
# and the Dockerfile (hadolint), then scans with checkov (zero findings; skips with
# reasons in k8s/.checkov.yaml). Needs no cluster, no Docker and no network once the
# Python tools are installed (scripts/python-tools.sh).
# Usage: scripts/validate-k8s.sh [OUTPUT_DIR]   (rendered overlays go there; default
#        $CARGO_TARGET_DIR/k8s-rendered)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/python-tools.sh
venv="${TOLLGATE_VENV:-$HOME/.cache/tollgate/venv}"
out="${1:-${CARGO_TARGET_DIR:-$HOME/.cache/tollgate/target}/k8s-rendered}"
exec "$venv/bin/python" scripts/validate_k8s.py "$out"
