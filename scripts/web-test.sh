#!/usr/bin/env bash
# The dashboard in headless Chromium (Debian's package, driven by playwright-core) against
# a freshly started Tally server on loopback, with three projects and two users made by the
# CLI; web/test/dashboard.test.mjs seeds the events and checks the pages. Needs a server
# binary built with the dashboard (web/dist present at build time): TALLY_BIN, or
# $CARGO_TARGET_DIR/release/tally. Screenshots go to $WEB_ARTIFACTS (default
# web/test-artifacts); the path is printed at the end. Stops the server when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
if [ ! -x /usr/bin/chromium ]; then
    $sudo apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
fi
if [ ! -d web/node_modules ]; then
    (cd web && npm ci --no-audit --no-fund --loglevel=error)
fi

CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/tally-target}"
TALLY_BIN="${TALLY_BIN:-$CARGO_TARGET_DIR/release/tally}"
if [ ! -x "$TALLY_BIN" ]; then
    echo "web-test: no server binary at $TALLY_BIN; build it (scripts/build-web.sh, then cargo build --release --locked) or set TALLY_BIN" >&2
    exit 1
fi
ARTIFACTS="${WEB_ARTIFACTS:-$PWD/web/test-artifacts}"
mkdir -p "$ARTIFACTS"

DATA=$(mktemp -d "${TMPDIR:-/tmp}/tally-web-test.XXXXXX")
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
            echo "web-test: server did not stop on SIGTERM within 10 s; killing it" >&2
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

# The server reads every TALLY_* variable as a setting; keep this script's out of it.
tally() { env -u TALLY_BIN -u TALLY_URL "$TALLY_BIN" --data-dir "$DATA" "$@"; }
json_keys() { python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["write_key"], j["read_key"])'; }
SHOP=$(tally project create shop --format json | json_keys)
BLOG=$(tally project create blog --format json | json_keys)
APP=$(tally project create app --format json | json_keys)
PASSWORD="web-test-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
ADMIN_EMAIL=admin@web-test.example
VIEWER_EMAIL=viewer@web-test.example
printf '%s\n' "$PASSWORD" | tally user create "$ADMIN_EMAIL" --role admin --password-stdin >/dev/null
printf '%s\n' "$PASSWORD" | tally user create "$VIEWER_EMAIL" --role viewer --project shop --password-stdin >/dev/null
tally user list

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
TALLY_URL="http://127.0.0.1:$PORT"
env -u TALLY_BIN -u TALLY_URL TALLY_WRITER_BATCH_MAX_WAIT_MS=20 TALLY_CACHE_MAX_STALENESS_MS=0 \
    "$TALLY_BIN" --data-dir "$DATA" serve --listen "127.0.0.1:$PORT" >"$DATA/server.log" 2>&1 &
SERVER_PID=$!
up=0
for _ in $(seq 1 150); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "web-test: the server exited at start" >&2
        status=1
        exit 1
    fi
    if curl -sf "$TALLY_URL/healthz" >/dev/null 2>&1; then
        up=1
        break
    fi
    sleep 0.2
done
if [ "$up" != 1 ]; then
    echo "web-test: the server did not answer $TALLY_URL/healthz within 30 s" >&2
    status=1
    exit 1
fi
if ! curl -sf "$TALLY_URL/" | grep -q '<div id="app">'; then
    echo "web-test: $TALLY_BIN was built without the dashboard (web/dist missing at build time)" >&2
    status=1
    exit 1
fi
echo "web-test: server up at $TALLY_URL (data in $DATA)"

export TALLY_URL PASSWORD ADMIN_EMAIL VIEWER_EMAIL ARTIFACTS
export SHOP_WRITE_KEY=${SHOP%% *} SHOP_READ_KEY=${SHOP##* } BLOG_WRITE_KEY=${BLOG%% *}
export APP_WRITE_KEY=${APP%% *} APP_READ_KEY=${APP##* }
timeout -k 10 300 node --test --test-timeout=240000 web/test/*.test.mjs || status=$?
echo "web-test: screenshots in $ARTIFACTS"
exit "$status"
