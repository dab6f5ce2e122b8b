#!/usr/bin/env bash
# Builds and starts Tally with embedded defaults (data in ./data, WAL queue, DuckDB
# store; no other service). Extra arguments go to `tally serve`, e.g. --listen.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_build_deps
cargo build --release --locked -p tally
exec "$CARGO_TARGET_DIR/release/tally" serve "$@"
