#!/usr/bin/env bash
# The published chaos runs (docs/chaos.md): every scenario with the long settings (10 s of load,
# a 30 s fault, 20 s after it) on a release build, as root (the partition scenario uses iptables).
# Tables, JSON, per-request records and plots go to target/chaos (and target/chaos.txt); the
# plots are copied to docs/chaos/, the tables belong in docs/chaos.md. Needs what
# tests/run-all.sh installs (nats-server, node with the test IdP, haproxy, iptables,
# fonts-dejavu-core): run that once first.
# Usage: chaos/chaos.sh [scenario|all] [--full]      (default: all --full)
set -euo pipefail
cd "$(dirname "$0")/.."
export GATEHOUSE_NATS_SERVER=${GATEHOUSE_NATS_SERVER:-$PWD/.tools/venv/bin/nats-server}
export GATEHOUSE_NODE=${GATEHOUSE_NODE:-$(command -v node)}
export GATEHOUSE_HAPROXY=${GATEHOUSE_HAPROXY:-/usr/sbin/haproxy}
cargo build --release --locked -p gatehouse-node -p gatehouse-chaos
out=target/chaos
status=0
"${CARGO_TARGET_DIR:-target}/release/gatehouse-chaos" chaos "${1:-all}" "${2:---full}" --out "$out" | tee "$out.txt" || status=$?
mkdir -p docs/chaos
cp "$out"/*.png docs/chaos/
exit $status
