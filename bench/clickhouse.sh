#!/usr/bin/env bash
# ClickHouse insert benchmark: Tally's ClickHouse store against clickhouse-client
# inserting the same rows, in the same run, on a ClickHouse server (Debian's package)
# started here on loopback in a temporary directory. Stops by itself.
#
#   bench/clickhouse.sh                  # 1M events, 10k per batch, 3 runs
#   EVENTS=200000 RUNS=5 bench/clickhouse.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
EVENTS=${EVENTS:-1000000}
BATCH=${BATCH:-10000}
RUNS=${RUNS:-3}
HTTP_PORT=${HTTP_PORT:-18123}
NATIVE_PORT=${NATIVE_PORT:-19000}

ensure_build_deps
ensure_test_services
cargo build --release --locked --workspace --all-targets
BIN="$CARGO_TARGET_DIR/release"
work=$(mktemp -d)
ch_pid=""
cleanup() { [ -n "$ch_pid" ] && kill "$ch_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

ch_pid=$(start_clickhouse "$work/ch" "$HTTP_PORT" "$NATIVE_PORT")

"$BIN/ch_insert_bench" --url "http://127.0.0.1:$HTTP_PORT" --native-port "$NATIVE_PORT" \
    --events "$EVENTS" --batch "$BATCH" --runs "$RUNS" --rows-file "$work/rows.jsonl"
