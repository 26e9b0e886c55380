#!/usr/bin/env bash
# The profile-guided release build of the gatehouse binary (docs/performance.md, "The
# profile-guided build"). An instrumented build serves one short round of the fair benchmark —
# every kind of request it measures: unprotected, cached token, signed URL and public share,
# 1 MiB bodies both ways, HTTP/2, TLS, tracing at ratio 0 —, the counts it writes on its clean
# exit are merged, and the release build is made again with them.
# Output: ${CARGO_TARGET_DIR:-target}/pgo/gatehouse. Needs what tests/run-all.sh installs, and
# rustup's llvm-tools (added here when missing).
# Usage: chaos/pgo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
profdata=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
[ -x "$profdata" ] || rustup component add llvm-tools
[ -d tests/idp/node_modules ] || (cd tests/idp && npm ci --no-audit --no-fund)
target=$(realpath -m "${CARGO_TARGET_DIR:-target}")
work=$target/pgo
rm -rf "$work/profiles" "$work/merged.profdata"
mkdir -p "$work/profiles"

# With an explicit --target, RUSTFLAGS reach the node's code only, not build scripts or proc
# macros (which would write profiles of their own while the build runs).
build() {
  RUSTFLAGS="$1" cargo build --release --locked -p gatehouse-node --bin gatehouse \
    --target "$host" --target-dir "$work/$2"
}
build "-Cprofile-generate=$work/profiles" instrumented
cargo build --release --locked -p gatehouse-chaos --target-dir "$target"
GATEHOUSE_BIN=$work/instrumented/$host/release/gatehouse \
  "$target/release/gatehouse-chaos" fair 1 2 unpinned >"$work/training.log"
"$profdata" merge -o "$work/merged.profdata" "$work/profiles"/*.profraw
build "-Cprofile-use=$work/merged.profdata" optimized
cp "$work/optimized/$host/release/gatehouse" "$work/gatehouse"
echo "$work/gatehouse"
