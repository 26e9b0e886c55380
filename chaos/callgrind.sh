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
source chaos/small-route.sh
"$nginx" -p "$work" -c "$work/upstream.conf" &
nginx_pid=$!
trap 'kill $nginx_pid 2>/dev/null; rm -rf "$work"' EXIT
for bin in "${bins[@]}"; do
  out="$work/callgrind.out"
  rm -f "$out".*
  start_node valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out.%p" "$bin"
  vpid=$node_pid
  "$gen" load "$(spec "$http_port" 2000 1)" >/dev/null
  callgrind_control -i on "$vpid" >/dev/null
  result=$("$gen" load "$(spec "$http_port" 0 8000)" | sed -n 's/^result //p')
  callgrind_control -i off "$vpid" >/dev/null
  kill -TERM "$vpid"; wait "$vpid" || true
  [ -z "${GATEHOUSE_CALLGRIND_KEEP:-}" ] || cp "$out".* "$GATEHOUSE_CALLGRIND_KEEP"/
  requests=$(echo "$result" | sed 's/.*"completed":\([0-9]*\).*/\1/')
  instructions=$(grep -h '^summary:\|^totals:' "$out".* | awk '{s += $2} END {print s}')
  [ "${requests:-0}" -gt 0 ] || { echo "$bin: no request completed" >&2; exit 1; }
  echo "$bin: $requests requests, $instructions instructions, $((instructions / requests)) per request"
done
