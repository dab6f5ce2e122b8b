#!/usr/bin/env python3
"""What an fdatasync costs the WAL on this machine's disk, appending versus overwriting
space written (zeros) beforehand.

The WAL appends each group of records to its segment and fdatasyncs. An append changes
the file's size, so the sync must also write the inode: on ext4 that is a second I/O and
a second wait per fsync. Overwriting a segment already filled with zeros needs only the
data. This measures both, interleaved, with one group commit's worth of bytes per write
(18 records of 332 bytes, as bench/ingest_cpu.sh sees at 64 connections), and prints the
median and mean latency of the sync and the CPU time per write+sync.

    python3 bench/fsync_prealloc.py [DIR] [SYNCS]

DIR (default /var/tmp/tally-fsync-bench) must be on the disk the WAL uses.
"""
import os
import shutil
import statistics
import sys
import time

directory = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp/tally-fsync-bench"
syncs = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
group = b"x" * (18 * 332)
os.makedirs(directory, exist_ok=True)


def run(preallocated):
    path = os.path.join(directory, "segment")
    if os.path.exists(path):
        os.remove(path)
    fd = os.open(path, os.O_CREAT | os.O_RDWR)
    try:
        if preallocated:
            zeros = b"\0" * (1 << 20)
            while os.fstat(fd).st_size < syncs * len(group):
                os.write(fd, zeros)
            os.fsync(fd)
        offset, latencies = 0, []
        cpu = time.process_time()
        for _ in range(syncs):
            if preallocated:
                os.pwrite(fd, group, offset)
            else:
                os.write(fd, group)
            offset += len(group)
            started = time.perf_counter()
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - started)
        cpu = time.process_time() - cpu
    finally:
        os.close(fd)
    return statistics.median(latencies) * 1e3, statistics.mean(latencies) * 1e3, cpu / syncs * 1e6


results = {False: [], True: []}
for _ in range(3):
    for preallocated in (False, True):
        results[preallocated].append(run(preallocated))
shutil.rmtree(directory, ignore_errors=True)

print(f"| writes of {len(group)} B, each followed by fdatasync ({syncs} per run, 3 runs) | median ms | mean ms | CPU µs per write+sync |")
print("|---|---:|---:|---:|")
for preallocated, name in ((False, "append (the WAL today)"), (True, "overwrite zero-filled space")):
    rows = results[preallocated]
    med = [statistics.median(r[i] for r in rows) for i in range(3)]
    print(f"| {name} | {med[0]:.3f} | {med[1]:.3f} | {med[2]:.1f} |")
