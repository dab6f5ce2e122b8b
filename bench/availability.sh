#!/usr/bin/env bash
# Availability under rolling restarts (docs/deploy.md, issue 20): Debian's HAProxy on
# loopback in front of three ingest processes and a query process (scale-out mode: Redis
# Streams and ClickHouse, started here), one writer; an open-loop load of single-event
# ingest requests and queries at a fixed rate (bench/availability.py) while every ingest
# process is restarted in turn every RESTART_EVERY seconds with SIGTERM, then one is
# killed with SIGKILL. Reports the failed share inside the restart windows and overall,
# p99 inside and outside them, that every acknowledged event is stored exactly once
# (matched by id), and CPU per process. Traffic goes to 127.0.0.1 only; it stops by
# itself.
#
#   bench/availability.sh                 # INGEST_RATE=2000 QUERY_RATE=5 DURATION=420
#   RESTART_EVERY=15 DURATION=120 bench/availability.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
# 13 restarts of about 1.3 s at 2,000 req/s put over 30,000 requests inside the windows.
INGEST_RATE=${INGEST_RATE:-2000}
QUERY_RATE=${QUERY_RATE:-5}
DURATION=${DURATION:-420}
RESTART_EVERY=${RESTART_EVERY:-30}
# How long an ingest process keeps serving with /readyz 503 after SIGTERM: HAProxy's
# check interval (250 ms) times its fall count (2), and a margin.
UNREADY_MS=${UNREADY_MS:-1000}

ensure_build_deps
ensure_test_services
if ! command -v haproxy >/dev/null; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get install -y -q haproxy
    $sudo systemctl stop haproxy 2>/dev/null || $sudo service haproxy stop 2>/dev/null || true
fi
cargo build --release --locked --workspace --all-targets
BIN="$CARGO_TARGET_DIR/release"
work=$(mktemp -d)
pids=()
cleanup() { for ((i=${#pids[@]}-1; i>=0; i--)); do kill "${pids[i]}" 2>/dev/null || true; wait "${pids[i]}" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
REDIS_PORT=$(free_port); CH_HTTP=$(free_port); CH_TCP=$(free_port); WRITER=$(free_port); QUERY=$(free_port); LB=$(free_port)
I1=$(free_port); I2=$(free_port); I3=$(free_port)
mkdir -p "$work/redis" "$work/data"

redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly yes --appendfsync always \
    --dir "$work/redis" >/dev/null 2>&1 & pids+=($!); REDIS_PID=$!
CH_PID=$(start_clickhouse "$work/ch" "$CH_HTTP" "$CH_TCP"); pids+=("$CH_PID")
CH="http://127.0.0.1:$CH_HTTP"
ch() { curl -sf "$CH/" --data-binary "$1"; }

"$BIN/tally" --data-dir "$work/data" project create avail --format json > "$work/keys.json"
key() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$work/keys.json" "$1"; }
WRITE=$(key write_key); READ=$(key read_key)
export TALLY_QUEUE_BACKEND=redis TALLY_STORE_BACKEND=clickhouse TALLY_LOG=warn
export TALLY_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/" TALLY_CLICKHOUSE_URL="$CH" TALLY_CLICKHOUSE_DATABASE=avail
TALLY_REDIS_CONSUMER=w1 "$BIN/tally" --data-dir "$work/data" serve --role writer --listen "127.0.0.1:$WRITER" \
    >"$work/writer.log" 2>&1 & pids+=($!); WRITER_PID=$!
"$BIN/tally" --data-dir "$work/data" serve --role query --listen "127.0.0.1:$QUERY" \
    >"$work/query.log" 2>&1 & pids+=($!); QUERY_PID=$!
for p in $WRITER $QUERY; do
    for _ in $(seq 300); do curl -sf "http://127.0.0.1:$p/healthz" >/dev/null && break; sleep 0.1; done
done

# HAProxy: ingest round-robin over the three, out of rotation after two failed checks of
# /readyz 250 ms apart, back after one; a request whose connection fails or comes back
# empty (a keep-alive connection the process closed as it stopped) is sent again to
# another process: ingest is idempotent by message id.
cat > "$work/haproxy.cfg" <<CFG
global
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
frontend tally
    bind 127.0.0.1:$LB
    use_backend query if { path_beg /api/v1/query }
    default_backend ingest
backend ingest
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 250ms fall 2 rise 1
    server i1 127.0.0.1:$I1 check
    server i2 127.0.0.1:$I2 check
    server i3 127.0.0.1:$I3 check
backend query
    server q1 127.0.0.1:$QUERY check inter 1s
CFG
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & pids+=($!); LB_PID=$!

python3 - "$work" "$BIN/tally" "$LB" "$WRITE" "$READ" "$I1" "$I2" "$I3" "$INGEST_RATE" "$QUERY_RATE" \
    "$DURATION" "$RESTART_EVERY" "$UNREADY_MS" "$WRITER_PID" "$QUERY_PID" "$LB_PID" "$REDIS_PID" "$CH_PID" \
    > "$work/config.json" <<'PY'
import json, sys
(work, tally, lb, write, read, i1, i2, i3, rate, qrate, duration, every, unready,
 writer, query, haproxy, redis, clickhouse) = sys.argv[1:]
ingest = {}
for name, port in (("ingest-1", i1), ("ingest-2", i2), ("ingest-3", i3)):
    ingest[name] = {
        "port": int(port),
        "cmd": [tally, "--data-dir", f"{work}/data", "serve", "--role", "ingest", "--listen", f"127.0.0.1:{port}"],
        "env": {"TALLY_HTTP_UNREADY_DELAY_MS": unready},
        "log": f"{work}/{name}.log",
    }
duration = int(duration)
print(json.dumps({
    "haproxy_port": int(lb), "write_key": write, "read_key": read, "ingest": ingest,
    "ingest_rate": float(rate), "query_rate": float(qrate), "duration": duration,
    "restart_every": int(every), "first_restart": 20, "kill_at": duration - 25,
    "rise_s": 0.25, "conns": 64,
    "others": {"writer": int(writer), "query": int(query), "haproxy": int(haproxy),
               "redis": int(redis), "clickhouse": int(clickhouse)},
}))
PY

echo "load: $INGEST_RATE ingest req/s and $QUERY_RATE queries/s for $DURATION s; a SIGTERM restart every $RESTART_EVERY s, then a SIGKILL" >&2
python3 bench/availability.py "$work/config.json" "$work/report.json"

# Every acknowledged event is stored once: the rows' ids against the acknowledged ones.
acked_total=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sum(1 for x in r["rows"] if x[0]=="ingest" and x[3]==200) + r["retried_ok"])' "$work/report.json")
for _ in $(seq 600); do
    [ "$(ch 'SELECT count() FROM avail.events FINAL')" -ge "$acked_total" ] && break
    sleep 0.2
done
ch 'SELECT user_id FROM avail.events FINAL FORMAT TSV' > "$work/stored.tsv"
ch 'SELECT count(), uniqExact(user_id) FROM avail.events FINAL FORMAT TSV' > "$work/counts.tsv"
# Without FINAL: the rows as inserted (before merges), so a copy the writer let through shows.
ch 'SELECT count() FROM avail.events FORMAT TSV' > "$work/physical.tsv"
version=$(ch 'SELECT version()')

python3 - "$work" "$version" "$UNREADY_MS" <<'PY'
import json, statistics, sys
work, version, unready = sys.argv[1], sys.argv[2].strip(), sys.argv[3]
r = json.load(open(f"{work}/report.json"))
rows = r["rows"]
windows = r["windows"]
kills = r["kills"]
inside = lambda t, ws: any(w["start"] <= t <= w["end"] for w in ws)
def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3 if xs else float("nan")
def part(sel):
    n = len(sel)
    bad = sum(1 for x in sel if x[3] != 200)
    lat = [x[2] for x in sel]
    return n, bad, pct(lat, 0.5), pct(lat, 0.99)
ing = [x for x in rows if x[0] == "ingest"]
qry = [x for x in rows if x[0] == "query"]
in_w = [x for x in ing if inside(x[1], windows)]
in_k = [x for x in ing if inside(x[1], kills)]
out = [x for x in ing if not inside(x[1], windows) and not inside(x[1], kills)]
stored = [l.strip() for l in open(f"{work}/stored.tsv") if l.strip()]
count, uniq = map(int, open(f"{work}/counts.tsv").read().split())
physical = int(open(f"{work}/physical.tsv").read())
acked = {x[4] for x in ing if x[3] == 200}
sent = {x[4] for x in ing}
stored_set = set(stored)
missing = len(acked - stored_set)
extra = len(stored_set - sent)
print(f"{len(rows):,} requests over {r['seconds']:.0f} s through HAProxy: 3 ingest processes (restarted in turn, "
      f"`http.unready_delay_ms` {unready}), 1 writer, 1 query process; Redis (appendfsync always), ClickHouse {version}; all on loopback, 2 cores\n")
print("| ingest requests | n | failed | failed share | p50 ms | p99 ms |")
print("|---|---:|---:|---:|---:|---:|")
for name, sel in (("inside the SIGTERM restart windows", in_w), ("outside any window", out),
                  ("inside the SIGKILL window", in_k), ("all", ing)):
    n, bad, p50, p99 = part(sel)
    share = f"{bad / n:.4%}" if n else "-"
    print(f"| {name} | {n:,} | {bad:,} | {share} | {p50:.1f} | {p99:.1f} |")
n, bad, p50, p99 = part(qry)
print(f"| queries (never restarted) | {n:,} | {bad:,} | {bad / max(1, n):.4%} | {p50:.1f} | {p99:.1f} |")
print()
w_len = [w["end"] - w["start"] for w in windows]
if w_len:
    print(f"- {len(windows)} SIGTERM restarts; each window {statistics.median(w_len):.2f} s (median: SIGTERM to ready again, plus HAProxy's rise); exit codes {sorted(set(w['exit_code'] for w in windows))}")
n = len(in_w); bad = sum(1 for x in in_w if x[3] != 200)
if bad == 0 and n:
    print(f"- 0 failures in {n:,} requests inside the windows: the failure rate there is below 3/n = {3 / n:.4%} (95% confidence)")
codes = {}
for x in ing:
    if x[3] != 200:
        codes[x[3]] = codes.get(x[3], 0) + 1
print(f"- failed ingest requests by status (0: connection error): {codes or 'none'}; sent again with the same message id: {r['retried']}, acknowledged then: {r['retried_ok']}")
print(f"- stored: {count:,} rows, {uniq:,} distinct ids; acknowledged ids missing from the store: {missing}; rows with an id never sent: {extra}; "
      f"acknowledged on the first try: {len(acked):,}, after a retry: {r['retried_ok']}; "
      f"acknowledged events sent a second time: {r['sent_twice']:,} ({r['sent_twice_ok']:,} answered 200), stored twice: {count - uniq} as queries read them (FINAL), {physical - uniq} rows as inserted, before merges")
if r["cpu"]:
    cpu = ", ".join(f"{k} {v:.0%}" for k, v in sorted(r["cpu"].items()))
    print(f"- CPU per process at the sustained rate (share of one core, 10 s before the first restart): {cpu}")
PY
