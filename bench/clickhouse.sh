#!/usr/bin/env bash
# ClickHouse benchmarks on a ClickHouse server (Debian's package) started here on
# loopback in a temporary directory. Each stops by itself.
#
#   bench/clickhouse.sh [insert]   # Tally's ClickHouse store against clickhouse-client
#                                  # inserting the same rows, in the same run:
#                                  # 1M events, 10k per batch, 3 runs
#   bench/clickhouse.sh rollup     # stats from the events_hourly rollup against the same
#                                  # stats from the events, with a raw count() as the
#                                  # baseline: 10M events over 30 days, 10 runs per query
#   EVENTS=200000 RUNS=5 bench/clickhouse.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
MODE=${1:-insert}
case "$MODE" in
    insert) EVENTS=${EVENTS:-1000000}; RUNS=${RUNS:-3} ;;
    rollup) EVENTS=${EVENTS:-10000000}; RUNS=${RUNS:-10} ;;
    *) echo "usage: bench/clickhouse.sh [insert|rollup]" >&2; exit 2 ;;
esac
BATCH=${BATCH:-10000}
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

if [ "$MODE" = rollup ]; then
    "$BIN/ch_rollup_bench" --url "http://127.0.0.1:$HTTP_PORT" --events "$EVENTS" --runs "$RUNS"
else
    "$BIN/ch_insert_bench" --url "http://127.0.0.1:$HTTP_PORT" --native-port "$NATIVE_PORT" \
        --events "$EVENTS" --batch "$BATCH" --runs "$RUNS" --rows-file "$work/rows.jsonl"
fi
