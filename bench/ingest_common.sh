# What bench/ingest.sh and bench/ingest_cpu.sh share: the build, oha, a scratch folder
# cleaned up on exit, and the two servers on loopback (TALLY_PORT, BASE_PORT). Source it
# from the repository root; it sets BIN, TALLY_BIN (default: this build's tally), work,
# base_pid, tally_pid, WRITE, READ and single (a single-event body).
TALLY_PORT=${TALLY_PORT:-18080}
BASE_PORT=${BASE_PORT:-18081}
source scripts/env.sh
ensure_build_deps
# The same target set as scripts/test.sh and scripts/run.sh, so DuckDB is built once.
cargo build --release --locked --workspace --all-targets
if ! command -v oha >/dev/null; then
    cargo install oha --locked
fi
BIN="$CARGO_TARGET_DIR/release"
TALLY_BIN=${TALLY_BIN:-$BIN/tally}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# Up means answering HTTP at all (the baseline has no health route).
wait_up() { for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$1/$2" && return 0; sleep 0.05; done; echo "port $1 never came up" >&2; exit 1; }

"$BIN/baseline" "127.0.0.1:$BASE_PORT" & base_pid=$!
pids+=($base_pid)
"$TALLY_BIN" --data-dir "$work/data" project create bench --format json > "$work/keys.json"
WRITE=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["write_key"])' "$work/keys.json")
READ=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["read_key"])' "$work/keys.json")
TALLY_LOG=warn "$TALLY_BIN" --data-dir "$work/data" serve --listen "127.0.0.1:$TALLY_PORT" & tally_pid=$!
pids+=($tally_pid)
wait_up "$BASE_PORT" none
wait_up "$TALLY_PORT" healthz

single='[{"event_name":"bench_event","user_id":"u1","context":{"device_id":"d1"},"properties":{"plan":"pro","page_path":"/pricing"}}]'
