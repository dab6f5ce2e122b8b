#!/usr/bin/env bash
# The Overview's time to fully drawn over 10M events (issue 17's bar: within 1 s with a
# warm server), in headless Chromium: bench/overview.mjs against `tally serve` on the
# query benchmark's generated dataset (bench/query.sh's generator, the same flags, so
# the file is shared), with the dashboard's admin. Cold: the first opening, every tile
# computed by the store; warm: the same view opened again (the result cache answers).
# Traffic goes to 127.0.0.1 only; it stops by itself.
#
#   bench/overview.sh                       # EVENTS=10000000 RUNS=5
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bench_dataset_defaults
RUNS=${RUNS:-5}

ensure_build_deps
scripts/build-web.sh
cargo build --release --locked --workspace --all-targets
BIN="$CARGO_TARGET_DIR/release"
db=$(bench_dataset "$BIN")

work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/data"
cp "$db" "$work/data/tally.duckdb"
tally() { "$BIN/tally" --data-dir "$work/data" "$@"; }
tally project create bench --format json >/dev/null
PASSWORD="bench-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
printf '%s\n' "$PASSWORD" | tally user create admin@bench.example --role admin --password-stdin >/dev/null
PORT=$(free_port)
TALLY_LOG=warn "$BIN/tally" --data-dir "$work/data" serve --listen "127.0.0.1:$PORT" > "$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 600); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 0.1; done

echo "opening the Overview: $EVENTS events, 28 and 91 days, cold then $RUNS times warm" >&2
node bench/overview.mjs "http://127.0.0.1:$PORT" admin@bench.example "$PASSWORD" bench "$RUNS" > "$work/out.json"
python3 - "$work/out.json" "$EVENTS" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"The Overview over {int(sys.argv[2]):,} events, headless Chromium on the same 2 cores; ms from navigation to fully drawn\n")
print("| range | requests | cold (store computes every tile) | warm, median | warm runs |")
print("|---|---:|---:|---:|---|")
for k, v in r.items():
    print(f"| {k} | {v['requests']} | {v['cold_ms']:,.0f} | {v['warm_median_ms']:,.0f} | {', '.join(f'{x:,.0f}' for x in v['warm_ms'])} |")
PY
