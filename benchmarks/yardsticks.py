"""Every rule against the bound: SLI attainment and cost over the bound's, per scenario, 95% intervals.

    python benchmarks/yardsticks.py [--seeds 5] [--policies hpa,kpa,...] [--offsets-h 0,6,12,18]
        [--compression auto] [--workers 2] [--out runs/yardsticks]

Scenarios: the standard ones (``training.compare.STANDARD_SCENARIOS``); both World Cup days among them
are replayed as ``autotune compare`` does by default, from several day offsets (``worldcup@6h``: one
hour from 06:00) at the compression that puts one per-minute bin on two 15-s intervals (2). It runs
through ``autotune compare``'s code (``run_compare``), which writes the results, resolved config,
command and git revision under ``--out``; this prints one table.
``bound ok`` says whether, in every seed, no policy met the SLIs as often as the bound for less;
``work share`` is the busy slot-hours (the work, a floor under any schedule's cost) over the cost.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd

from core.config import AutotuneConfig
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
    ap.add_argument("--compression", default="auto", help="trace seconds per simulated second, or auto")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=Path("runs/yardsticks"))
    args = ap.parse_args()
    policies = [*args.policies.split(","), "bound"]
    seeds = list(range(args.seeds))
    offsets = [float(h) for h in args.offsets_h.split(",")]
    compression: float | str = args.compression if args.compression == "auto" else float(args.compression)
    t0 = time.perf_counter()
    print(
        f"# every rule against the bound; {args.seeds} seeds; 95% intervals (Student's t); traces from "
        f"{args.offsets_h} h at compression {args.compression}"
    )
    print(
        f"# command: {' '.join([os.path.basename(sys.executable), *sys.argv])}; git {git_revision()[:12]}; "
        f"{platform.machine()}, {os.cpu_count()} cores"
    )
    argv = [os.path.basename(sys.executable), *sys.argv]
    df = run_compare(
        policies,
        list(STANDARD_SCENARIOS),
        seeds,
        args.out,
        AutotuneConfig(),
        workers=args.workers,
        argv=argv,
        trace_offsets_h=offsets,
        trace_compression=compression,
    )
    ok = bound_holds(df[df.policy != "bound"], df[df.policy == "bound"])
    header = f"{'scenario':<20} {'policy':<12} {'SLI attainment':>16} {'slot-hours':>10} {'cost / bound':>14} {'work share':>10} {'bound ok':>8}"
    print(header)
    print("-" * len(header))
    for r in summarise(df).itertuples():
        holds = "" if r.policy == "bound" else ("yes" if ok[(r.scenario, r.policy)] else "NO")
        print(
            f"{r.scenario:<20} {r.policy:<12} {r.sli_attainment:>9.1%} ±{r.sli_attainment_ci95:>5.1%} "
            f"{r.cost_slot_hours:>10.1f} {r.cost_vs_bound:>8.2f} ±{r.cost_vs_bound_ci95:>4.2f} "
            f"{r.busy_slot_hours / r.cost_slot_hours:>10.1%} {holds:>8}"
        )
    print(f"# {time.perf_counter() - t0:.0f} s; results, configs and run.yaml under {args.out}/")


if __name__ == "__main__":
    main()
