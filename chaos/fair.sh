#!/usr/bin/env bash
# The fair benchmark (docs/performance.md): one gatehouse node against nginx doing the same work,
# CPU per request of every process from schedstat, at saturation and at 50 % / 80 % of the
# slower proxy's capacity, unpinned and pinned, interleaved rounds. Needs what tests/run-all.sh
# installs (nginx, node with the test IdP) and util-linux's taskset.
# Usage: chaos/fair.sh [rounds] [seconds] [unpinned|pinned|both]     (default: 5 5 both)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d tests/idp/node_modules ] || (cd tests/idp && npm ci --no-audit --no-fund)
cargo build --release --locked -p gatehouse-node -p gatehouse-chaos
export GATEHOUSE_BIN=${GATEHOUSE_BIN:-$PWD/${CARGO_TARGET_DIR:-target}/release/gatehouse}
exec "${CARGO_TARGET_DIR:-target}/release/gatehouse-chaos" fair "${1:-5}" "${2:-5}" "${3:-both}"
