#!/usr/bin/env bash
# Every test, against the real PostgreSQL, RabbitMQ and Redis on loopback, and a
# real SMTP server (aiosmtpd) per email test, and Debian's headless Chromium for the
# billing page.
# Each test makes its own vhost / database / key prefix and removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
# Python tools the tests run (aiosmtpd, the SMTP sink; the k8s validators); quiet when installed.
scripts/python-tools.sh
# Debian's chromium, Node.js and the pinned playwright-core for the billing page's browser test.
scripts/browser-tools.sh
# The deployment files (k8s/, deploy/), offline: render, schemas, checkov.
scripts/validate-k8s.sh
cargo test --workspace --all-targets --no-fail-fast "$@"
