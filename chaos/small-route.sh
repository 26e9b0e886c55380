# Sourced by chaos/callgrind.sh and chaos/syscalls.sh: the set-up both measure on — a static nginx
# upstream, gatehouse node builds with one unprotected route to it on one HTTP worker, and the
# load generator's closed-loop spec. Expects to run from the repository root with `set -euo pipefail`.
# Sets: gen (load generator), bins (node binaries: the arguments, or a fresh release build), work
# (a temporary directory), up_port, proxy_port, http_port, debug_port.
# GATEHOUSE_ROUTE=share measures a cached public share instead: a password-less link whose share
# service is a fixed answer of the upstream nginx (asked once, then answered from the node's cache).
# GATEHOUSE_ROUTE=upload measures 1 MiB uploads (PUT, unprotected) to a WebDAV store of the upstream
# nginx, which answers once it has the whole body.

cargo build --release --locked -p gatehouse-chaos
gen=${CARGO_TARGET_DIR:-target}/release/gatehouse-chaos
bins=("$@")
[ ${#bins[@]} -gt 0 ] || { cargo build --release --locked -p gatehouse-node; bins=("${CARGO_TARGET_DIR:-target}/release/gatehouse"); }
nginx=${GATEHOUSE_NGINX:-/usr/sbin/nginx}
work=$(mktemp -d)
up_port=$((20000 + RANDOM % 20000)); proxy_port=$((up_port + 1)); http_port=$((up_port + 2)); debug_port=$((up_port + 3))

# nginx_conf <name> <extra main directives> <http block body>: one worker, no daemon, no access log.
nginx_conf() {
  local user=""; [ "$(id -u)" -eq 0 ] && user="user root root;"
  cat >"$work/$1.conf" <<CONF
$user
worker_processes 1;
daemon off;
$2
pid $work/$1.pid;
error_log $work/$1.log warn;
events { worker_connections 1024; }
http {
  access_log off; keepalive_requests 100000000;
  client_body_temp_path $work/$1-b; proxy_temp_path $work/$1-p; fastcgi_temp_path $work/$1-f;
  uwsgi_temp_path $work/$1-u; scgi_temp_path $work/$1-s;
  $3
}
CONF
}

route=${GATEHOUSE_ROUTE:-unprotected}
share_token=benchsharetoken
share_answer='{"share":{"id":"s-bench","token":"'$share_token'","role":"viewer","owner":{"id":"u-1","username":"einstein"}}}'
nginx_conf upstream "" \
  "server { listen 127.0.0.1:$up_port; location / { default_type text/plain; return 200 \"hello from upstream\\n\"; }
    location = /v1/public-shares/authenticate { default_type application/json; return 200 '$share_answer'; }
    location ~ /upload\$ { client_max_body_size 0; root $work/store; client_body_temp_path $work/store-in;
      dav_methods PUT; create_full_put_path on; } }"

cat >"$work/proxy.yaml" <<CONF
http:
  workers: 1
policies:
  - name: ocis
    routes:
      - endpoint: /bench
        backend: http://127.0.0.1:$up_port
        unprotected: true
      - endpoint: /
        backend: http://127.0.0.1:$up_port
token_manager:
  jwt_secret: bench-secret
public_shares:
  url: http://127.0.0.1:$up_port
CONF

method=GET body_bytes=0
case $route in
  unprotected) path=/bench/hello; headers='[]' ;;
  share) path=/dav/public-files/$share_token/hello; headers="[[\"public-token\",\"$share_token\"]]" ;;
  upload) path=/bench/upload; headers='[]'; method=PUT; body_bytes=1048576 ;;
  *) echo "GATEHOUSE_ROUTE: unknown route $route (unprotected, share, upload)" >&2; exit 1 ;;
esac

# spec <port> <warm-up ms> <measured ms>: 8 connections, closed loop, $method $path.
spec() { echo "{\"addr\":\"127.0.0.1:$1\",\"paths\":[\"$path\"],\"method\":\"$method\",\"headers\":$headers,\"body_bytes\":$body_bytes,\"connections\":8,\"rate\":null,\"warmup_ms\":$2,\"measure_ms\":$3}"; }

# start_node <command…>: starts a node (the command may be a wrapper such as valgrind) on http_port/debug_port; sets node_pid; waits until ready.
start_node() {
  PROXY_HTTP_ADDR=127.0.0.1:$http_port PROXY_DEBUG_ADDR=127.0.0.1:$debug_port PROXY_TLS=false PROXY_LOG_LEVEL=error \
    "$@" --config "$work/proxy.yaml" server >"$work/node.log" 2>&1 &
  node_pid=$!
  for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$debug_port/readyz" && return 0; sleep 0.2; done
  cat "$work/node.log" >&2
  return 1
}
