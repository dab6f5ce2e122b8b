#!/usr/bin/env bash
# ClickHouse rollup benchmark: stats queries answered from the events against the same
# queries answered from the events_hourly rollup, with a raw count() as the baseline, in
# the same run, on a ClickHouse server (Debian's package) started here on loopback in a
# temporary directory. Stops by itself.
#
#   bench/rollup.sh                      # 10M events over 30 days, 10 runs per query
#   EVENTS=2000000 RUNS=20 bench/rollup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
EVENTS=${EVENTS:-10000000}
RUNS=${RUNS:-10}
HTTP_PORT=${HTTP_PORT:-18124}
NATIVE_PORT=${NATIVE_PORT:-19001}

ensure_build_deps
ensure_test_services
cargo build --release --locked --workspace --all-targets
BIN="$CARGO_TARGET_DIR/release"
work=$(mktemp -d)
ch_pid=""
cleanup() { [ -n "$ch_pid" ] && kill "$ch_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

ch_pid=$(start_clickhouse "$work/ch" "$HTTP_PORT" "$NATIVE_PORT")
"$BIN/ch_rollup_bench" --url "http://127.0.0.1:$HTTP_PORT" --events "$EVENTS" --runs "$RUNS"
