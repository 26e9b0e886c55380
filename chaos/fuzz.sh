#!/usr/bin/env bash
# Runs every cargo-fuzz target of shared/fuzz for a fixed time, one after another, and prints per
# target the number of executions and whether it crashed. See docs/fuzzing.md.
#
#   chaos/fuzz.sh [seconds-per-target] [target...]     (default: 60 s, every target)
#
# Works on a stable toolchain: cargo-fuzz needs nightly-only flags (-Zsanitizer=address), which
# RUSTC_BOOTSTRAP=1 unlocks. Seed corpora (shared/fuzz/corpus/<target>) are read, never written:
# new inputs go to shared/fuzz/corpus-work/<target> (git-ignored), crashes to
# shared/fuzz/artifacts/<target>/. One fuzzing process at a time (no -jobs: libFuzzer would then
# fork workers and send their output to fuzz-N.log files). Exit status 1 if any target crashed.
set -euo pipefail
cd "$(dirname "$0")/../shared"

secs=${1:-60}
shift || true
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

# -a: debug assertions, so integer overflows panic like in tests.
cargo fuzz build -a

logs=fuzz/corpus-work/logs
mkdir -p "$logs"
summary=()
crashed=0
for t in "${targets[@]}"; do
  work=fuzz/corpus-work/$t
  mkdir -p "$work" "fuzz/corpus/$t"
  log=$logs/$t.log
  echo "== $t: ${secs}s"
  status=0
  cargo fuzz run -a "$t" "$work" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  corpus=$(find "$work" -type f | wc -l)
  if [ "$status" -eq 0 ]; then
    result="no crash"
  else
    crashed=1
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    result="CRASHED (exit $status) ${artifact:-see $log}"
    grep -m1 -A3 "panicked at\|ERROR: AddressSanitizer\|ERROR: libFuzzer" "$log" || true
  fi
  summary+=("$(printf '%-18s %12s execs  %6s corpus  %s' "$t" "${execs:-?}" "$corpus" "$result")")
done

echo
echo "target             executions in ${secs}s each"
printf '%s\n' "${summary[@]}"
exit "$crashed"
