"""Turns the oha JSON files of bench/ingest.sh into the Markdown table of medians."""
import glob
import json
import os
import statistics
import sys

work, runs, batch, stored, rss_kb, duration, conns, rate = sys.argv[1:9]
runs, batch, stored, rss_kb = int(runs), int(batch), int(stored), int(rss_kb)


def load(name):
    with open(os.path.join(work, name + ".json")) as f:
        return json.load(f)


def ok(d):
    codes = d.get("statusCodeDistribution", {})
    return sum(v for k, v in codes.items() if k.startswith("2")), sum(codes.values())


def cut_off(d):
    """Requests still in flight when oha's duration ended: it drops them unanswered."""
    return sum(v for k, v in d.get("errorDistribution", {}).items() if "deadline" in k)


def metric(prefix, who):
    rps, p50, p99, errs = [], [], [], 0
    for r in range(1, runs + 1):
        d = load(f"{prefix}-{who}-{r}")
        good, total = ok(d)
        errs += total - good + sum(d.get("errorDistribution", {}).values()) - cut_off(d)
        secs = d["summary"]["total"]
        rps.append(good / secs)
        p50.append(d["latencyPercentiles"]["p50"] * 1000)
        p99.append(d["latencyPercentiles"]["p99"] * 1000)
    return statistics.median(rps), statistics.median(p50), statistics.median(p99), errs


def acked(prefix):
    return sum(ok(load(f"{prefix}-tally-{r}"))[0] for r in range(1, runs + 1))


def unanswered(prefix):
    return sum(cut_off(load(f"{prefix}-tally-{r}")) for r in range(1, runs + 1))


print(f"Ingest benchmark: {runs} interleaved runs of {duration}, {conns} connections, "
      f"medians. Load generator oha on the same 2-core machine.\n")
print("| test | server | req/s | events/s | p50 ms | p99 ms | errors |")
print("|---|---|---:|---:|---:|---:|---:|")
rows = [("max", "single event, max rate", 1), ("rate", f"single event, {rate} req/s offered", 1),
        ("batch", f"{batch} events/request, 16 conns", batch)]
ratios = {}
for prefix, label, per in rows:
    for who, name in (("base", "baseline (200 only)"), ("tally", "tally (durable)")):
        rps, p50, p99, errs = metric(prefix, who)
        ratios[(prefix, who)] = rps
        print(f"| {label} | {name} | {rps:,.0f} | {rps * per:,.0f} | {p50:.2f} | {p99:.2f} | {errs} |")
print()
for prefix, label, _ in rows:
    print(f"- {label}: tally / baseline = {ratios[(prefix, 'tally')] / ratios[(prefix, 'base')]:.2f}")
cpu = [int(open(p).read()) for p in glob.glob(os.path.join(work, "cpu-max-tally-*"))]
total_acked = ok(load("warm-tally"))[0] + acked("max") + acked("rate") + acked("batch") * batch
fresh = json.load(open(os.path.join(work, "freshness.json")))
print(f"- tally CPU during the max-rate single-event runs: median {statistics.median(cpu) / os.sysconf('SC_CLK_TCK'):.1f} CPU-seconds per run")
print(f"- tally peak RSS: {rss_kb / 1024:.0f} MiB")
print(f"- time from 200 to queryable: median {fresh['median_ms']} ms, p95 {fresh['p95_ms']} ms, max {fresh['max_ms']} ms ({fresh['samples']} samples)")
cut = cut_off(load("warm-tally")) + unanswered("max") + unanswered("rate") + unanswered("batch") * batch
# Every acknowledged event must be stored; requests cut off unanswered at the end of a run
# may or may not have been stored (their ack was on its way), so the store may hold up to
# that many more.
verdict = "ok: none lost" if total_acked <= stored <= total_acked + cut else "MISMATCH"
print(f"- events acknowledged with 2xx (all runs and warm-up): {total_acked:,}; cut off unanswered at run ends: {cut:,}; bench events in the store: {stored:,} ({verdict})")
