#!/usr/bin/env bash
# Ingest latency while heavy queries run (issue 19.4): one Tally on a copy of the
# 10M-event bench file, single-event ingest at a fixed ~2,000 req/s (wrk, 20
# connections, each waiting 10 ms between requests), first alone, then while 100
# clients send 3-step funnels over and over. Prints wrk's req/s and latency percentiles
# for both, and how the queries ended (200 / 503 too_busy / other). Stops by itself.
#   bench/ingest_under_queries.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
SECS=${1:-20}
BIN="$CARGO_TARGET_DIR/release/tally"
DB=${BENCH_DB:-/var/cache/tally-bench/events-10m.duckdb}
[[ -f $DB ]] || DB=/var/cache/tally-bench/ab-10m.duckdb
[[ -f $DB ]] || { echo "no bench file: run bench/query.sh first" >&2; exit 1; }
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
d=$(mktemp -d); trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf $d' EXIT
cp "$DB" "$d/tally.duckdb"
keys=$("$BIN" --data-dir "$d" project create bench --format json)
write=$(python3 -c 'import json,sys;print(json.loads(sys.argv[1])["write_key"])' "$keys")
read=$(python3 -c 'import json,sys;print(json.loads(sys.argv[1])["read_key"])' "$keys")
port=18093
"$BIN" --data-dir "$d" serve --listen 127.0.0.1:$port >"$d/log" 2>&1 & pid=$!
for _ in $(seq 600); do curl -sf 127.0.0.1:$port/readyz >/dev/null && break; sleep 0.1; done
cat > "$d/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '[{"event_name":"bench","user_id":"u1","properties":{"plan":"pro"}}]'
wrk.headers["content-type"] = "application/json"
wrk.headers["x-api-key"] = "$write"
function delay() return 10 end
LUA
ingest() { wrk -t2 -c20 -d${SECS}s --latency -s "$d/post.lua" http://127.0.0.1:$port/api/track | grep -E "Requests/sec|50%|90%|99%|Non-2xx"; }
echo "== ingest alone"; ingest
echo "== ingest while 100 clients send funnels"
python3 - "$port" "$read" "$SECS" > "$d/queries" <<'PY' &
import json, sys, threading, time, urllib.request, urllib.error, collections
port, key, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
body = json.dumps({"kind": "funnel", "date_range": "30d", "window": {"value": 14, "unit": "day"},
    "steps": [{"event": "page_visit"}, {"event": "signup"}, {"event": "purchase"}]}).encode()
end = time.time() + secs + 1
seen = collections.Counter(); lock = threading.Lock()
def client():
    while time.time() < end:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/query", data=body,
            headers={"x-api-key": key, "content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r: outcome = str(r.status)
        except urllib.error.HTTPError as e:
            outcome = f"{e.code} {json.loads(e.read()).get('error')}"
            if e.code == 503: time.sleep(1)  # Retry-After: 1
        except Exception as e: outcome = type(e).__name__
        with lock: seen[outcome] += 1
threads = [threading.Thread(target=client) for _ in range(100)]
[t.start() for t in threads]; [t.join() for t in threads]
print(dict(seen))
PY
qpid=$!
sleep 1; ingest
wait $qpid; echo "queries: $(cat "$d/queries")"
echo "rss of tally: $(ps -o rss= -p $pid) KiB"
