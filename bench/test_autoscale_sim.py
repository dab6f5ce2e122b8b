"""Hand-worked cases of the HPA arithmetic in autoscale_sim.py, and the spike's recovery.

Run: python3 -m unittest bench/test_autoscale_sim.py (scripts/check-deploy.sh runs it).
"""

import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import autoscale_sim as sim  # noqa: E402


class Arithmetic(unittest.TestCase):
    def test_tolerance(self):
        # 10 pods at 4,300 req/s against 4,000: ratio 1.075, inside 0.1, no change.
        self.assertEqual(sim.plain_metric_replicas(10, [4300] * 10, 0, 4000), 10)
        # 4,500: ratio 1.125, ceil(11.25) = 12.
        self.assertEqual(sim.plain_metric_replicas(10, [4500] * 10, 0, 4000), 12)
        # External AverageValue: lag 21,000 on 1 writer at 20,000 each is inside; 100,000 is 5.
        self.assertEqual(sim.external_average_replicas(1, 21_000, 20_000), 1)
        self.assertEqual(sim.external_average_replicas(1, 100_000, 20_000), 5)

    def test_missing_pods_count_as_zero_when_scaling_up(self):
        # 2 pods at 8,000 (ratio 2) and 2 starting pods: (16,000 + 0) / 4 = 4,000, ratio
        # 1.0 with them: no change, instead of ceil(2 * 4) = 8 counted without them.
        self.assertEqual(sim.plain_metric_replicas(4, [8000, 8000], 2, 4000), 4)
        self.assertEqual(sim.plain_metric_replicas(4, [12000, 12000], 2, 4000), 6)

    def settings(self):
        ingest, writer, _, window = sim.load_settings()
        return ingest, writer, window

    def test_settings_come_from_the_manifests(self):
        ingest, writer, window = self.settings()
        self.assertEqual((ingest.min_replicas, ingest.max_replicas), (2, 20))
        self.assertEqual(ingest.targets["tally_ingest_requests_per_second"], 4000)
        self.assertEqual(ingest.up.policies, [("Percent", 100, 30), ("Pods", 4, 30)])
        self.assertEqual(ingest.down.window, 300)
        self.assertEqual((writer.min_replicas, writer.max_replicas), (1, 8))
        self.assertEqual(writer.targets["lag"], 20_000)
        self.assertEqual(writer.down.policies, [("Pods", 1, 60)])
        # KEDA sets no scaleUp: Kubernetes' default (100 % or 4 pods per 15 s).
        self.assertEqual(writer.up.policies, [("Percent", 100, 15), ("Pods", 4, 15)])
        self.assertEqual(window, 120)

    def test_policy_limits_scale_up(self):
        ingest, _, _ = self.settings()
        hpa = sim.Autoscaler(ingest, 2)
        # Wants 20: +100 % gives 4, +4 pods gives 6; Max picks 6.
        self.assertEqual(hpa.decide(15, 20), 6)
        # Same 30 s period: the period started at 2, so still 6.
        self.assertEqual(hpa.decide(30, 20), 6)
        # Next period starts at 6: max(12, 10) = 12.
        self.assertEqual(hpa.decide(45, 20), 12)

    def test_stabilization_holds_a_scale_down(self):
        ingest, _, _ = self.settings()
        hpa = sim.Autoscaler(ingest, 10)
        hpa.decide(0, 10)
        for t in range(15, 300, 15):
            self.assertEqual(hpa.decide(t, 4), 10, t)  # 10 is in the 300 s window
        # t=300: the recommendation of t=0 left the window; -20 % a minute: int(10 * 0.8) = 8.
        self.assertEqual(hpa.decide(300, 4), 8)
        self.assertEqual(hpa.decide(315, 4), 8)  # same 60 s period
        self.assertEqual(hpa.decide(360, 4), 6)  # int(8 * 0.8) = 6
        # Now 1 is asked, but the window's highest recommendation is still 4 (t=360).
        self.assertEqual(hpa.decide(420, 1), 4)
        self.assertEqual(hpa.decide(645, 1), 4)
        # t=660: only 1s are left in the window; int(4 * 0.8) = 3; then 2 = minReplicas.
        self.assertEqual(hpa.decide(660, 1), 3)
        self.assertEqual(hpa.decide(720, 1), 2)
        self.assertEqual(hpa.decide(780, 1), 2)


class Scenarios(unittest.TestCase):
    def test_spike_recovers_and_loses_nothing(self):
        ingest, writer, _, window = sim.load_settings()
        sc = sim.scenarios()[0]
        r = sim.simulate(sc, ingest, writer, window)
        self.assertIsNotNone(r.recovered_at)
        self.assertLess(r.recovered_at - sc.spike_start, 300)
        self.assertEqual(max(r.ingest_pods), ingest.max_replicas)
        self.assertGreater(max(r.writer_pods), 1)
        self.assertEqual(r.drained_after_end, 0)
        self.assertAlmostEqual(r.stored, r.generated, delta=1)
        # Back to the baseline's pods after the spike.
        self.assertEqual(r.ingest_pods[-1], 5)

    def test_slower_pods_mean_more_refusals(self):
        ingest, writer, _, window = sim.load_settings()
        sc = sim.scenarios()[0]
        fast = sim.simulate(sc, ingest, writer, window, pod_start=5)
        slow = sim.simulate(sc, ingest, writer, window, pod_start=60)
        # Ingest is the spike's bottleneck: starting pods slower refuses more.
        self.assertGreater(slow.first_refused, fast.first_refused)

    def test_over_capacity_refuses_but_loses_nothing(self):
        ingest, writer, _, window = sim.load_settings()
        r = sim.simulate(sim.scenarios()[2], ingest, writer, window)
        self.assertGreater(r.refused, 0)
        self.assertAlmostEqual(r.stored, r.generated, delta=1)


if __name__ == "__main__":
    unittest.main()
