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

cat > "$work/config.xml" <<XML
<yandex>
  <logger><level>warning</level><log>$work/server.log</log><errorlog>$work/error.log</errorlog></logger>
  <http_port>$HTTP_PORT</http_port>
  <tcp_port>$NATIVE_PORT</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>$work/data/</path>
  <tmp_path>$work/tmp/</tmp_path>
  <users_config>/etc/clickhouse-server/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>536870912</mark_cache_size>
</yandex>
XML
clickhouse-server --config-file="$work/config.xml" >/dev/null 2>&1 & ch_pid=$!
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$HTTP_PORT/ping" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$HTTP_PORT/ping" >/dev/null || { echo "clickhouse-server did not start" >&2; cat "$work/error.log" >&2; exit 1; }

"$BIN/ch_insert_bench" --url "http://127.0.0.1:$HTTP_PORT" --native-port "$NATIVE_PORT" \
    --events "$EVENTS" --batch "$BATCH" --runs "$RUNS" --rows-file "$work/rows.jsonl"
