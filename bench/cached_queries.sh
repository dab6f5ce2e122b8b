#!/usr/bin/env bash
# The query result cache under load: one dashboard tile asked again and again (a cached
# answer every time but the first), next to the same tile computed every time
# ("refresh": "force") and the empty-handler baseline, all in the same run on the same
# machine with the load generator (oha) on it too. Traffic goes to 127.0.0.1 only; every
# step stops by itself.
#
#   bench/cached_queries.sh                  # defaults below
#   RUNS=5 DURATION=20s EVENTS=200000 bench/cached_queries.sh
#
# Prints a Markdown table of medians over RUNS interleaved runs (docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
RATE=${RATE:-1000}
EVENTS=${EVENTS:-100000}

source bench/ingest_common.sh

echo "sending $EVENTS events over the last 30 days" >&2
python3 - "$TALLY_PORT" "$WRITE" "$EVENTS" <<'PY'
import json, random, sys, time, urllib.request
port, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(7)
now = time.time()
names = ["page_visit", "signed_up", "purchase", "invite_sent"]
for start in range(0, n, 1000):
    batch = []
    for i in range(start, min(n, start + 1000)):
        t = now - rng.random() * 30 * 86400
        batch.append({"event_name": rng.choice(names), "user_id": "u%d" % rng.randrange(5000),
                      "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)),
                      "properties": {"page_path": "/p%d" % rng.randrange(50)}})
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/track", json.dumps(batch).encode(),
                                 {"x-api-key": key, "content-type": "application/json"})
    urllib.request.urlopen(req).read()
PY
# Wait until the writer has stored them all.
for _ in $(seq 600); do
    stored=$(curl -s "http://127.0.0.1:$TALLY_PORT/api/v1/query" -H "x-api-key: $READ" \
        -d '{"metrics":["events"],"date_range":"all","refresh":"force"}' |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["results"][0]["metrics"][0])')
    [ "$stored" -ge "$EVENTS" ] && break
    sleep 0.1
done
echo "stored: $stored" >&2

tile='{"metrics":["visitors","pageviews","events"],"date_range":"28d","dimensions":["event:page"],"pagination":{"limit":10}}'
forced='{"metrics":["visitors","pageviews","events"],"date_range":"28d","dimensions":["event:page"],"pagination":{"limit":10},"refresh":"force"}'
load() { # name port path body extra-args... → oha JSON in $work/name.json
    local name=$1 port=$2 path=$3 body=$4; shift 4
    oha --no-tui --output-format json -m POST -H "x-api-key: $READ" -H 'content-type: application/json' \
        -d "$body" "$@" "http://127.0.0.1:$port$path" > "$work/$name.json"
}
store_queries() {
    curl -s "http://127.0.0.1:$TALLY_PORT/metrics" |
        awk '/^tally_store_queries_total\{kind="stats"\}/ {print $2}'
}

load warm-base "$BASE_PORT" /api/track "$tile" -z 2s -c "$CONNS"
load warm-cached "$TALLY_PORT" /api/v1/query "$tile" -z 2s -c "$CONNS"
for run in $(seq "$RUNS"); do
    echo "run $run/$RUNS" >&2
    load "max-base-$run" "$BASE_PORT" /api/track "$tile" -z "$DURATION" -c "$CONNS"
    before=$(store_queries)
    load "max-cached-$run" "$TALLY_PORT" /api/v1/query "$tile" -z "$DURATION" -c "$CONNS"
    echo $(( ${before%.*} )) $(( $(store_queries | cut -d. -f1) )) > "$work/store-cached-$run"
    load "rate-base-$run" "$BASE_PORT" /api/track "$tile" -z "$DURATION" -c "$CONNS" -q "$RATE"
    load "rate-cached-$run" "$TALLY_PORT" /api/v1/query "$tile" -z "$DURATION" -c "$CONNS" -q "$RATE"
    load "max-computed-$run" "$TALLY_PORT" /api/v1/query "$forced" -z "$DURATION" -c 4
done

python3 - "$work" "$RUNS" "$RATE" "$CONNS" "$DURATION" "$stored" <<'PY'
import json, os, statistics, sys
work, runs, rate, conns, duration, stored = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
def load(name):
    with open(os.path.join(work, name + ".json")) as f:
        return json.load(f)
def row(prefix):
    rps, p50, p99, bad = [], [], [], 0
    for r in range(1, runs + 1):
        d = load(f"{prefix}-{r}")
        codes = d.get("statusCodeDistribution", {})
        good = sum(v for k, v in codes.items() if k.startswith("2"))
        bad += sum(codes.values()) - good
        rps.append(good / d["summary"]["total"])
        p50.append(d["latencyPercentiles"]["p50"] * 1000)
        p99.append(d["latencyPercentiles"]["p99"] * 1000)
    return statistics.median(rps), statistics.median(p50), statistics.median(p99), bad
print(f"{stored} events; medians of {runs} runs of {duration}; {conns} connections")
print()
print("| test | server | req/s | p50 ms | p99 ms | non-2xx |")
print("|---|---|---:|---:|---:|---:|")
base_max = row("max-base")
for label, prefix in [("max rate", "max-base"), ("max rate", "max-cached"),
                      (f"{rate} req/s offered", "rate-base"), (f"{rate} req/s offered", "rate-cached"),
                      ("max rate, 4 connections", "max-computed")]:
    rps, p50, p99, bad = row(prefix)
    who = {"base": "empty handler", "cached": "Tally, cached tile", "computed": "Tally, computed every time"}[prefix.split("-")[1]]
    print(f"| {label} | {who} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {bad} |")
cached, computed = row("max-cached")[0], row("max-computed")[0]
print()
print(f"cached / empty handler: {cached / base_max[0]:.2f}; cached / computed: {cached / computed:,.0f}x")
reached = []
for r in range(1, runs + 1):
    a, b = open(os.path.join(work, f"store-cached-{r}")).read().split()
    reached.append(int(b) - int(a))
print(f"store queries during each cached max-rate run: {reached}")
PY
