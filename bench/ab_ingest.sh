#!/usr/bin/env bash
# A/B of two Tally builds on single-event ingest, alternated in one sitting:
#   bench/ab_ingest.sh OLD_BIN NEW_BIN [ROUNDS]
# Each round starts each build on a fresh data folder on 127.0.0.1, warms it for 3 s,
# then runs wrk (2 threads, 64 connections) for 10 s and prints req/s and p99. Needs
# Debian's wrk. Quicker than bench/ingest.sh, for checking that a change to the HTTP
# path did not cost ingest; compare medians over rounds, the host is noisy.
set -euo pipefail
OLD=${1:?old binary}; NEW=${2:?new binary}; ROUNDS=${3:-3}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
run() { # bin port
  local bin=$1 port=$2 d; d=$(mktemp -d)
  key=$($bin --data-dir $d project create p --format json | python3 -c 'import json,sys;print(json.load(sys.stdin)["write_key"])')
  $bin --data-dir $d serve --listen 127.0.0.1:$port >/dev/null 2>&1 & local pid=$!
  for i in $(seq 200); do curl -sf 127.0.0.1:$port/healthz >/dev/null && break; sleep 0.05; done
  cat > $d/post.lua <<LUA
wrk.method = "POST"
wrk.body = '[{"event_name":"bench","user_id":"u1","properties":{"plan":"pro"}}]'
wrk.headers["content-type"] = "application/json"
wrk.headers["x-api-key"] = "$key"
LUA
  wrk -t2 -c64 -d3s -s $d/post.lua http://127.0.0.1:$port/api/track >/dev/null
  wrk -t2 -c64 -d10s --latency -s $d/post.lua http://127.0.0.1:$port/api/track | grep -E "Requests/sec|99%|Non-2xx" | tr '\n' ' '
  echo
  kill $pid; wait $pid || true; rm -rf $d
}
for round in $(seq "$ROUNDS"); do
  echo -n "old r$round: "; run "$OLD" 18081
  echo -n "new r$round: "; run "$NEW" 18082
done
