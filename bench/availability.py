"""The load and the restarts of bench/availability.sh (docs/deploy.md, issue 20).

An open-loop load at a fixed rate through HAProxy on loopback: single-event ingest
requests (each with its own message id, its user id the same string, so the stored rows
can be matched to the acknowledged requests) and stats queries. Latency is measured from
when a request was due, not from when a connection was free, so a stall shows as the
wait it caused (no coordinated omission).

Meanwhile the ingest processes are restarted in turn every RESTART_EVERY seconds:
SIGTERM (readiness goes 503 first, HAProxy takes the process out, in-flight requests
finish, then it exits), then the same command again, until `/readyz` says ready. A
restart window runs from the SIGTERM until HAProxy routes to the process again (its
`rise` after ready). At the end one ingest process is killed with SIGKILL under the same
load, and started again.

Requests that failed are sent again afterwards with the same message id, as an SDK's
retry would, and 2,000 that were acknowledged are sent a second time (an SDK that lost
the answer). Writes a JSON report to the path given.

    python3 bench/availability.py CONFIG.json REPORT.json
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

cfg = json.load(open(sys.argv[1]))
out_path = sys.argv[2]
HOST = "127.0.0.1"
PORT = cfg["haproxy_port"]
INGEST_RATE = cfg["ingest_rate"]
QUERY_RATE = cfg["query_rate"]
DURATION = cfg["duration"]
RESTART_EVERY = cfg["restart_every"]
FIRST_RESTART = cfg["first_restart"]
KILL_AT = cfg["kill_at"]
RISE_S = cfg["rise_s"]
CONNS = cfg["conns"]
WRITE = cfg["write_key"]
READ = cfg["read_key"]
RUN = f"avail-{int(time.time())}"

procs = {}  # name -> Popen


def start(name):
    spec = cfg["ingest"][name]
    env = dict(os.environ, **spec["env"])
    log = open(spec["log"], "ab")
    procs[name] = subprocess.Popen(spec["cmd"], env=env, stdout=log, stderr=log)


def ready(port):
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=1) as r:
            return r.status == 200
    except Exception:
        return False


def cpu_seconds(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (FileNotFoundError, IndexError):
        return None


class Results:
    def __init__(self):
        self.rows = []  # (kind, due, latency_s, status, mid)


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    close = False
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            length = int(v.strip())
        elif k == b"connection" and v.strip().lower() == b"close":
            close = True
    body = await reader.readexactly(length) if length else b""
    return status, body, close


def ingest_request(mid):
    body = json.dumps([{"event_name": "avail", "user_id": mid, "message_id": mid,
                        "properties": {"run": RUN}}]).encode()
    return (b"POST /api/track HTTP/1.1\r\nHost: x\r\nx-api-key: " + WRITE.encode() +
            b"\r\ncontent-type: application/json\r\ncontent-length: " +
            str(len(body)).encode() + b"\r\n\r\n" + body)


# A dashboard tile: answered from the cache when it can be, as dashboards are.
QUERY_BODY = json.dumps({"metrics": ["visitors", "events"], "date_range": "day"}).encode()
QUERY_REQUEST = (b"POST /api/v1/query HTTP/1.1\r\nHost: x\r\nx-api-key: " + READ.encode() +
                 b"\r\ncontent-type: application/json\r\ncontent-length: " +
                 str(len(QUERY_BODY)).encode() + b"\r\n\r\n" + QUERY_BODY)


async def worker(queue, results):
    reader = writer = None
    while True:
        item = await queue.get()
        if item is None:
            break
        kind, due, mid = item
        data = ingest_request(mid) if kind == "ingest" else QUERY_REQUEST
        status = 0
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(HOST, PORT)
            writer.write(data)
            await writer.drain()
            status, _, close = await asyncio.wait_for(read_response(reader), 30)
            if close:
                writer.close()
                reader = writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, IndexError):
            status = 0
            if writer is not None:
                writer.close()
            reader = writer = None
        results.rows.append((kind, due, time.monotonic() - due, status, mid))


async def restarter(t0, windows, kills, cpu):
    names = sorted(cfg["ingest"])
    # CPU per process over a steady stretch before the first restart.
    await asyncio.sleep(max(0, FIRST_RESTART - 12))
    pids = {n: procs[n].pid for n in names}
    pids.update(cfg["others"])
    pids["load generator"] = os.getpid()
    c0 = {n: cpu_seconds(p) for n, p in pids.items()}
    s0 = time.monotonic()
    await asyncio.sleep(10)
    c1 = {n: cpu_seconds(p) for n, p in pids.items()}
    span = time.monotonic() - s0
    for n in pids:
        if c0[n] is not None and c1[n] is not None:
            cpu[n] = (c1[n] - c0[n]) / span
    i = 0
    next_at = t0 + FIRST_RESTART
    while next_at + RESTART_EVERY / 2 < t0 + KILL_AT:
        await asyncio.sleep(max(0, next_at - time.monotonic()))
        name = names[i % len(names)]
        port = cfg["ingest"][name]["port"]
        began = time.monotonic()
        procs[name].send_signal(signal.SIGTERM)
        while procs[name].poll() is None:
            await asyncio.sleep(0.02)
        exited = time.monotonic()
        code = procs[name].returncode
        start(name)
        while not ready(port):
            await asyncio.sleep(0.02)
        up = time.monotonic()
        windows.append({"process": name, "start": began - t0, "exited": exited - t0,
                        "ready": up - t0, "end": up + RISE_S - t0,
                        "exit_code": code})
        i += 1
        next_at += RESTART_EVERY
    # The crash: SIGKILL, then started again.
    await asyncio.sleep(max(0, t0 + KILL_AT - time.monotonic()))
    name = names[0]
    port = cfg["ingest"][name]["port"]
    began = time.monotonic()
    procs[name].kill()
    procs[name].wait()
    await asyncio.sleep(2)
    start(name)
    while not ready(port):
        await asyncio.sleep(0.02)
    up = time.monotonic()
    kills.append({"process": name, "start": began - t0, "ready": up - t0,
                  "end": up + RISE_S + 3 - t0})


async def main():
    for name in cfg["ingest"]:
        start(name)
    for name, spec in cfg["ingest"].items():
        for _ in range(300):
            if ready(spec["port"]):
                break
            await asyncio.sleep(0.1)
        else:
            raise SystemExit(f"{name} never became ready")
    await asyncio.sleep(2 * RISE_S)  # HAProxy's checks see them all up
    results = Results()
    # Queries have connections of their own, so a slow query never holds up an ingest
    # request behind it in the load generator.
    queues = {"ingest": asyncio.Queue(), "query": asyncio.Queue()}
    workers = [asyncio.create_task(worker(queues["ingest"], results)) for _ in range(CONNS)]
    workers += [asyncio.create_task(worker(queues["query"], results)) for _ in range(16)]
    windows, kills, cpu = [], [], {}
    t0 = time.monotonic()
    restarts = asyncio.create_task(restarter(t0, windows, kills, cpu))
    # The schedule: ingest and queries interleaved at their rates.
    n_ingest = int(INGEST_RATE * DURATION)
    n_query = int(QUERY_RATE * DURATION)
    schedule = [(i / INGEST_RATE, "ingest") for i in range(n_ingest)]
    schedule += [(i / QUERY_RATE, "query") for i in range(n_query)]
    schedule.sort()
    for n, (at, kind) in enumerate(schedule):
        delay = t0 + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        queues[kind].put_nowait((kind, t0 + at, f"{RUN}-{n}" if kind == "ingest" else None))
    for _ in range(CONNS):
        queues["ingest"].put_nowait(None)
    for _ in range(16):
        queues["query"].put_nowait(None)
    await asyncio.gather(*workers)
    await restarts
    # SDK-style retries of what failed, same message ids, until each is acknowledged.
    failed = [r[4] for r in results.rows if r[0] == "ingest" and r[3] != 200]
    retried_ok = 0
    for mid in failed:
        for attempt in range(20):
            reader, writer = await asyncio.open_connection(HOST, PORT)
            writer.write(ingest_request(mid))
            await writer.drain()
            status, _, _ = await read_response(reader)
            writer.close()
            if status == 200:
                retried_ok += 1
                break
            await asyncio.sleep(0.2 * (attempt + 1))
    # An SDK whose answer was lost sends the same event again: 2,000 acknowledged ones,
    # sent a second time, must not be stored twice.
    acked = [r[4] for r in results.rows if r[0] == "ingest" and r[3] == 200]
    again = acked[:: max(1, len(acked) // 2000)][:2000]
    again_ok = 0
    reader, writer = await asyncio.open_connection(HOST, PORT)
    for mid in again:
        writer.write(ingest_request(mid))
        await writer.drain()
        status, _, _ = await read_response(reader)
        again_ok += status == 200
    writer.close()
    rows = [[k, due - t0, lat, st, mid] for (k, due, lat, st, mid) in results.rows]
    json.dump({"run": RUN, "rows": rows, "windows": windows, "kills": kills, "cpu": cpu,
               "retried": len(failed), "retried_ok": retried_ok,
               "sent_twice": len(again), "sent_twice_ok": again_ok,
               "seconds": time.monotonic() - t0}, open(out_path, "w"))
    for p in procs.values():
        p.send_signal(signal.SIGTERM)
    for p in procs.values():
        p.wait()


asyncio.run(main())
