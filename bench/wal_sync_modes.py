#!/usr/bin/env python3
"""What one durable WAL write costs on this machine's disk, three ways.

The WAL writes each group commit's records over space written (zeros) beforehand and
then fdatasyncs (`fdatasync`). Two other ways make a write durable with one system call
instead of two: a file opened with O_DSYNC (`dsync`), and with O_DIRECT | O_DSYNC
(`direct`: no page cache; whole 4 KiB blocks, so the group's last, partly filled block is
written again by the next group). This times each, interleaved, with one group's worth of
bytes per write (12 records of 332 bytes, as bench/ingest_cpu.sh sees at 64
connections), and prints the median latency of a durable write and the CPU time of one
(in this process: the kernel's work for the write, the sync and the wake-up included),
next to a write that is not made durable (`none`), for scale.

    python3 bench/wal_sync_modes.py [DIR] [WRITES]

DIR (default /var/tmp/tally-sync-modes) must be on the disk the WAL uses.
"""
import mmap
import os
import shutil
import statistics
import sys
import time

directory = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp/tally-sync-modes"
writes = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
GROUP = 12 * 332
BLOCK = 4096
os.makedirs(directory, exist_ok=True)


def zero_filled(path, size):
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC)
    zeros = b"\0" * (1 << 20)
    while os.fstat(fd).st_size < size:
        os.write(fd, zeros)
    os.fsync(fd)
    os.close(fd)


def run(mode):
    path = os.path.join(directory, "segment")
    zero_filled(path, writes * GROUP + (1 << 20))
    flags = os.O_RDWR
    if mode in ("dsync", "direct"):
        flags |= os.O_DSYNC
    if mode == "direct":
        flags |= os.O_DIRECT
    fd = os.open(path, flags)
    buf = memoryview(mmap.mmap(-1, 1 << 22))  # page-aligned, as O_DIRECT needs
    offset, latencies = 0, []
    cpu = time.process_time()
    try:
        for _ in range(writes):
            started = time.perf_counter()
            if mode == "direct":
                first = offset // BLOCK * BLOCK
                end = (offset + GROUP + BLOCK - 1) // BLOCK * BLOCK
                os.pwrite(fd, buf[: end - first], first)
            else:
                os.pwrite(fd, buf[:GROUP], offset)
                if mode == "fdatasync":
                    os.fdatasync(fd)
            latencies.append(time.perf_counter() - started)
            offset += GROUP
        cpu = time.process_time() - cpu
    finally:
        os.close(fd)
    return statistics.median(latencies) * 1e3, cpu / writes * 1e6


modes = ("none", "fdatasync", "dsync", "direct")
results = {m: [] for m in modes}
for _ in range(3):
    for m in modes:
        results[m].append(run(m))
shutil.rmtree(directory, ignore_errors=True)

print(f"| durable write of {GROUP} B ({writes} per run, median of 3 runs) | median ms | CPU µs per write |")
print("|---|---:|---:|")
names = {
    "none": "pwrite, no sync (not durable)",
    "fdatasync": "pwrite + fdatasync (the WAL)",
    "dsync": "pwrite, O_DSYNC",
    "direct": "pwrite, O_DIRECT + O_DSYNC",
}
for m in modes:
    rows = results[m]
    print(f"| {names[m]} | {statistics.median(r[0] for r in rows):.3f} | {statistics.median(r[1] for r in rows):.1f} |")
