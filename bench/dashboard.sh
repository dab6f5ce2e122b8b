#!/usr/bin/env bash
# The result cache on a dashboard workload (docs/benchmarks.md, issue 15): the same
# fixed-seed trace (bench/dashboard.py: 20 dashboards x 8 tiles over PROJECTS projects,
# Zipf popularity, 20% ad-hoc filters, VIEWERS viewers refreshing, ingest at INGEST_RATE
# events/s with 5% of them 1-48 h late) against one Tally with the cache off and then on,
# each on its own copy of the same preloaded data. Traffic goes to 127.0.0.1 only; every
# step stops by itself.
#
#   bench/dashboard.sh                       # EVENTS=1000000 PROJECTS=10 DURATION=60
#   EVENTS=10000000 DURATION=120 bench/dashboard.sh
#
# Prints a Markdown table: store queries and store time per minute, the share of tile
# requests that never reached the store, tile latency, errors, the largest age of a stale
# answer served, and the correctness check.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
EVENTS=${EVENTS:-1000000}
PROJECTS=${PROJECTS:-10}
DURATION=${DURATION:-60}
PORT=${PORT:-18090}
export VIEWERS=${VIEWERS:-50} REFRESH_S=${REFRESH_S:-2} INGEST_RATE=${INGEST_RATE:-2000}

ensure_build_deps
# The same target set as scripts/test.sh and scripts/run.sh, so DuckDB is built once.
cargo build --release --locked --workspace --all-targets
TALLY_BIN=${TALLY_BIN:-$CARGO_TARGET_DIR/release/tally}
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start() { # data-dir, then NAME=VALUE settings
    local data=$1; shift
    env TALLY_LOG=warn "$@" "$TALLY_BIN" --data-dir "$data" serve --listen "127.0.0.1:$PORT" \
        > "$work/serve.log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do
        curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && return 0
        sleep 0.1
    done
    echo "tally never became ready" >&2
    exit 1
}
stop() { kill -TERM "$pid"; wait "$pid" || true; pid=; }

python3 - "$TALLY_BIN" "$work/data" "$PROJECTS" > "$work/keys.json" <<'PY'
import json, subprocess, sys
bin, data, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
keys = {}
for i in range(n):
    out = subprocess.run([bin, "--data-dir", data, "project", "create", "p%d" % i, "--format", "json"],
                         check=True, capture_output=True, text=True).stdout
    keys["p%d" % i] = json.loads(out)
print(json.dumps(keys))
PY

start "$work/data" TALLY_CACHE_ENABLED=false
echo "preloading $EVENTS events over 91 days into $PROJECTS projects" >&2
python3 - "$PORT" "$work/keys.json" "$EVENTS" <<'PY'
import http.client, json, random, sys, threading, time
port, keys, n = int(sys.argv[1]), json.load(open(sys.argv[2])), int(sys.argv[3])
projects = sorted(keys)
pages = ["/", "/pricing", "/docs", "/blog", "/signup"] + ["/p%d" % i for i in range(45)]
names = ["page_visit", "signed_up", "purchase", "invite_sent"]
now = time.time()
def send(part):
    rng = random.Random(part)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for start in range(part * 1000, n, 4 * 1000):
        p = projects[(start // 1000) % len(projects)]
        batch = [{"event_name": rng.choices(names, [20, 2, 1, 1])[0], "user_id": "u%d" % rng.randrange(20000),
                  "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - rng.random() * 91 * 86400)),
                  "properties": {"page_path": rng.choice(pages)}} for _ in range(min(1000, n - start))]
        while True:
            c.request("POST", "/api/track", json.dumps(batch).encode(),
                      {"x-api-key": keys[p]["write_key"], "content-type": "application/json"})
            r = c.getresponse(); r.read()
            if r.status == 200:
                break
            time.sleep(0.5)
ts = [threading.Thread(target=send, args=(i,)) for i in range(4)]
for t in ts: t.start()
for t in ts: t.join()
PY
# Wait until the writer has stored them all.
for _ in $(seq 1200); do
    stored=$(python3 - "$PORT" "$work/keys.json" <<'PY'
import http.client, json, sys
port, keys = int(sys.argv[1]), json.load(open(sys.argv[2]))
total = 0
for k in keys.values():
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("POST", "/api/v1/query", json.dumps({"metrics": ["events"], "date_range": "all"}).encode(),
              {"x-api-key": k["read_key"]})
    total += json.loads(c.getresponse().read())["results"][0]["metrics"][0]
print(total)
PY
)
    [ "$stored" -ge "$EVENTS" ] && break
    sleep 0.5
done
echo "stored: $stored" >&2
stop
cp -a "$work/data" "$work/data-on"

echo "cache off: $DURATION s of the trace" >&2
start "$work/data" TALLY_CACHE_ENABLED=false
python3 bench/dashboard.py "$PORT" "$work/keys.json" "$DURATION" "$work/off.json"
stop
echo "cache on: $DURATION s of the same trace" >&2
start "$work/data-on"
python3 bench/dashboard.py "$PORT" "$work/keys.json" "$DURATION" "$work/on.json"
stop

python3 - "$work/off.json" "$work/on.json" "$stored" "$PROJECTS" <<'PY'
import json, sys
off, on = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
stored, projects = sys.argv[3], sys.argv[4]
print(f"{stored} events in {projects} projects; {off['seconds']:.0f} s of the trace each")
print()
print("| | cache off | cache on | on / off |")
print("|---|---:|---:|---:|")
def per_min(r, k): return r[k] / r["seconds"] * 60
rows = [
    ("tile requests answered 200", off["ok"], on["ok"]),
    ("tile requests refused or failed", off["non_200"], on["non_200"]),
    ("store queries per minute", per_min(off, "store_queries"), per_min(on, "store_queries")),
    ("store time per minute (s)", per_min(off, "store_seconds"), per_min(on, "store_seconds")),
    ("share of requests that never reached the store", off["hits"] / max(1, off["requests"]), on["hits"] / max(1, on["requests"])),
    ("tile p50 (ms)", off["p50_ms"], on["p50_ms"]),
    ("tile p99 (ms)", off["p99_ms"], on["p99_ms"]),
    ("events ingested during the trace", off["events_sent"], on["events_sent"]),
]
for name, a, b in rows:
    ratio = f"{b / a:.3f}" if a else "-"
    fmt = (lambda v: f"{v:.1%}") if name.startswith("share") else (lambda v: f"{v:,.1f}" if isinstance(v, float) else f"{v:,}")
    print(f"| {name} | {fmt(a)} | {fmt(b)} | {ratio} |")
print()
print(f"cache on: {on['stale_served']} answers served stale (within the allowance), the oldest {on['max_stale_age_s']:.1f} s old; "
      f"correctness: {on['checked']} sampled tiles asked as viewers do and then computed (\"force\") after ingest stopped: {on['wrong']} differ")
PY
