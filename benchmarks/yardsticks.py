"""Every rule against the bound: SLI attainment and cost over the bound's, per scenario, 95% intervals.

    python benchmarks/yardsticks.py [--seeds 5] [--policies hpa,kpa,...] [--offsets-h 0,6,12,18]
        [--compression 2] [--workers 2] [--out runs/yardsticks]

Scenarios: the standard ones (``training.compare.STANDARD_SCENARIOS``) at their defaults, then both
World Cup days replayed at ``--compression`` (trace seconds per simulated second: at 2, one
per-minute bin spans two 15-s intervals) from several day offsets, one hour each. Each group runs
through ``autotune compare``'s code (``run_compare``) into its own folder under ``--out``, with its
results, resolved config, command and git revision; this prints one table over all of them.
``bound ok`` says whether, in every seed, no policy met the SLIs as often as the bound for less.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd

from core.config import AutotuneConfig, with_overrides
from core.provenance import git_revision
from training.compare import STANDARD_SCENARIOS, run_compare, summarise

RULES = "hpa,hpa-default,kpa,keda,predictive,static,threshold,oracle,ppo"


def bound_holds(df: pd.DataFrame, bound: pd.DataFrame) -> pd.Series:
    """Per (scenario, policy): True when no seed has the policy meeting the SLIs as often as the bound for less."""
    cols = ["scenario", "seed", "sli_attainment", "cost_slot_hours"]
    merged = df.merge(bound[cols], on=["scenario", "seed"], suffixes=("", "_bound"))
    beats = (merged.sli_attainment >= merged.sli_attainment_bound) & (
        merged.cost_slot_hours < merged.cost_slot_hours_bound
    )
    return ~beats.groupby([merged.scenario, merged.policy], sort=False).any()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--policies", default=RULES)
    ap.add_argument("--offsets-h", default="0,6,12,18")
    ap.add_argument("--compression", type=float, default=2.0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=Path("runs/yardsticks"))
    args = ap.parse_args()
    policies = [*args.policies.split(","), "bound"]
    seeds = list(range(args.seeds))
    base = AutotuneConfig()
    groups: list[tuple[str, list[str], AutotuneConfig]] = [("standard", list(STANDARD_SCENARIOS), base)]
    for hours in (float(h) for h in args.offsets_h.split(",")):
        cfg = with_overrides(
            base, {"simulation.time_compression": args.compression, "simulation.trace_offset_s": hours * 3600}
        )
        groups.append((f"x{args.compression:g}+{hours:g}h", ["worldcup", "worldcup-holdout"], cfg))
    t0 = time.perf_counter()
    print(f"# every rule against the bound; {args.seeds} seeds; 95% intervals (Student's t)")
    print(
        f"# command: {' '.join([os.path.basename(sys.executable), *sys.argv])}; git {git_revision()[:12]}; "
        f"{platform.machine()}, {os.cpu_count()} cores"
    )
    header = f"{'scenario':<27} {'policy':<12} {'SLI attainment':>16} {'slot-hours':>10} {'cost / bound':>14} {'bound ok':>8}"
    print(header)
    print("-" * len(header))
    argv = [os.path.basename(sys.executable), *sys.argv]
    for label, scenarios, cfg in groups:
        df = run_compare(policies, scenarios, seeds, args.out / label, cfg, workers=args.workers, argv=argv)
        ok = bound_holds(df[df.policy != "bound"], df[df.policy == "bound"])
        for r in summarise(df).itertuples():
            name = r.scenario if label == "standard" else f"{r.scenario} {label}"
            holds = "" if r.policy == "bound" else ("yes" if ok[(r.scenario, r.policy)] else "NO")
            print(
                f"{name:<27} {r.policy:<12} {r.sli_attainment:>9.1%} ±{r.sli_attainment_ci95:>5.1%} "
                f"{r.cost_slot_hours:>10.1f} {r.cost_vs_bound:>8.2f} ±{r.cost_vs_bound_ci95:>4.2f} {holds:>8}"
            )
    print(f"# {time.perf_counter() - t0:.0f} s; results, configs and run.yaml under {args.out}/")


if __name__ == "__main__":
    main()
