#!/usr/bin/env python3
"""DuckDB's vacuum at checkpoints, on and off, under the writer's pattern of small batches.

Tally's writer inserts many small batches (one per group of single-event requests), each
in its own transaction, with DuckDB's automatic checkpoint at 16MB of log. Each checkpoint
leaves a partly filled row group; with vacuum on (DuckDB's default, `max_vacuum_tasks` =
100), later checkpoints merge those again. Tally runs with it off (crates/store/src/duckdb).
This script inserts the same rows both ways, alternating, and prints per setting the
median insert cost per row, the row groups left, the median time of a dashboard-like
query, and the file size. It needs the `duckdb` Python package (pip install duckdb).

    python3 bench/duckdb_vacuum.py                 # 3 rounds, 3,000 batches of 400 rows
    python3 bench/duckdb_vacuum.py ROUNDS BATCHES BATCH_ROWS
"""
import os
import statistics
import sys
import tempfile
import time

import duckdb

QUERY = """SELECT event, date_trunc('day', ts) AS d, count(*), count(DISTINCT visitor_id)
FROM events WHERE project_id = 'p1' AND ts >= TIMESTAMP '2026-11-01' GROUP BY ALL"""


def run(folder, vacuum_tasks, batches, rows):
    path = os.path.join(folder, f"vacuum-{vacuum_tasks}.duckdb")
    for p in (path, path + ".wal"):
        if os.path.exists(p):
            os.remove(p)
    con = duckdb.connect(path, config={"checkpoint_threshold": "16MB", "threads": 2})
    con.execute(f"SET max_vacuum_tasks = {vacuum_tasks}")
    # The columns of Tally's events table that carry data in this load.
    con.execute("""CREATE TABLE events (project_id VARCHAR, uuid VARCHAR, type VARCHAR,
        event VARCHAR, user_id VARCHAR, device_id VARCHAR, visitor_id VARCHAR, ts TIMESTAMP,
        received_at TIMESTAMP, page VARCHAR, properties JSON, context JSON, lsn UBIGINT)""")
    started = time.perf_counter()
    for b in range(batches):
        lo, hi = b * rows, (b + 1) * rows
        con.execute(f"""INSERT INTO events SELECT 'p1', uuid()::VARCHAR, 'track', 'ev' || (i % 7),
            'u' || (i % 1000), 'd' || (i % 1000), 'u' || (i % 1000),
            TIMESTAMP '2026-11-01' + to_seconds(i), now(), '/p' || (i % 50),
            '{{"plan":"pro","page_path":"/pricing"}}', '{{"device_id":"d1"}}', i
            FROM range({lo}, {hi}) t(i)""")
    insert_us = 1e6 * (time.perf_counter() - started) / (batches * rows)
    groups = con.execute(
        "SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('events')").fetchone()[0]
    con.execute("CHECKPOINT")
    times = []
    for _ in range(7):
        t = time.perf_counter()
        con.execute(QUERY).fetchall()
        times.append(time.perf_counter() - t)
    con.close()
    return insert_us, groups, 1000 * statistics.median(times), os.path.getsize(path) / 1e6


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    batches = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    rows = int(sys.argv[3]) if len(sys.argv) > 3 else 400
    results = {100: [], 0: []}
    with tempfile.TemporaryDirectory() as folder:
        for r in range(rounds):
            for tasks in (100, 0):
                results[tasks].append(run(folder, tasks, batches, rows))
                print(f"round {r + 1}/{rounds} max_vacuum_tasks={tasks}: {results[tasks][-1]}",
                      file=sys.stderr)
    print(f"{batches:,} batches of {rows} rows, medians of {rounds} rounds:")
    print("| max_vacuum_tasks | insert µs/row | row groups | query ms | file MB |")
    print("|---:|---:|---:|---:|---:|")
    for tasks, runs in results.items():
        cols = [statistics.median(c) for c in zip(*runs)]
        print(f"| {tasks} | {cols[0]:.2f} | {cols[1]:.0f} | {cols[2]:.0f} | {cols[3]:.0f} |")
    on, off = (statistics.median(r[0] for r in results[t]) for t in (100, 0))
    print(f"insert cost with vacuum off / on: {off / on:.2f}")


if __name__ == "__main__":
    main()
