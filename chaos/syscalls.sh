#!/usr/bin/env bash
# System calls per request of nginx and of gatehouse node builds proxying the same small request
# (docs/performance.md): strace -c -f attached to the proxy for a measured closed-loop load (8
# connections, HTTP/1.1 keep-alive both ways, one worker each). strace slows both proxies down
# alike; the counts per request are what matters, not the rates. The window of each count starts
# when strace has attached and ends when the load ends, so a few idle epoll_wait calls are counted
# too.
# Usage: chaos/syscalls.sh [node binary ...]     (default: target/release/gatehouse)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v strace >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null; }
cargo build --release --locked -p gatehouse-chaos
gen=${CARGO_TARGET_DIR:-target}/release/gatehouse-chaos
bins=("$@")
[ ${#bins[@]} -gt 0 ] || { cargo build --release --locked -p gatehouse-node; bins=("${CARGO_TARGET_DIR:-target}/release/gatehouse"); }
nginx=${GATEHOUSE_NGINX:-/usr/sbin/nginx}
work=$(mktemp -d)
up_port=$((20000 + RANDOM % 20000)); proxy_port=$((up_port + 1)); http_port=$((up_port + 2)); debug_port=$((up_port + 3))
user=""; [ "$(id -u)" -eq 0 ] && user="user root root;"
temp_paths() { echo "client_body_temp_path $work/$1b; proxy_temp_path $work/$1p; fastcgi_temp_path $work/$1f; uwsgi_temp_path $work/$1u; scgi_temp_path $work/$1s;"; }
cat >"$work/upstream.conf" <<CONF
$user
worker_processes 1;
daemon off;
pid $work/upstream.pid;
error_log $work/upstream.log warn;
events { worker_connections 1024; }
http {
  access_log off; $(temp_paths u) keepalive_requests 100000000;
  server { listen 127.0.0.1:$up_port; location / { default_type text/plain; return 200 "hello from upstream\n"; } }
}
CONF
# One process (master_process off), so that strace sees the worker from the start.
cat >"$work/proxy.conf" <<CONF
$user
worker_processes 1;
master_process off;
daemon off;
pid $work/proxy.pid;
error_log $work/proxy.log warn;
events { worker_connections 1024; }
http {
  access_log off; $(temp_paths p) keepalive_requests 100000000;
  upstream up { server 127.0.0.1:$up_port; keepalive 64; }
  server {
    listen 127.0.0.1:$proxy_port;
    location / { proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://up; }
  }
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
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
"$nginx" -p "$work" -c "$work/upstream.conf" & pids+=($!)
spec() { echo "{\"addr\":\"127.0.0.1:$1\",\"paths\":[\"/bench/hello\"],\"method\":\"GET\",\"headers\":[],\"body_bytes\":0,\"connections\":8,\"rate\":null,\"warmup_ms\":$2,\"measure_ms\":$3}"; }
wait_http() { for _ in $(seq 1 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }
# measure <name> <pid> <port>: one line with syscalls per request, the commonest calls after it.
measure() {
  local name=$1 pid=$2 port=$3 out="$work/$(basename "$1").strace"
  "$gen" load "$(spec "$port" 1000 1)" >/dev/null
  strace -c -f -p "$pid" -o "$out" 2>"$work/strace.err" & local sp=$!
  for _ in $(seq 1 100); do grep -q attached "$work/strace.err" && break; sleep 0.05; done
  grep -q attached "$work/strace.err" || { echo "strace did not attach to $name" >&2; cat "$work/strace.err" >&2; exit 1; }
  local result requests
  result=$("$gen" load "$(spec "$port" 0 5000)" | sed -n 's/^result //p')
  kill -INT "$sp"; wait "$sp" || true
  requests=$(echo "$result" | sed 's/.*"completed":\([0-9]*\).*/\1/')
  [ "${requests:-0}" -gt 0 ] || { echo "$name: no request completed" >&2; exit 1; }
  awk -v n="$requests" -v name="$name" '
    $1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" { calls[$NF] = $4; total += $4 }
    END {
      printf "%s: %d requests, %.2f system calls per request:", name, n, total / n
      for (c in calls) if (calls[c] / n >= 0.05) printf " %s %.2f", c, calls[c] / n
      printf "\n"
    }' "$out"
}
wait_http "http://127.0.0.1:$up_port/"
"$nginx" -p "$work" -c "$work/proxy.conf" & nginx_pid=$!; pids+=($nginx_pid)
wait_http "http://127.0.0.1:$proxy_port/bench/x"
measure nginx "$nginx_pid" "$proxy_port"
for bin in "${bins[@]}"; do
  PROXY_HTTP_ADDR=127.0.0.1:$http_port PROXY_DEBUG_ADDR=127.0.0.1:$debug_port PROXY_TLS=false PROXY_LOG_LEVEL=error \
    "$bin" --config "$work/proxy.yaml" server >"$work/node.log" 2>&1 & node_pid=$!; pids+=($node_pid)
  wait_http "http://127.0.0.1:$debug_port/readyz" || { cat "$work/node.log" >&2; exit 1; }
  measure "$bin" "$node_pid" "$http_port"
  kill -TERM "$node_pid"; wait "$node_pid" || true
done
