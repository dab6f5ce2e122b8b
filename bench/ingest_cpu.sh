#!/usr/bin/env bash
# Where a single-event request's CPU goes: runs bench/ingest.sh's max-rate load
# (single-event requests, 64 connections, oha on the same machine) against the baseline
# and Tally, interleaved, and reads the CPU time of every Tally thread from
# /proc/<pid>/task around each run, with the WAL's and the writer's metrics. Prints the
# medians over RUNS runs: microseconds of CPU per request for the baseline and for
# Tally's HTTP workers, WAL thread, writer thread and DuckDB's threads; then the JSON
# work of one request measured alone (codec_bench). All traffic goes to 127.0.0.1 and
# every step stops by itself.
#
#   bench/ingest_cpu.sh
#   RUNS=5 DURATION=8s bench/ingest_cpu.sh
#   TALLY_QUEUE_FSYNC=never bench/ingest_cpu.sh     # any TALLY_* setting reaches Tally
#   TALLY_BIN=/tmp/old/tally bench/ingest_cpu.sh    # another build of Tally (A/B)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-8s}
CONNS=${CONNS:-64}

source bench/ingest_common.sh

load() { # port → requests answered 2xx
    oha --no-tui --output-format json -m POST -H "x-api-key: $WRITE" -H 'content-type: application/json' \
        -d "$single" -z "$DURATION" -c "$CONNS" "http://127.0.0.1:$1/api/track" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(v for k,v in d["statusCodeDistribution"].items() if k.startswith("2")), d["summary"]["total"])'
}
# Every thread's CPU ticks (`tid comm ticks`), then the metrics the report reads.
snapshot() {
    for t in /proc/"$1"/task/*; do
        echo "$(basename "$t") $(tr ' ' _ < "$t/comm") $(awk '{print $14+$15}' "$t/stat")"
    done > "$2.threads"
    if [ "$1" = "$tally_pid" ]; then
        curl -s "http://127.0.0.1:$TALLY_PORT/metrics" |
            grep -E '^tally_wal_(fsyncs_total|fsync_seconds_sum|group_commit_records_(sum|count)) |^tally_writer_batch_events_(sum|count) ' > "$2.metrics" || true
    fi
}

echo "warming up" >&2
load "$BASE_PORT" > /dev/null
load "$TALLY_PORT" > /dev/null
for run in $(seq "$RUNS"); do
    echo "run $run/$RUNS" >&2
    snapshot "$base_pid" "$work/base-$run-0"
    load "$BASE_PORT" > "$work/base-$run.load"
    snapshot "$base_pid" "$work/base-$run-1"
    snapshot "$tally_pid" "$work/tally-$run-0"
    load "$TALLY_PORT" > "$work/tally-$run.load"
    snapshot "$tally_pid" "$work/tally-$run-1"
done

python3 bench/cpu_report.py "$work" "$RUNS" "$(nproc)" "$(getconf CLK_TCK)"
echo
"$BIN/codec_bench"
