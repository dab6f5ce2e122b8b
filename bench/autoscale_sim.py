#!/usr/bin/env python3
"""Replays traffic against the shipped autoscaling settings, one second at a time.

Reads the ingest HPA (deploy/k8s/overlays/scale-out/hpa.yaml) and the writers' KEDA
ScaledObject (keda.yaml), and the adapter's rate window (prometheus-adapter/config.yaml),
then simulates the HPA controller as Kubernetes documents and implements it
(pkg/controller/podautoscaler: replica_calculator.go, horizontal.go):

- every 15 s (--horizontal-pod-autoscaler-sync-period), per metric,
  desired = ceil(current * metric / target), no change within the 0.1 tolerance;
  pods without a metric yet count as 0 when scaling up (100 % of target when scaling
  down), and a change they would reverse is dropped;
- the largest proposal of all metrics wins;
- stabilization: scale up to the lowest recommendation of the up window, down to the
  highest of the down window;
- policies: the change per period is bounded by each policy, selectPolicy Max takes the
  one that allows the most change; missing fields take Kubernetes' defaults.

KEDA makes the writers' HPA with an External metric of type AverageValue (lagCount):
desired = ceil(lag / lagCount), same tolerance and behaviour. With minReplicaCount >= 1
KEDA's activation (activationLagCount) and cooldownPeriod only govern scaling to and from
zero, so they do not act here; the metric is read when the HPA asks (every sync).

Queue model (single-event requests: one request = one stream entry = one event, the case
the HPA's requests-per-pod target is sized for): ingest serves up to its capacity per
ready pod; a request beyond that is not taken (Tally does not shed load on CPU: it waits
in the pod's backlog until the client's timeout; modelled as refused) and the client
retries it 1 s later, as it does a 503 (Retry-After: 1). Served requests append to the
stream unless it holds queue.max_len entries (then 503 queue_full, retried the same
way). Refusals are shared between new and retried requests in proportion. Writers read up to
their capacity each. Nothing is dropped: every request is eventually stored, which the
simulation checks.

Usage: bench/autoscale_sim.py [--pod-start 20] [--out-md FILE] [--out-svg FILE]
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SCALE_OUT = ROOT / "deploy/k8s/overlays/scale-out"
ADAPTER = ROOT / "deploy/k8s/prometheus-adapter/config.yaml"

# Per-pod capacities, from docs/benchmarks.md (all measured on one 2-core machine shared
# with the load generator, so each is a floor; a pod may use 2 CPUs, its limit):
# - "Ingest load benchmark", Latest results / "Against the targets": durable
#   single-event ingest 22,000-41,000 req/s depending on the host's phase; hpa.yaml and
#   deploy.md quote 24,000-38,000. The low end of the latter:
INGEST_REQ_PER_S = 24_000
# - "Where a single-event request's CPU goes" (as summarised in docs/scale-out.md,
#   "Deployment topology and sizing"): about 35 us of CPU per single-event request; with
#   1 CPU requested, utilization = rate * 35e-6.
INGEST_CPU_S_PER_REQ = 35e-6
# - "Scale-out end to end", Latest results: 100,597 events/s end to end with one writer
#   (105,233 in the run before); docs/scale-out.md rounds it to ~100k events/s.
WRITER_EVENTS_PER_S = 100_000
# queue.max_len (docs/configuration.md): appends refused with 503 queue_full past it.
STREAM_MAX_LEN = 10_000_000
# Acknowledged entries stay in the stream until trimmed, every 5 s (docs/configuration.md).
TRIM_INTERVAL_S = 5
SYNC_PERIOD_S = 15
TOLERANCE = 0.1
CPU_WINDOW_S = 30  # metrics-server's CPU rate window (its default resolution is 15-60 s)
RETRY_AFTER_S = 1

# Kubernetes' defaults for fields a behaviour leaves out (HPA v2 docs, "Default Behavior").
DEFAULT_UP = {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
              "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15},
                           {"type": "Pods", "value": 4, "periodSeconds": 15}]}
DEFAULT_DOWN = {"stabilizationWindowSeconds": 300, "selectPolicy": "Max",
                "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}


@dataclass
class Rules:
    window: int
    select: str
    policies: list[tuple[str, int, int]]  # (type, value, periodSeconds)

    @classmethod
    def parse(cls, spec: dict | None, default: dict) -> "Rules":
        spec = spec or {}
        pols = spec.get("policies", default["policies"])
        return cls(int(spec.get("stabilizationWindowSeconds", default["stabilizationWindowSeconds"])),
                   spec.get("selectPolicy", "Max"),
                   [(p["type"], int(p["value"]), int(p["periodSeconds"])) for p in pols])


@dataclass
class Settings:
    name: str
    min_replicas: int
    max_replicas: int
    up: Rules
    down: Rules
    targets: dict[str, float]  # metric -> target (utilization %, per-pod value, or per-replica value)


def quantity(q) -> float:
    s = str(q)
    for suffix, mult in (("k", 1e3), ("M", 1e6), ("m", 1e-3)):
        if s.endswith(suffix):
            return float(s[:-1]) * mult
    return float(s)


def load_settings(root: Path = ROOT):
    """The ingest HPA, the writers' ScaledObject and the adapter's rate window."""
    docs = list(yaml.safe_load_all((root / "deploy/k8s/overlays/scale-out/hpa.yaml").read_text()))
    hpa = next(d for d in docs if d["metadata"]["name"] == "tally-ingest")
    spec = hpa["spec"]
    targets = {}
    for m in spec["metrics"]:
        if m["type"] == "Resource":
            targets[m["resource"]["name"]] = float(m["resource"]["target"]["averageUtilization"])
        elif m["type"] == "Pods":
            targets[m["pods"]["metric"]["name"]] = quantity(m["pods"]["target"]["averageValue"])
    behavior = spec.get("behavior", {})
    ingest = Settings("ingest", spec["minReplicas"], spec["maxReplicas"],
                      Rules.parse(behavior.get("scaleUp"), DEFAULT_UP),
                      Rules.parse(behavior.get("scaleDown"), DEFAULT_DOWN), targets)

    so = yaml.safe_load((root / "deploy/k8s/overlays/scale-out/keda.yaml").read_text())["spec"]
    trig = next(t for t in so["triggers"] if t["type"] == "redis-streams")
    kb = so.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {})
    writer = Settings("writer", so.get("minReplicaCount", 0), so.get("maxReplicaCount", 100),
                      Rules.parse(kb.get("scaleUp"), DEFAULT_UP),
                      Rules.parse(kb.get("scaleDown"), DEFAULT_DOWN),
                      {"lag": float(trig["metadata"]["lagCount"])})
    keda = {"pollingInterval": so.get("pollingInterval", 30),
            "cooldownPeriod": so.get("cooldownPeriod", 300),
            "activationLagCount": float(trig["metadata"].get("activationLagCount", 0))}

    adapter = yaml.safe_load((root / "deploy/k8s/prometheus-adapter/config.yaml").read_text())
    rule = next(r for r in adapter["rules"]
                if r["name"]["as"] == "tally_ingest_requests_per_second")
    m = re.search(r"\[(\d+)([sm])\]", rule["metricsQuery"])
    rate_window = int(m.group(1)) * (60 if m.group(2) == "m" else 1)
    return ingest, writer, keda, rate_window


# --- the HPA's arithmetic (replica_calculator.go) ---------------------------------------

def plain_metric_replicas(current: int, values: list[float], missing: int, target: float,
                          tolerance: float = TOLERANCE) -> int:
    """Per-pod metric (Pods or Resource utilization): values of the pods that have one,
    `missing` pods that have none yet."""
    if not values:
        return current
    ratio = sum(values) / len(values) / target
    if missing == 0:
        if abs(1.0 - ratio) <= tolerance:
            return current
        return math.ceil(ratio * len(values))
    fill = target if ratio < 1.0 else 0.0
    all_values = values + [fill] * missing
    new_ratio = sum(all_values) / len(all_values) / target
    if (abs(1.0 - new_ratio) <= tolerance or (ratio < 1.0 < new_ratio)
            or (ratio > 1.0 > new_ratio)):
        return current
    new = math.ceil(new_ratio * len(all_values))
    if (new_ratio < 1.0 and new > current) or (new_ratio > 1.0 and new < current):
        return current
    return new


def external_average_replicas(current: int, total: float, target_per_pod: float,
                              tolerance: float = TOLERANCE) -> int:
    """External metric with an AverageValue target (KEDA's triggers)."""
    ratio = total / (target_per_pod * current) if current else math.inf
    if abs(1.0 - ratio) <= tolerance:
        return current
    return math.ceil(total / target_per_pod)


class Autoscaler:
    """One HPA's stabilization and policies (horizontal.go, normalizeDesiredReplicasWithBehaviors)."""

    def __init__(self, s: Settings, replicas: int):
        self.s = s
        self.replicas = replicas
        self.recommendations: list[tuple[float, int]] = []
        self.events: list[tuple[float, int]] = []  # (time, replica change)

    def _changed(self, now: float, period: int, sign: int) -> int:
        return sum(abs(d) for t, d in self.events if t > now - period and d * sign > 0)

    def _up_limit(self, now: float) -> int:
        proposals = []
        for kind, value, period in self.s.up.policies:
            start = self.replicas - self._changed(now, period, 1) + self._changed(now, period, -1)
            proposals.append(start + value if kind == "Pods"
                             else math.ceil(start * (1 + value / 100)))
        return max(proposals) if self.s.up.select == "Max" else min(proposals)

    def _down_limit(self, now: float) -> int:
        proposals = []
        for kind, value, period in self.s.down.policies:
            start = self.replicas + self._changed(now, period, -1) - self._changed(now, period, 1)
            proposals.append(start - value if kind == "Pods"
                             else int(start * (1 - value / 100)))
        return min(proposals) if self.s.down.select == "Max" else max(proposals)

    def decide(self, now: float, desired: int) -> int:
        up_rec = down_rec = desired
        for t, rec in self.recommendations:
            if t > now - self.s.up.window:
                up_rec = min(up_rec, rec)
            if t > now - self.s.down.window:
                down_rec = max(down_rec, rec)
        self.recommendations = [(t, r) for t, r in self.recommendations
                                if t > now - max(self.s.up.window, self.s.down.window)]
        self.recommendations.append((now, desired))
        rec = min(max(self.replicas, up_rec), down_rec)

        lo, hi = self.s.min_replicas, self.s.max_replicas
        if rec > self.replicas:
            hi = min(hi, max(self._up_limit(now), self.replicas))
        elif rec < self.replicas:
            lo = max(lo, min(self._down_limit(now), self.replicas))
        new = min(max(rec, lo), hi)
        if new != self.replicas:
            self.events.append((now, new - self.replicas))
            self.replicas = new
        return new


# --- the simulation -----------------------------------------------------------------------

@dataclass
class Scenario:
    name: str
    duration: int
    rate: callable  # second -> offered new requests/s
    spike_start: int = 0


@dataclass
class Result:
    scenario: str
    t: list[int] = field(default_factory=list)
    offered: list[float] = field(default_factory=list)
    ingest_pods: list[int] = field(default_factory=list)
    ingest_ready: list[int] = field(default_factory=list)
    writer_pods: list[int] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)
    generated: float = 0.0
    stored: float = 0.0
    attempts: float = 0.0
    refused: float = 0.0
    first_refused: float = 0.0  # new requests refused on their first attempt
    unhealthy_s: int = 0  # seconds with lag >= 1,000 or a refusal
    peak_lag: float = 0.0
    peak_lag_at: int = 0
    recovered_at: int | None = None
    max_retry_backlog: float = 0.0


def simulate(sc: Scenario, ingest: Settings, writer: Settings, rate_window: int,
             pod_start: int = 20, ingest_cap: float = INGEST_REQ_PER_S,
             writer_cap: float = WRITER_EVENTS_PER_S, max_len: float = STREAM_MAX_LEN) -> Result:
    r = Result(sc.name)
    rps_target = ingest.targets["tally_ingest_requests_per_second"]
    cpu_target = ingest.targets.get("cpu")
    lag_target = writer.targets["lag"]

    def start_pods(rate: float, cap: float, target: float, s: Settings) -> int:
        return min(max(math.ceil(rate / target), s.min_replicas), s.max_replicas)

    r0 = sc.rate(0)
    ing = Autoscaler(ingest, start_pods(r0, ingest_cap, rps_target, ingest))
    wri = Autoscaler(writer, writer.min_replicas)
    # Time at which each pod became (or becomes) ready; the initial ones long ago.
    ing_ready_at = [-10**6] * ing.replicas
    wri_ready_at = [-10**6] * wri.replicas
    served_hist: list[float] = []  # requests served per second, for the rate windows
    lag = 0.0
    retry_now = retry_next = 0.0
    read_hist: list[float] = []
    unhealthy_since_spike = False

    for now in range(sc.duration):
        new = sc.rate(now)
        r.generated += new
        ready_i = sum(1 for t in ing_ready_at if t <= now)
        ready_w = sum(1 for t in wri_ready_at if t <= now)
        offered = new + retry_now
        retry_now, retry_next = retry_next, 0.0
        served = min(offered, ready_i * ingest_cap)
        in_stream = lag + sum(read_hist[-TRIM_INTERVAL_S:])
        appended = min(served, max(0.0, max_len - in_stream))
        refused = offered - appended
        retry_now += refused  # Retry-After: 1
        r.attempts += offered
        r.refused += refused
        r.first_refused += refused * (new / offered) if offered else 0.0
        lag += appended
        read = min(lag, ready_w * writer_cap)
        lag -= read
        r.stored += read
        read_hist.append(read)
        served_hist.append(served)

        if now % SYNC_PERIOD_S == 0 and now > 0:
            # Ingest: requests per pod over the adapter's window, CPU over metrics-server's;
            # pods not yet serving have no metric.
            with_metric = ready_i
            missing = ing.replicas - ready_i
            win = served_hist[-rate_window:]
            per_pod = (sum(win) / len(win)) / max(with_metric, 1)
            proposals = [plain_metric_replicas(ing.replicas, [per_pod] * with_metric, missing,
                                               rps_target)]
            if cpu_target:
                cwin = served_hist[-CPU_WINDOW_S:]
                cpu = 100 * (sum(cwin) / len(cwin)) / max(with_metric, 1) * INGEST_CPU_S_PER_REQ
                proposals.append(plain_metric_replicas(ing.replicas, [cpu] * with_metric,
                                                       missing, cpu_target))
            before = ing.replicas
            after = ing.decide(now, max(proposals))
            if after > before:
                ing_ready_at += [now + pod_start] * (after - before)
            elif after < before:
                ing_ready_at = sorted(ing_ready_at)[: after]
            before = wri.replicas
            after = wri.decide(now, external_average_replicas(wri.replicas, lag, lag_target))
            if after > before:
                wri_ready_at += [now + pod_start] * (after - before)
            elif after < before:
                wri_ready_at = sorted(wri_ready_at)[: after]

        r.t.append(now)
        r.offered.append(offered)
        r.ingest_pods.append(ing.replicas)
        r.ingest_ready.append(ready_i)
        r.writer_pods.append(wri.replicas)
        r.lag.append(lag)
        r.max_retry_backlog = max(r.max_retry_backlog, retry_now)
        if lag > r.peak_lag:
            r.peak_lag, r.peak_lag_at = lag, now
        healthy = lag < 1_000 and refused == 0 and retry_now == 0
        r.unhealthy_s += not healthy
        # Recovery: from the peak lag (or the first refusal) until healthy again.
        if not healthy:
            unhealthy_since_spike = True
            r.recovered_at = None
        elif unhealthy_since_spike and r.recovered_at is None:
            r.recovered_at = now
    # Let what is still queued drain at the final pod counts, so "nothing lost" is checked
    # over the whole run, not cut off mid-flight.
    pending = lag + retry_now + retry_next
    r.stored += pending
    r.drained_after_end = pending
    return r


def scenarios() -> list[Scenario]:
    base = 20_000

    def spike(peak):
        return lambda t: peak if 300 <= t < 900 else base

    def ramp(t):
        if t < 300:
            return base
        if t < 2100:
            return base + (10 * base - base) * (t - 300) / 1800
        if t < 2700:
            return 10 * base
        return base

    return [
        Scenario("10x spike (20k -> 200k req/s for 10 min)", 2400, spike(10 * base), 300),
        Scenario("slow ramp (20k -> 200k req/s over 30 min, 10 min at peak)", 4200, ramp, 300),
        Scenario("30x spike, beyond maxReplicas (20k -> 600k req/s for 10 min)", 2400,
                 spike(30 * base), 300),
    ]


def drain_time(r: Result) -> int | None:
    """Seconds from the peak lag until the lag is under 1,000 entries again."""
    for t in range(r.peak_lag_at, len(r.lag)):
        if r.lag[t] < 1_000:
            return t - r.peak_lag_at
    return None


def summarize(r: Result, sc: Scenario) -> dict:
    drain = drain_time(r)
    return {
        "scenario": r.scenario,
        "peak lag, entries (s after the change)": f"{r.peak_lag:,.0f} ({r.peak_lag_at - sc.spike_start:+d} s)",
        "lag peak to < 1,000": "never" if drain is None else f"{drain} s",
        "healthy for good from": "never" if r.recovered_at is None
        else f"{r.recovered_at - sc.spike_start:+d} s",
        "seconds unhealthy": r.unhealthy_s,
        "ingest pods max / end": f"{max(r.ingest_pods)} / {r.ingest_pods[-1]}",
        "writer pods max / end": f"{max(r.writer_pods)} / {r.writer_pods[-1]}",
        "refused share of responses (503 or timeout)": f"{100 * r.refused / r.attempts:.2f} %",
        "new requests refused at first try": f"{100 * r.first_refused / r.generated:.2f} %",
        "max retry backlog, req": f"{r.max_retry_backlog:,.0f}",
        "lost": f"{r.generated - r.stored:,.0f}",
    }


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(out) + "\n"


def svg(results: list[Result], ingest: Settings, writer: Settings) -> str:
    W, H, pad, gap = 900, 230, 60, 40
    total_h = len(results) * (H + gap) + 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{total_h}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{W}" height="{total_h}" fill="white"/>',
             '<text x="60" y="20" font-size="14">Tally autoscaling, simulated '
             '(bench/autoscale_sim.py): pods (left axis) and stream lag (right axis)</text>']
    colors = {"ingest": "#1f77b4", "ready": "#9ecae1", "writer": "#d62728", "lag": "#2ca02c",
              "offered": "#999999"}
    for i, r in enumerate(results):
        y0 = 40 + i * (H + gap)
        x1, x2, yb, yt = pad, W - pad, y0 + H - 25, y0 + 20
        tmax = r.t[-1]
        pmax = max(ingest.max_replicas, writer.max_replicas)
        lmax = max(max(r.lag), 1.0)
        omax = max(max(r.offered), 1.0)

        def line(vals, vmax, color, dash=""):
            step = max(1, len(vals) // 900)
            pts = " ".join(f"{x1 + (x2 - x1) * t / tmax:.1f},{yb - (yb - yt) * v / vmax:.1f}"
                           for t, v in list(zip(r.t, vals))[::step])
            d = f' stroke-dasharray="{dash}"' if dash else ""
            return f'<polyline fill="none" stroke="{color}" stroke-width="1.5"{d} points="{pts}"/>'

        parts.append(f'<text x="{x1}" y="{y0 + 12}" font-size="13">{r.scenario}</text>')
        parts.append(f'<rect x="{x1}" y="{yt}" width="{x2 - x1}" height="{yb - yt}" '
                     'fill="none" stroke="#ccc"/>')
        for frac in (0, 0.5, 1):
            y = yb - (yb - yt) * frac
            parts.append(f'<text x="{x1 - 5}" y="{y + 4}" text-anchor="end">{pmax * frac:.0f}</text>')
            parts.append(f'<text x="{x2 + 5}" y="{y + 4}">{lmax * frac / 1000:,.0f}k</text>')
        for tm in range(0, tmax + 1, 600):
            x = x1 + (x2 - x1) * tm / tmax
            parts.append(f'<text x="{x:.1f}" y="{yb + 15}" text-anchor="middle">{tm // 60} min</text>')
        parts.append(line(r.offered, omax, colors["offered"], "4,3"))
        parts.append(line(r.ingest_pods, pmax, colors["ingest"]))
        parts.append(line(r.ingest_ready, pmax, colors["ready"], "2,2"))
        parts.append(line(r.writer_pods, pmax, colors["writer"]))
        parts.append(line(r.lag, lmax, colors["lag"]))
    ly = total_h - 12
    for j, (label, c) in enumerate([("ingest pods", "ingest"), ("ingest ready", "ready"),
                                    ("writer pods", "writer"), ("stream lag", "lag"),
                                    ("offered req/s (scaled to its max)", "offered")]):
        x = 60 + j * 150
        parts.append(f'<rect x="{x}" y="{ly - 9}" width="12" height="4" fill="{colors[c]}"/>')
        parts.append(f'<text x="{x + 16}" y="{ly - 4}">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pod-start", type=int, default=20, help="seconds from scale-up to ready")
    ap.add_argument("--out-md", type=Path, help="write the Markdown table here")
    ap.add_argument("--out-svg", type=Path, help="write the plot here")
    args = ap.parse_args(argv)
    ingest, writer, keda, rate_window = load_settings()
    print(f"ingest HPA: {ingest.min_replicas}-{ingest.max_replicas} pods, targets {ingest.targets}, "
          f"up {ingest.up}, down {ingest.down}")
    print(f"writer (KEDA): {writer.min_replicas}-{writer.max_replicas} pods, lagCount "
          f"{writer.targets['lag']:.0f}, up {writer.up}, down {writer.down}; {keda} "
          "(activation and cooldown act only at zero replicas)")
    print(f"adapter rate window {rate_window} s, pod start {args.pod_start} s, capacities: ingest "
          f"{INGEST_REQ_PER_S} req/s, writer {WRITER_EVENTS_PER_S} events/s per pod")
    results, rows = [], []
    for sc in scenarios():
        r = simulate(sc, ingest, writer, rate_window, pod_start=args.pod_start)
        results.append(r)
        rows.append(summarize(r, sc))
    table = markdown(rows)
    print(table)
    if args.out_md:
        args.out_md.write_text(table)
    if args.out_svg:
        args.out_svg.parent.mkdir(parents=True, exist_ok=True)
        args.out_svg.write_text(svg(results, ingest, writer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
