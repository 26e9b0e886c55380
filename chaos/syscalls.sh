#!/usr/bin/env bash
# System calls per request of nginx and of gatehouse node builds proxying the same small request
# (docs/performance.md): strace -c -f attached to the proxy for a measured closed-loop load (8
# connections, HTTP/1.1 keep-alive both ways, one worker each). strace slows both proxies down
# alike; the counts per request are what matters, not the rates. The window of each count starts
# when strace has attached and ends when the load ends, so a few idle epoll_wait calls are counted
# too.
# Usage: chaos/syscalls.sh [node binary ...]     (default: target/release/gatehouse)
# GATEHOUSE_ROUTE=upload counts per 1 MiB upload instead (chaos/small-route.sh); nginx streams
# bodies unbuffered with 64 KiB buffers, as in the fair benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v strace >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null; }
source chaos/small-route.sh
# The proxy as one process (master_process off), so that strace sees the worker from the start.
nginx_conf proxy "master_process off;" "upstream up { server 127.0.0.1:$up_port; keepalive 64; }
  server {
    listen 127.0.0.1:$proxy_port;
    client_max_body_size 0; proxy_request_buffering off; proxy_buffering off; proxy_buffer_size 64k;
    proxy_buffers 4 64k; proxy_busy_buffers_size 128k; client_body_buffer_size 64k;
    location / { proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_pass http://up; }
  }"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
"$nginx" -p "$work" -c "$work/upstream.conf" & pids+=($!)
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
  start_node "$bin"; pids+=($node_pid)
  measure "$bin" "$node_pid" "$http_port"
  kill -TERM "$node_pid"; wait "$node_pid" || true
done
