"""Turns bench/ingest_cpu.sh's snapshots into a Markdown table of medians.

Tally's threads, by name and order of creation:
- `tokio-rt-worker`: the runtime's workers are the first `workers` of them (tokio starts
  one per core when the runtime is built); the later ones are its blocking pool, where
  the writer's store inserts run;
- `tally-wal`: the WAL's writer thread (group commit, fsync); `tally-wal-spare` zero-fills
  the next segment ahead of it (counted with it);
- `tally`: the main thread (its pid) and DuckDB's own worker threads. DuckDB starts them
  from whichever thread opens or first uses it, so when that is a tokio thread they count
  as the writer.
"""
import os
import statistics
import sys

work, runs, workers, clk_tck = sys.argv[1:5]
runs, workers, clk_tck = int(runs), int(workers), int(clk_tck)


def threads(path):
    out = {}
    with open(path + ".threads") as f:
        for line in f:
            tid, comm, ticks = line.split()
            out[int(tid)] = (comm, int(ticks))
    return out


def metrics(path):
    out = {}
    with open(path + ".metrics") as f:
        for line in f:
            name, value = line.split()
            out[name] = float(value)
    return out


def answered(path):
    with open(path) as f:
        ok, secs = f.read().split()
    return int(ok), float(secs)


def role(tid, comm, tokio_tids, main_tid):
    if comm in ("tally-wal", "tally-wal-spare"):
        return "WAL thread"
    if comm == "tokio-rt-worker":
        return "HTTP workers" if tid in tokio_tids[:workers] else "writer (store inserts)"
    if tid == main_tid:
        return "main thread"
    return "DuckDB threads"


ROLES = ["HTTP workers", "WAL thread", "writer (store inserts)", "DuckDB threads", "main thread"]
rows = {k: [] for k in ["base_rps", "base_us", "rps", "us", "fsyncs", "group", "fsync_ms", "batch"] + ROLES}
for r in range(1, runs + 1):
    ok, secs = answered(os.path.join(work, f"base-{r}.load"))
    b0, b1 = threads(os.path.join(work, f"base-{r}-0")), threads(os.path.join(work, f"base-{r}-1"))
    base_ticks = sum(t for _, t in b1.values()) - sum(t for _, t in b0.values())
    rows["base_rps"].append(ok / secs)
    rows["base_us"].append(base_ticks / clk_tck * 1e6 / ok)

    ok, secs = answered(os.path.join(work, f"tally-{r}.load"))
    t0, t1 = threads(os.path.join(work, f"tally-{r}-0")), threads(os.path.join(work, f"tally-{r}-1"))
    main_tid = min(t1)
    tokio_tids = sorted(tid for tid, (comm, _) in t1.items() if comm == "tokio-rt-worker")
    spent = {k: 0 for k in ROLES}
    for tid, (comm, ticks) in t1.items():
        spent[role(tid, comm, tokio_tids, main_tid)] += ticks - t0.get(tid, (comm, 0))[1]
    rows["rps"].append(ok / secs)
    rows["us"].append(sum(spent.values()) / clk_tck * 1e6 / ok)
    for k in ROLES:
        rows[k].append(spent[k] / clk_tck * 1e6 / ok)
    m0, m1 = metrics(os.path.join(work, f"tally-{r}-0")), metrics(os.path.join(work, f"tally-{r}-1"))
    d = {k: m1.get(k, 0) - m0.get(k, 0) for k in m1}
    fsyncs = d.get("tally_wal_fsyncs_total", 0)
    rows["fsyncs"].append(fsyncs / secs)
    rows["group"].append(d.get("tally_wal_group_commit_records_sum", 0) / max(d.get("tally_wal_group_commit_records_count", 0), 1))
    rows["fsync_ms"].append(d.get("tally_wal_fsync_seconds_sum", 0) * 1e3 / max(fsyncs, 1))
    rows["batch"].append(d.get("tally_writer_batch_events_sum", 0) / max(d.get("tally_writer_batch_events_count", 0), 1))

med = {k: statistics.median(v) for k, v in rows.items()}
print(f"Medians of {runs} runs, single-event requests at max rate, {workers} cores shared with oha:")
print()
print("| what | value |")
print("|---|---:|")
print(f"| baseline: requests/s | {med['base_rps']:,.0f} |")
print(f"| baseline: CPU per request | {med['base_us']:.1f} µs |")
print(f"| Tally: requests/s | {med['rps']:,.0f} |")
print(f"| Tally / baseline requests/s | {med['rps'] / med['base_rps']:.2f} |")
print(f"| Tally: CPU per request | {med['us']:.1f} µs |")
for k in ROLES:
    print(f"| · {k} | {med[k]:.1f} µs |")
print(f"| WAL: fsyncs/s | {med['fsyncs']:,.0f} |")
print(f"| WAL: requests per fsync (group commit) | {med['group']:.1f} |")
print(f"| WAL: mean fsync time | {med['fsync_ms']:.2f} ms |")
print(f"| writer: events per store insert | {med['batch']:,.0f} |")
store = [w + d for w, d in zip(rows["writer (store inserts)"], rows["DuckDB threads"])]
print()
print("Writer and DuckDB threads per run, as the table grows: " + ", ".join(f"{v:.1f}" for v in store) + " µs per request.")
