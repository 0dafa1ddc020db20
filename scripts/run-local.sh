#!/usr/bin/env bash
# Runs every Tollgate service in the foreground with local settings; Ctrl-C stops
# them all. `make run` builds first and makes sure the backing services are up.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-$HOME/.cache/tollgate/target}/debug"
services=(ingest billing entitlements fulfillment)

# Billing owns the schema: create the database if needed and migrate before anything runs.
"$bin/billing" migrate

pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

for service in "${services[@]}"; do
  [ -x "$bin/$service" ] || { echo "run-local: $bin/$service is not built (make build)" >&2; exit 1; }
  "$bin/$service" &
  pids+=("$!")
done
echo "run-local: ${services[*]} running; ingest at http://${INGEST_ADDR:-127.0.0.1:8080}/webhook," \
  "entitlements (gRPC, gRPC-Web) at ${ENTITLEMENTS_ADDR:-127.0.0.1:50051}," \
  "billing API at http://${BILLING_API_ADDR:-127.0.0.1:8082}/v1 (docs/api.md)," \
  "Dialogflow fulfillment at http://${FULFILLMENT_ADDR:-127.0.0.1:8083}/webhook (Ctrl-C stops)" >&2
echo "run-local: try 'make trigger EVENT=invoice.paid' in another terminal" >&2
# Stop everything as soon as any one service exits.
wait -n
status=$?
echo "run-local: a service exited with status $status; stopping the others" >&2
exit "$status"
