#!/usr/bin/env bash
# A/B of two builds of bench's query_bench on the same DuckDB file, alternated in one
# sitting so that both see the same machine:
#   bench/ab_query.sh OLD_QUERY_BENCH NEW_QUERY_BENCH DB ROUNDS RUNS 'BODY' ['BODY'...]
# Prints each round's table from both (p50 and p95 over RUNS runs); compare the medians
# of the p50s over rounds. Make the DuckDB file with bench/query.sh (or gen_events).
set -euo pipefail
OLD=${1:?old query_bench}; NEW=${2:?new query_bench}; DB=${3:?duckdb file}
ROUNDS=${4:-3}; RUNS=${5:-10}; shift 5
args=()
for body in "$@"; do args+=(--query "$body"); done
for round in $(seq "$ROUNDS"); do
  for side in old new; do
    bin=$OLD; [[ $side == new ]] && bin=$NEW
    "$bin" --db "$DB" --runs "$RUNS" "${args[@]}" 2>/dev/null | grep '^| [a-z]' | grep -v '^| kind' | sed "s/^/$side r$round /"
  done
done
