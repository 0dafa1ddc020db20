#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for a bounded time each (docs/fuzzing.md).
# Usage: scripts/fuzz.sh [target ...]          (default: every target in fuzz/fuzz_targets)
#   FUZZ_SECONDS=60        time per target
#   FUZZ_SANITIZER=none    or address (slower; our crates forbid unsafe code)
# Installs cargo-fuzz from crates.io when it is missing (quiet when present). Runs on
# the stable toolchain: cargo-fuzz asks rustc for nightly-only flags (-Z...), which
# RUSTC_BOOTSTRAP=1 lets a stable rustc accept. A failing input is left in
# fuzz/artifacts/<target>/ and the script exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo_fuzz_version="0.13.2"
seconds="${FUZZ_SECONDS:-60}"
sanitizer="${FUZZ_SANITIZER:-none}"

log() { echo "fuzz: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $cargo_fuzz_version" ]; then
  log "installing cargo-fuzz $cargo_fuzz_version (crates.io)"
  cargo install --quiet --locked --version "=$cargo_fuzz_version" cargo-fuzz ||
    die "could not install cargo-fuzz (is crates.io reachable?)"
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for file in fuzz/fuzz_targets/*.rs; do
    targets+=("$(basename "$file" .rs)")
  done
fi

export RUSTC_BOOTSTRAP=1
# Instrumented builds have flags of their own: keep them apart from the normal ones,
# and each sanitizer's apart from the others' (a switch would rebuild everything).
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
[ "$sanitizer" = none ] || target_dir="$target_dir-$sanitizer"
options=(--fuzz-dir fuzz --target-dir "$target_dir" --sanitizer "$sanitizer" --debug-assertions)

mkdir -p "$target_dir"
build_log="$target_dir/build.log"
log "building ${targets[*]} (sanitizer: $sanitizer; a first build takes minutes)"
for target in "${targets[@]}"; do
  cargo fuzz build "${options[@]}" "$target" >"$build_log" 2>&1 ||
    { tail -40 "$build_log" >&2; die "$target does not build"; }
done

status=0
for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus" "fuzz/regressions/$target"
  run_log="$target_dir/$target.log"
  # The first directory collects what the fuzzer finds (not committed); the seeds
  # and regressions are read only.
  if cargo fuzz run "${options[@]}" "$target" "$corpus" "fuzz/seeds/$target" "fuzz/regressions/$target" \
    -- -max_total_time="$seconds" -print_final_stats=1 -timeout=10 >"$run_log" 2>&1; then
    outcome="ok"
  else
    outcome="FAILED"
    status=1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$run_log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$run_log" | tail -1)
  log "$target: $outcome after ${seconds}s: ${runs:-?} runs, ${rate:-?} exec/s, corpus $(find "$corpus" -type f | wc -l) files"
  if [ "$outcome" = FAILED ]; then
    grep -E "panicked at|SUMMARY|Test unit written|ERROR" "$run_log" | head -20 >&2 || true
    log "full output: $run_log; replay with: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz $target <artifact>"
  fi
done
exit "$status"
