#!/usr/bin/env bash
# Scale-out end-to-end benchmark: HTTP → ingest process → Redis stream → writer process
# → ClickHouse, on this machine (Debian's redis-server and clickhouse-server, started
# here on loopback in a temporary directory). Reports the ingest rate, the end-to-end
# rate (events acknowledged ÷ time until all of them are rows in ClickHouse), the queue
# lag under load, and — as the baseline, in the same run — clickhouse-client inserting
# the same rows. Stops by itself.
#
#   bench/scale_out.sh                   # 10 s of 100-event requests, 16 connections
#   DURATION=20s CONNS=32 bench/scale_out.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
DURATION=${DURATION:-10s}
CONNS=${CONNS:-16}
BATCH=${BATCH:-100}

ensure_build_deps
ensure_test_services
cargo build --release --locked --workspace --all-targets
command -v oha >/dev/null || cargo install oha --locked
BIN="$CARGO_TARGET_DIR/release"
work=$(mktemp -d)
pids=()
# Tally's processes first (started last), each waited for, so they do not log Redis
# going away.
cleanup() { for ((i=${#pids[@]}-1; i>=0; i--)); do kill "${pids[i]}" 2>/dev/null || true; wait "${pids[i]}" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
REDIS_PORT=$(free_port); CH_HTTP=$(free_port); CH_TCP=$(free_port); INGEST=$(free_port); WRITER=$(free_port)
mkdir -p "$work/redis" "$work/data"

redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly yes --appendfsync always \
    --dir "$work/redis" >/dev/null 2>&1 & pids+=($!)
pids+=("$(start_clickhouse "$work/ch" "$CH_HTTP" "$CH_TCP")")
CH="http://127.0.0.1:$CH_HTTP"
ch() { curl -sf "$CH/" --data-binary "$1"; }

"$BIN/tally" --data-dir "$work/data" project create bench --format json > "$work/keys.json"
WRITE=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["write_key"])' "$work/keys.json")
export TALLY_QUEUE_BACKEND=redis TALLY_STORE_BACKEND=clickhouse TALLY_LOG=warn
export TALLY_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/" TALLY_CLICKHOUSE_URL="$CH" TALLY_CLICKHOUSE_DATABASE=bench
"$BIN/tally" --data-dir "$work/data" serve --role ingest --listen "127.0.0.1:$INGEST" & pids+=($!)
TALLY_REDIS_CONSUMER=w1 "$BIN/tally" --data-dir "$work/data" serve --role writer --listen "127.0.0.1:$WRITER" & pids+=($!)
for p in $INGEST $WRITER; do
    for _ in $(seq 300); do curl -sf "http://127.0.0.1:$p/healthz" >/dev/null && break; sleep 0.1; done
done

body=$(python3 -c "
import json,sys
n=int(sys.argv[1])
print(json.dumps([{'event_name':'bench_batch','user_id':'u%d'%i,'context':{'device_id':'d%d'%i},'properties':{'plan':'pro','i':i,'page_path':'/p/%d'%(i%50)}} for i in range(n)]))" "$BATCH")

# Queue lag, sampled from the ingest process's /metrics while the load runs.
( while true; do
    curl -s "http://127.0.0.1:$INGEST/metrics" | awk -v t="$(date +%s.%N)" \
        '/^tally_wal_pending_records /{p=$2} /^tally_stream_lag_entries /{l=$2} END{print t, p+0, l+0}'
    sleep 0.5
  done ) > "$work/lag.txt" & sampler=$!

start=$(date +%s.%N)
oha --no-tui --output-format json -m POST -H "x-api-key: $WRITE" -H 'content-type: application/json' \
    -d "$body" -z "$DURATION" -c "$CONNS" "http://127.0.0.1:$INGEST/api/track" > "$work/oha.json"
sent_end=$(date +%s.%N)
acked=$(python3 -c '
import json,sys
r=json.load(open(sys.argv[1]))
print(r["statusCodeDistribution"].get("200",0)*int(sys.argv[2]))' "$work/oha.json" "$BATCH")
while [ "$(ch 'SELECT count() FROM bench.events FINAL')" -lt "$acked" ]; do sleep 0.2; done
done_at=$(date +%s.%N)
kill "$sampler" 2>/dev/null || true
stored=$(ch 'SELECT count() FROM bench.events FINAL')

# Baseline: clickhouse-client inserting the same rows into a copy of the table.
ch 'SELECT * FROM bench.events FORMAT JSONEachRow' > "$work/rows.jsonl"
ch 'CREATE DATABASE copy' >/dev/null
ch 'CREATE TABLE copy.events AS bench.events' >/dev/null
c0=$(date +%s.%N)
clickhouse-client --host 127.0.0.1 --port "$CH_TCP" --query 'INSERT INTO copy.events FORMAT JSONEachRow' < "$work/rows.jsonl"
c1=$(date +%s.%N)
copied=$(ch 'SELECT count() FROM copy.events')

version=$(ch 'SELECT version()')
python3 - "$work" "$start" "$sent_end" "$done_at" "$acked" "$stored" "$c0" "$c1" "$copied" "$DURATION" "$CONNS" "$BATCH" "$version" <<'PY'
import json, sys, statistics
work, start, sent_end, done_at, acked, stored, c0, c1, copied, duration, conns, batch, version = sys.argv[1:]
start, sent_end, done_at, c0, c1 = map(float, (start, sent_end, done_at, c0, c1))
acked, stored, copied = int(acked), int(stored), int(copied)
oha = json.load(open(f"{work}/oha.json"))
lat = oha["latencyPercentiles"]
lags = [float(l.split()[1]) for l in open(f"{work}/lag.txt") if len(l.split()) == 3]
ingest_rate = acked / (sent_end - start)
e2e = acked / (done_at - start)
client = copied / (c1 - c0)
print(f"{duration} of {batch}-event requests on {conns} connections; 1 ingest + 1 writer process, Redis 7 (appendfsync always), ClickHouse {version.strip()}, all on loopback\n")
print("| measure | value |\n|---|---:|")
print(f"| events acknowledged (200) | {acked:,} |")
print(f"| rows in ClickHouse (FINAL) | {stored:,} |")
print(f"| ingest rate, events/s | {ingest_rate:,.0f} |")
print(f"| request latency p50 / p99, ms | {lat['p50']*1e3:.1f} / {lat['p99']*1e3:.1f} |")
print(f"| end-to-end rate (acked ÷ time until all stored), events/s | {e2e:,.0f} |")
print(f"| drain after the load stopped, s | {done_at - sent_end:.1f} |")
if lags:
    print(f"| queue backlog under load (entries = requests), median / max | {statistics.median(lags):,.0f} / {max(lags):,.0f} |")
print(f"| baseline: clickhouse-client inserting the same {copied:,} rows, rows/s | {client:,.0f} |")
print(f"| end-to-end ÷ baseline | {e2e/client:.2f} |")
PY
