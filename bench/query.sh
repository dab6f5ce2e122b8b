#!/usr/bin/env bash
# Query latency benchmark: every query kind of Tally's engine on a generated dataset in
# DuckDB, next to two raw-SQL scans of the same rows measured in the same run. Stops by
# itself.
#
#   bench/query.sh                          # 10M events, 100k users, 1k accounts, 90 days
#   RUNS=5 bench/query.sh
#   EVENTS=1000000 USERS=10000 bench/query.sh
#
# The dataset is generated once into $BENCH_DATA and reused; it is generated again when
# the generator's flags change, or the source of the generator, the event model or the
# store. Prints a Markdown table (see docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bench_dataset_defaults
RUNS=${RUNS:-20}

ensure_build_deps
# The same target set as scripts/test.sh and scripts/run.sh, so DuckDB is built once.
cargo build --release --locked --workspace --all-targets
BIN="$CARGO_TARGET_DIR/release"

db=$(bench_dataset "$BIN")

"$BIN/query_bench" --db "$db" --runs "$RUNS"
