#!/usr/bin/env bash
# Drop-in ingest tests: the real Segment and PostHog SDKs (Node and Python) and Tally's
# own browser tracker (web/tally.js, in headless Chromium) against a freshly started
# Tally server on loopback. Installs what the tests need first (Chromium, npm packages,
# a Python venv under tests/sdk/.venv). Needs a built server: TALLY_BIN, or
# $CARGO_TARGET_DIR/release/tally (cargo build --release --locked).
# Stops the server and everything it started when it ends; exits non-zero if any test failed.
set -euo pipefail
cd "$(dirname "$0")/.."
SDK=tests/sdk

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

# --- what the tests need --------------------------------------------------------------
if [ ! -x /usr/bin/chromium ]; then
    $sudo apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "sdk-test: needs Node.js 20.20+ and npm" >&2
    exit 1
fi
(
    cd "$SDK"
    npm ci --no-audit --no-fund --loglevel=error
)
if [ ! -x "$SDK/.venv/bin/python" ]; then
    if ! python3 -m venv "$SDK/.venv" 2>/dev/null; then
        rm -rf "$SDK/.venv"
        $sudo apt-get update -q
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
        python3 -m venv "$SDK/.venv"
    fi
fi
"$SDK/.venv/bin/python" -m pip install -q --disable-pip-version-check -r "$SDK/requirements.txt"

# --- the server -----------------------------------------------------------------------
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/tally-target}"
TALLY_BIN="${TALLY_BIN:-$CARGO_TARGET_DIR/release/tally}"
if [ ! -x "$TALLY_BIN" ]; then
    echo "sdk-test: no server binary at $TALLY_BIN; build it (cargo build --release --locked) or set TALLY_BIN" >&2
    exit 1
fi

DATA=$(mktemp -d "${TMPDIR:-/tmp}/tally-sdk-test.XXXXXX")
SERVER_PID=""
status=0
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "sdk-test: server did not stop on SIGTERM within 10 s; killing it" >&2
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [ "$status" != 0 ] && [ -f "$DATA/server.log" ]; then
        echo "--- last lines of the server log ---" >&2
        tail -n 40 "$DATA/server.log" >&2 || true
    fi
    rm -rf "$DATA"
}
trap cleanup EXIT
trap 'status=130; exit 130' INT TERM

# The server reads every TALLY_* variable as a setting and refuses unknown ones, so
# the variables of this script are kept out of its environment.
KEYS=$(env -u TALLY_BIN -u TALLY_URL "$TALLY_BIN" --data-dir "$DATA" project create sdk-tests --format json \
    | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["write_key"], j["read_key"])')
WRITE_KEY=${KEYS%% *}
READ_KEY=${KEYS##* }
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
TALLY_URL="http://127.0.0.1:$PORT"

# Started directly (env execs the binary), so that $! is the server itself.
env -u TALLY_BIN -u TALLY_URL TALLY_WRITER_BATCH_MAX_WAIT_MS=20 TALLY_CACHE_MAX_STALENESS_MS=0 \
    "$TALLY_BIN" --data-dir "$DATA" serve --listen "127.0.0.1:$PORT" >"$DATA/server.log" 2>&1 &
SERVER_PID=$!

healthy() {
    python3 - "$TALLY_URL/healthz" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=1) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
}
up=0
for _ in $(seq 1 150); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "sdk-test: the server exited at start" >&2
        status=1
        exit 1
    fi
    if healthy; then
        up=1
        break
    fi
    sleep 0.2
done
if [ "$up" != 1 ]; then
    echo "sdk-test: the server did not answer $TALLY_URL/healthz within 30 s" >&2
    status=1
    exit 1
fi
echo "sdk-test: server up at $TALLY_URL (data in $DATA)"

export TALLY_URL WRITE_KEY READ_KEY

# --- the tests ------------------------------------------------------------------------
node_status=0
timeout -k 10 600 node --test --test-timeout=120000 "$SDK"/*.test.mjs || node_status=$?
py_status=0
timeout -k 10 600 "$SDK/.venv/bin/python" -m pytest -q -p no:cacheprovider "$SDK" || py_status=$?

echo "sdk-test: node tests exit $node_status, python tests exit $py_status"
if [ "$node_status" != 0 ] || [ "$py_status" != 0 ]; then
    status=1
fi
exit "$status"
