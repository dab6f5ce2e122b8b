#!/usr/bin/env bash
# Ingest load benchmark: Tally's full durable path (WAL fsync=always, DuckDB writer)
# next to a baseline axum handler that only answers 200, measured in the same run on the
# same machine, with the load generator (oha) on the same machine too. All traffic goes
# to 127.0.0.1 and every step stops by itself.
#
#   bench/ingest.sh                 # defaults below
#   RUNS=5 DURATION=20s bench/ingest.sh
#   TALLY_BIN=/path/to/other/tally bench/ingest.sh   # another build of Tally
#
# Prints a Markdown table of medians over RUNS interleaved runs (see docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
RATE=${RATE:-10000}
BATCH=${BATCH:-100}

source bench/ingest_common.sh
batch=$(python3 -c "
import json,sys
n=int(sys.argv[1])
print(json.dumps([{'event_name':'bench_batch','user_id':'u%d'%i,'properties':{'plan':'pro','i':i}} for i in range(n)]))" "$BATCH")

load() { # name port body extra-args... → oha JSON in $work/name.json
    local name=$1 port=$2 body=$3; shift 3
    oha --no-tui --output-format json -m POST -H "x-api-key: $WRITE" -H 'content-type: application/json' \
        -d "$body" "$@" "http://127.0.0.1:$port/api/track" > "$work/$name.json"
}

cpu_ticks() { awk '{print $14+$15}' "/proc/$tally_pid/stat"; }

echo "warming up" >&2
load warm-base "$BASE_PORT" "$single" -z 2s -c "$CONNS"
load warm-tally "$TALLY_PORT" "$single" -z 2s -c "$CONNS"
for run in $(seq "$RUNS"); do
    echo "run $run/$RUNS" >&2
    load "max-base-$run" "$BASE_PORT" "$single" -z "$DURATION" -c "$CONNS"
    t0=$(cpu_ticks)
    load "max-tally-$run" "$TALLY_PORT" "$single" -z "$DURATION" -c "$CONNS"
    echo $(( $(cpu_ticks) - t0 )) > "$work/cpu-max-tally-$run"
    load "rate-base-$run" "$BASE_PORT" "$single" -z "$DURATION" -c "$CONNS" -q "$RATE"
    load "rate-tally-$run" "$TALLY_PORT" "$single" -z "$DURATION" -c "$CONNS" -q "$RATE"
    load "batch-base-$run" "$BASE_PORT" "$batch" -z "$DURATION" -c 16
    load "batch-tally-$run" "$TALLY_PORT" "$batch" -z "$DURATION" -c 16
done
rss_kb=$(awk '/VmHWM/{print $2}' "/proc/$tally_pid/status")

echo "measuring time from 200 to queryable" >&2
"$BIN/freshness" "http://127.0.0.1:$TALLY_PORT" "$WRITE" "$READ" 50 > "$work/freshness.json"

# Every acknowledged event must be in the store: compare the 200s with the count.
sleep 1
stored=$(curl -s "http://127.0.0.1:$TALLY_PORT/api/v1/query" -H "x-api-key: $READ" \
    -d '{"metrics":["events"],"date_range":"all","filters":[["is","event:name",["bench_event","bench_batch"]]]}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["results"][0]["metrics"][0])')

python3 bench/report.py "$work" "$RUNS" "$BATCH" "$stored" "$rss_kb" "$DURATION" "$CONNS" "$RATE"
