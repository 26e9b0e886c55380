#!/usr/bin/env bash
# Profiles the gatehouse node of one `gatehouse-chaos bench 25 32` run with perf (DWARF call
# graphs, 499 Hz, 8 s) while wrk measures the unprotected route and then the authenticated one,
# and prints the inclusive share of the functions on the authentication path.
# Needs a release build (chaos/bench.sh makes one) and perf. Usage: chaos/profile.sh [out dir]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/gatehouse-profile}
mkdir -p "$out"
bin="${CARGO_TARGET_DIR:-target}/release/gatehouse-chaos"
"$bin" bench 25 32 >"$out/bench.txt" 2>&1 &
chaos=$!
node=""
for _ in $(seq 1 300); do
  node=$(pgrep -P "$chaos" -x gatehouse || true)
  [ -n "$node" ] && break
  sleep 0.2
done
[ -n "$node" ] || { echo "no gatehouse node started; see $out/bench.txt" >&2; exit 1; }
addr=$(tr '\0' '\n' <"/proc/$node/environ" | sed -n 's/^PROXY_HTTP_ADDR=//p')
for route in bench auth; do
  # The 25 s measurement of this route (warm-ups run 1 s).
  until pgrep -f "wrk .*-d25s .*$addr/$route/hello" >/dev/null; do sleep 0.2; done
  sleep 3
  perf record -q -F 499 --call-graph dwarf,16384 -p "$node" -o "$out/$route.data" -- sleep 8
done
wait "$chaos"
grep -v '^\[{' "$out/bench.txt"
for route in bench auth; do
  echo "== $route: inclusive share of the node's samples"
  perf report -i "$out/$route.data" --children --sort symbol --stdio -g none 2>/dev/null |
    grep -E 'Authenticate<S> as tower_service.*closure|Account<S> as tower_service.*closure|Proxy as tower_service.*closure|token_cache_key|read_cached|MintCache::token_for|AccountResolver::resolve|new_traceparent|reva_user|MemoryStore as .*Store>::get|BTreeMap<K,V,A> as core::clone::Clone' |
    sed 's/ \+-  \+-  *$//; s/ \+$//' | cut -c1-160
done
echo "perf data in $out (perf report -i $out/auth.data --children)"
