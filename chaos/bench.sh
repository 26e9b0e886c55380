#!/usr/bin/env bash
# Release-build benchmark: upstream direct vs nginx vs one gatehouse node, unprotected and with a
# cached bearer token (see docs/performance.md). Needs nginx, wrk and Node.js (for the OpenID
# provider in tests/idp).
# Usage: chaos/bench.sh [seconds] [connections]
#        SCENARIO=signed-urls chaos/bench.sh [seconds] [connections]   (signed URLs, cached and not)
#        SCENARIO=tracing chaos/bench.sh [seconds] [connections]       (tracing off / ratio 0 / ratio 1)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null && [ -x /usr/sbin/nginx ] || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null
}
[ -d tests/idp/node_modules ] || (cd tests/idp && npm ci --no-audit --no-fund)
cargo build --release --locked -p gatehouse-node -p gatehouse-chaos
exec "${CARGO_TARGET_DIR:-target}/release/gatehouse-chaos" "${SCENARIO:-bench}" "${1:-10}" "${2:-32}"
