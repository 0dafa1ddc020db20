#!/usr/bin/env bash
# Every test, against the real PostgreSQL, RabbitMQ and Redis on loopback.
# Each test makes its own vhost / database / key prefix and removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
cargo test --workspace --all-targets --no-fail-fast "$@"
