#!/usr/bin/env bash
# Builds and starts Tally with embedded defaults (data in ./data, WAL queue, DuckDB
# store; no other service). Extra arguments go to `tally serve`, e.g. --listen.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_build_deps
# The dashboard (web/dist), embedded by the build below; skipped with a note without Node.
scripts/build-web.sh
# Same target set as the tests (scripts/test.sh): with exactly these flags Cargo resolves
# the same features, so the bundled DuckDB (a 30-minute C++ build) is compiled only once.
cargo build --release --locked --workspace --all-targets
exec "$CARGO_TARGET_DIR/release/tally" serve "$@"
