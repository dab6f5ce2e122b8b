#!/usr/bin/env python3
"""The dashboard trace of bench/dashboard.sh: simulated viewers refreshing dashboards
while events arrive, some of them late, against one Tally on loopback.

    dashboard.py PORT KEYS_JSON SECONDS OUT_JSON

KEYS_JSON maps project name to {"read_key", "write_key"}. Fixed seed: the same trace
every run. Writes what it measured to OUT_JSON; bench/dashboard.sh compares two runs
(cache off, cache on).

The trace (issue 15's, time compressed): 20 dashboards x 8 tiles over the projects,
dashboards chosen by Zipf popularity (s = 1.1), 80% of loads on the dashboard's preset
range and 20% with an ad-hoc filter; VIEWERS simulated viewers each load a dashboard
(its 8 tiles at once) every REFRESH_S seconds (60 s compressed); meanwhile ingest sends
INGEST_RATE events/s, 5% of them 1-48 h late.
"""
import http.client
import json
import os
import random
import statistics
import sys
import threading
import time

PORT, KEYS, SECONDS, OUT = int(sys.argv[1]), json.load(open(sys.argv[2])), float(sys.argv[3]), sys.argv[4]
VIEWERS = int(os.environ.get("VIEWERS", 50))
REFRESH_S = float(os.environ.get("REFRESH_S", 2))
INGEST_RATE = int(os.environ.get("INGEST_RATE", 2000))
DASHBOARDS, TILES = 20, 8
PROJECTS = sorted(KEYS)
PAGES = ["/", "/pricing", "/docs", "/blog", "/signup"] + ["/p%d" % i for i in range(45)]
NAMES = ["page_visit", "signed_up", "purchase", "invite_sent"]


def tiles(d, rng):
    """Dashboard d's 8 tiles (query bodies without range and filters)."""
    r = rng.choice(["7d", "28d", "30d", "91d"])
    return r, [
        {"metrics": ["visitors", "visits", "pageviews", "bounce_rate"]},
        {"metrics": ["visitors", "pageviews"], "dimensions": ["event:page"], "pagination": {"limit": 10}},
        {"metrics": ["events"], "dimensions": ["event:name"]},
        {"metrics": ["visitors"], "dimensions": ["time:day"]},
        {"kind": "trends", "interval": "day", "series": [{"event": "page_visit", "math": "unique"}, {"event": "purchase"}]},
        {"kind": "trends", "interval": "week", "series": [{"event": "signed_up"}]},
        {"kind": "funnel", "steps": [{"event": "page_visit"}, {"event": "signed_up"}, {"event": "purchase"}],
         "window": {"unit": "day", "value": 1}},
        {"kind": "retention", "intervals": 3, "period": "week", "target": {"event": "page_visit"}},
    ]


rng = random.Random(15)
boards = []
for d in range(DASHBOARDS):
    preset, ts = tiles(d, rng)
    boards.append((PROJECTS[d % len(PROJECTS)], preset, ts))
weights = [1 / (k + 1) ** 1.1 for k in range(DASHBOARDS)]

lock = threading.Lock()
served = []  # (latency_ms, status, hit, stale, age_s, kind)
stop = threading.Event()


def conn():
    return http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)


def ask(c, key, body):
    data = json.dumps(body).encode()
    start = time.perf_counter()
    c.request("POST", "/api/v1/query", data, {"x-api-key": key, "content-type": "application/json"})
    r = c.getresponse()
    raw = r.read()
    ms = (time.perf_counter() - start) * 1000
    hit = stale = False
    age = 0.0
    if r.status == 200:
        block = json.loads(raw).get("cache", {})
        hit, stale, age = bool(block.get("hit")), bool(block.get("stale")), float(block.get("age_s", 0))
    return ms, r.status, hit, stale, age


def tile_loader(jobs, results):
    c = conn()
    while True:
        job = jobs.get()
        if job is None:
            return
        key, body = job
        try:
            results.append(ask(c, key, body) + (body.get("kind", "stats"),))
        except Exception:
            c = conn()
            results.append((0.0, 599, False, False, 0.0, body.get("kind", "stats")))
        jobs.task_done()


def viewer(v):
    import queue
    vr = random.Random(1000 + v)
    jobs, results = queue.Queue(), []
    workers = [threading.Thread(target=tile_loader, args=(jobs, results), daemon=True) for _ in range(TILES)]
    for w in workers:
        w.start()
    time.sleep(vr.random() * REFRESH_S)  # viewers do not start in step
    while not stop.is_set():
        started = time.time()
        project, preset, ts = boards[vr.choices(range(DASHBOARDS), weights)[0]]
        key = KEYS[project]["read_key"]
        extra = {}
        if vr.random() < 0.2:  # ad hoc: a page filter and any preset
            extra = {"filters": [["is", "event:page", [vr.choice(PAGES)]]], "date_range": vr.choice(["7d", "28d"])}
        for t in ts:
            body = dict(t, date_range=preset)
            if "kind" not in t or t["kind"] == "stats":
                body.update(extra)
            else:
                body["date_range"] = extra.get("date_range", preset)
            jobs.put((key, body))
        jobs.join()
        with lock:
            served.extend(results)
        results.clear()
        stop.wait(max(0.0, REFRESH_S - (time.time() - started)))
    for _ in workers:
        jobs.put(None)


sent = [0]


def ingest():
    ir = random.Random(99)
    c = conn()
    batch_every = 0.1
    per_batch = max(1, int(INGEST_RATE * batch_every))
    while not stop.is_set():
        started = time.time()
        now = time.time()
        by_project = {}
        for _ in range(per_batch):
            p = ir.choice(PROJECTS)
            late = ir.random() < 0.05
            t = now - (ir.uniform(3600, 48 * 3600) if late else ir.random() * 5)
            by_project.setdefault(p, []).append({
                "event_name": ir.choices(NAMES, [20, 2, 1, 1])[0], "user_id": "u%d" % ir.randrange(20000),
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)),
                "properties": {"page_path": ir.choice(PAGES)}})
        for p, events in by_project.items():
            try:
                c.request("POST", "/api/track", json.dumps(events).encode(),
                          {"x-api-key": KEYS[p]["write_key"], "content-type": "application/json"})
                r = c.getresponse()
                r.read()
                if r.status == 200:
                    sent[0] += len(events)
            except Exception:
                c = conn()
        stop.wait(max(0.0, batch_every - (time.time() - started)))


def metrics():
    c = conn()
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    out = {"store_queries": 0.0, "store_seconds": 0.0}
    for line in text.splitlines():
        if line.startswith("tally_store_queries_total"):
            out["store_queries"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("tally_store_query_seconds_sum"):
            out["store_seconds"] += float(line.rsplit(" ", 1)[1])
    return out


before = metrics()
threads = [threading.Thread(target=ingest, daemon=True)] + [
    threading.Thread(target=viewer, args=(v,), daemon=True) for v in range(VIEWERS)]
t0 = time.time()
for t in threads:
    t.start()
time.sleep(SECONDS)
stop.set()
for t in threads:
    t.join(timeout=90)
elapsed = time.time() - t0
after = metrics()

# Correctness: with ingest stopped, its last flush in and the staleness allowance over
# (cache.max_staleness_ms, 60 s by default; TALLY_CACHE_MAX_STALENESS_MS as the server
# was started), a sample of tiles asked as a viewer would (cache allowed) and then
# computed ("force") must agree.
time.sleep(int(os.environ.get("TALLY_CACHE_MAX_STALENESS_MS", 60_000)) / 1000 + 2)
c = conn()
cr = random.Random(5)
wrong, checked = 0, 0
for _ in range(40):
    project, preset, ts = boards[cr.choices(range(DASHBOARDS), weights)[0]]
    key = KEYS[project]["read_key"]
    body = dict(cr.choice(ts), date_range=preset)
    answers = []
    for refresh in ["auto", "force"]:
        c.request("POST", "/api/v1/query", json.dumps(dict(body, refresh=refresh)).encode(),
                  {"x-api-key": key, "content-type": "application/json"})
        r = c.getresponse()
        a = json.loads(r.read())
        if r.status != 200:
            break
        a.pop("cache", None)
        answers.append(a)
    if len(answers) == 2:
        checked += 1
        wrong += answers[0] != answers[1]

ok = [s for s in served if s[1] == 200]
lat = sorted(s[0] for s in ok) or [0.0]
result = {
    "seconds": elapsed,
    "requests": len(served),
    "ok": len(ok),
    "non_200": len(served) - len(ok),
    "hits": sum(1 for s in ok if s[2]),
    "stale_served": sum(1 for s in ok if s[3]),
    "max_stale_age_s": max([s[4] for s in ok if s[3]], default=0.0),
    "p50_ms": statistics.median(lat),
    "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
    "store_queries": after["store_queries"] - before["store_queries"],
    "store_seconds": after["store_seconds"] - before["store_seconds"],
    "events_sent": sent[0],
    "checked": checked,
    "wrong": wrong,
}
json.dump(result, open(OUT, "w"))
print(json.dumps(result), file=sys.stderr)
