#!/usr/bin/env bash
# Instructions per request of gatehouse node builds under callgrind (docs/performance.md): the
# count repeats to within about 1 % on a shared machine, so it decides between two builds where
# CPU time cannot. Each build serves the unprotected route on one HTTP worker in front of a
# static nginx; instrumentation is switched on after a warm-up and off after the measured load
# (8 connections, closed loop, 8 s under valgrind). User space only: the kernel's share of a
# request is not counted.
# Usage: chaos/callgrind.sh [node binary ...]     (default: target/release/gatehouse)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
cargo build --release --locked -p gatehouse-chaos
gen=${CARGO_TARGET_DIR:-target}/release/gatehouse-chaos
bins=("$@")
[ ${#bins[@]} -gt 0 ] || { cargo build --release --locked -p gatehouse-node; bins=("${CARGO_TARGET_DIR:-target}/release/gatehouse"); }
work=$(mktemp -d)
up_port=$((20000 + RANDOM % 20000)); http_port=$((up_port + 1)); debug_port=$((up_port + 2))
user=""; [ "$(id -u)" -eq 0 ] && user="user root root;"
cat >"$work/nginx.conf" <<CONF
$user
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/tb; proxy_temp_path $work/tp; fastcgi_temp_path $work/tf;
  uwsgi_temp_path $work/tu; scgi_temp_path $work/ts;
  keepalive_requests 100000000;
  server { listen 127.0.0.1:$up_port; location / { default_type text/plain; return 200 "hello from upstream\n"; } }
}
CONF
cat >"$work/proxy.yaml" <<CONF
http:
  workers: 1
policies:
  - name: ocis
    routes:
      - endpoint: /bench
        backend: http://127.0.0.1:$up_port
        unprotected: true
CONF
"${GATEHOUSE_NGINX:-/usr/sbin/nginx}" -p "$work" -c "$work/nginx.conf" &
nginx_pid=$!
trap 'kill $nginx_pid 2>/dev/null; rm -rf "$work"' EXIT
spec() { echo "{\"addr\":\"127.0.0.1:$http_port\",\"paths\":[\"/bench/hello\"],\"method\":\"GET\",\"headers\":[],\"body_bytes\":0,\"connections\":8,\"rate\":null,\"warmup_ms\":$1,\"measure_ms\":$2}"; }
for bin in "${bins[@]}"; do
  out="$work/callgrind.out"
  rm -f "$out".*
  PROXY_HTTP_ADDR=127.0.0.1:$http_port PROXY_DEBUG_ADDR=127.0.0.1:$debug_port PROXY_TLS=false PROXY_LOG_LEVEL=error \
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out.%p" \
    "$bin" --config "$work/proxy.yaml" server >"$work/node.log" 2>&1 &
  vpid=$!
  for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$debug_port/readyz" && break; sleep 0.2; done
  curl -sf -o /dev/null "http://127.0.0.1:$debug_port/readyz" || { cat "$work/node.log" >&2; exit 1; }
  "$gen" load "$(spec 2000 1)" >/dev/null
  callgrind_control -i on "$vpid" >/dev/null
  result=$("$gen" load "$(spec 0 8000)" | sed -n 's/^result //p')
  callgrind_control -i off "$vpid" >/dev/null
  kill -TERM "$vpid"; wait "$vpid" || true
  requests=$(echo "$result" | sed 's/.*"completed":\([0-9]*\).*/\1/')
  instructions=$(grep -h '^summary:\|^totals:' "$out".* | awk '{s += $2} END {print s}')
  [ "${requests:-0}" -gt 0 ] || { echo "$bin: no request completed" >&2; exit 1; }
  echo "$bin: $requests requests, $instructions instructions, $((instructions / requests)) per request"
done
