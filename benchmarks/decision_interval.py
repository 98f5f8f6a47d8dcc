"""What the decision interval and the guard's emergency rule do to SLI attainment and cost.

    python benchmarks/decision_interval.py [--seeds 3] [--intervals 5,10,15,30]
        [--scenarios flash-sale,worldcup,worldcup-holdout] [--policies threshold,hpa,oracle]

At x1.2 per decision, capacity doubles only after four decisions; this prints, per scenario and
policy, the share of intervals meeting all three SLIs and the cost in slot-hours for each decision
interval, with the guard's emergency rule on and off. Every cell is the mean over the seeds; the
arrivals for a (scenario, seed) are the same in every cell. SLI attainment is per decision interval,
so rows with different intervals count intervals of different lengths.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import time

import numpy as np

from core.config import AutotuneConfig, with_overrides
from core.provenance import git_revision
from envs.rollout import run_policy
from envs.scaling_env import ConcurrencyScalingEnv
from models.registry import make_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--intervals", default="5,10,15,30")
    ap.add_argument("--scenarios", default="flash-sale,worldcup,worldcup-holdout")
    ap.add_argument("--policies", default="threshold,hpa,oracle")
    args = ap.parse_args()
    intervals = [float(x) for x in args.intervals.split(",")]
    scenarios = args.scenarios.split(",")
    policies = args.policies.split(",")
    base = AutotuneConfig()
    t0 = time.perf_counter()
    print(
        f"# decision interval x emergency rule; {args.seeds} seeds; peak {base.simulation.peak_rate_per_s:g} tasks/s; "
        f"episode {base.simulation.duration_s:g} s; warm-up {base.cluster.warmup_s:g} s"
    )
    print(
        f"# command: {' '.join([os.path.basename(sys.executable), *sys.argv])}; git {git_revision()[:12]}; "
        f"{platform.machine()}, {os.cpu_count()} cores"
    )
    header = (
        f"{'scenario':<17} {'policy':<10} {'interval':>8} {'emergency':>9} {'all SLIs':>9} {'time SLI':>9} "
        f"{'backlog SLI':>11} {'slot-hours':>10} {'overrides':>9}"
    )
    print(header)
    print("-" * len(header))
    for scenario, policy, interval, emergency in itertools.product(scenarios, policies, intervals, (True, False)):
        cfg = with_overrides(
            base, {"simulation.scenario": scenario, "control.interval_s": interval, "guard.emergency": emergency}
        )
        env = ConcurrencyScalingEnv(cfg)
        sums = [run_policy(env, make_policy(policy, cfg, seed), seed).summary for seed in range(args.seeds)]
        mean = lambda attr, sums=sums: float(np.mean([getattr(s, attr) for s in sums]))  # noqa: E731
        print(
            f"{scenario:<17} {policy:<10} {interval:>8g} {'on' if emergency else 'off':>9} "
            f"{mean('sli_attainment'):>9.1%} {mean('processing_time_attainment'):>9.1%} "
            f"{mean('backlog_attainment'):>11.1%} {mean('cost_slot_hours'):>10.1f} {mean('guard_overrides'):>9.1f}"
        )
    print(f"# {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
