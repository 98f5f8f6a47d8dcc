"""``autotune compare``: every policy on the same seeded scenarios, through the same guard.

Writes into the output folder:

- ``results.csv``: one row per policy x scenario x seed (:data:`RESULT_COLUMNS`);
- ``summary.md``: per scenario, the mean of each metric across seeds with a 95% confidence interval
  (Student's t);
- ``plots/<scenario>.png`` (load, concurrency and backlog over time, first seed) and
  ``plots/cost_vs_sli.png`` (the Pareto plot: per scenario, each policy's mean cost over the bound's
  against its mean SLI attainment with 95% intervals, the non-dominated front dotted, the bound marked);
- ``intervals.csv`` (per-interval records of the first seed), ``config.yml`` and ``run.yaml``
  (resolved config, command, git revision).

``cost_vs_bound`` is a run's cost divided by the bound's (:mod:`envs.bound`, the cheapest schedule
found in hindsight) on the same scenario and seed, ``cost_vs_oracle`` by the clairvoyant oracle's;
both always run for it, and appear in the tables only when asked for. ``bound`` is a name like the
policies' in the list.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from core.config import AutotuneConfig, with_overrides
from core.provenance import write_run_metadata

RESULT_COLUMNS = (
    "policy",
    "scenario",
    "seed",
    "sli_attainment",
    "success_rate",
    "mean_processing_time_s",
    "p90_processing_time_s",
    "p99_processing_time_s",
    "mean_backlog",
    "max_backlog",
    "cost_slot_hours",
    "busy_slot_hours",
    "cost_vs_bound",
    "cost_vs_oracle",
    "scaling_changes",
    "guard_overrides",
)
SUMMARY_METRICS = (
    "sli_attainment",
    "cost_slot_hours",
    "busy_slot_hours",
    "cost_vs_bound",
    "cost_vs_oracle",
    "success_rate",
    "mean_processing_time_s",
    "p99_processing_time_s",
    "max_backlog",
)
STANDARD_SCENARIOS = ("flash-sale", "step", "diurnal", "bursty", "worldcup", "worldcup-holdout")
REFERENCE = "oracle"
MIN_SEEDS_FOR_CLAIMS = 5
BOUND = "bound"

# two-sided 95% Student t quantiles by degrees of freedom (df > 30: normal)
_T95 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    25: 2.060,
    30: 2.042,
}


# fresh interpreters: forking a process that has torch (or numba) threads running can deadlock
_SPAWN = multiprocessing.get_context("spawn")


def t95(df: int) -> float:
    if df <= 0:
        return math.nan
    if df > 30:
        return 1.96
    return _T95.get(df) or _T95[min(k for k in _T95 if k >= df)]


@dataclass(frozen=True)
class Job:
    policy: str
    scenario: str
    seed: int
    keep_intervals: bool
    label: str = ""  # the scenario as reported (a trace's variant: ``worldcup@6h``); the scenario if empty
    overrides: tuple[tuple[str, Any], ...] = ()


INTERVALS_PER_TRACE_BIN = 2  # "auto" compression: one trace bin spans this many decision intervals


def trace_variants(
    scenarios: list[str], cfg: AutotuneConfig, offsets_h: list[float] | None, compression: float | str | None
) -> list[tuple[str, str, tuple[tuple[str, Any], ...]]]:
    """(label, scenario, overrides) per evaluated variant. A trace scenario is replayed from each
    offset in ``offsets_h`` (hours into the trace; labelled ``name@6h``) at ``compression`` trace
    seconds per simulated second: a number, or ``"auto"`` (one trace bin per
    :data:`INTERVALS_PER_TRACE_BIN` decision intervals, never faster than real time: a per-second trace
    plays at 1, a per-minute one at 2 with 15-s intervals). None keeps the configured value. Synthetic
    scenarios are not affected."""
    from envs.scenarios import scenario_trace

    out: list[tuple[str, str, tuple[tuple[str, Any], ...]]] = []
    for scenario in scenarios:
        trace = scenario_trace(scenario, cfg.simulation.trace_gaps)
        if trace is None or (offsets_h is None and compression is None):
            out.append((scenario, scenario, ()))
            continue
        base: dict[str, Any] = {}
        if compression == "auto":
            base["simulation.time_compression"] = max(
                1.0, trace.bin_s / (INTERVALS_PER_TRACE_BIN * cfg.control.interval_s)
            )
        elif compression is not None:
            base["simulation.time_compression"] = float(compression)
        if not offsets_h:
            out.append((scenario, scenario, tuple(base.items())))
            continue
        for h in offsets_h:
            if not (math.isfinite(h) and h >= 0):
                raise ValueError(f"trace offsets are hours >= 0, got {h}")
            out.append((f"{scenario}@{h:g}h", scenario, (*base.items(), ("simulation.trace_offset_s", h * 3600.0))))
    return out


@lru_cache(maxsize=16)
def _policy(name: str, cfg_json: str, seed: int):
    from core.config import config_from_dict
    from models.registry import make_policy

    return make_policy(name, config_from_dict(yaml.safe_load(cfg_json)), seed)


def _run_job(job: Job, cfg_json: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from core.config import config_from_dict
    from envs.rollout import run_policy
    from envs.scaling_env import ConcurrencyScalingEnv
    from models.registry import make_policy

    cfg = with_overrides(
        config_from_dict(yaml.safe_load(cfg_json)), {"simulation.scenario": job.scenario, **dict(job.overrides)}
    )
    if job.policy == BOUND:
        from envs.bound import compute_bound

        res = compute_bound(cfg, job.seed).rollout
        return _result(job, res)
    # learned models load once per process; rule-based policies are cheap and carry per-run state
    policy = (
        _policy(job.policy, cfg_json, 0)
        if job.policy == "ppo" or job.policy.endswith(".zip")
        else make_policy(job.policy, cfg, job.seed)
    )
    return _result(job, run_policy(ConcurrencyScalingEnv(cfg), policy, job.seed))


def _result(job: Job, res: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    row = res.summary.as_dict()
    row["policy"] = job.policy
    row["scenario"] = job.label or job.scenario
    intervals = (
        [{"policy": job.policy, "scenario": row["scenario"], **asdict(r)} for r in res.intervals]
        if job.keep_intervals
        else []
    )
    return row, intervals


def run_compare(
    policies: list[str],
    scenarios: list[str],
    seeds: list[int],
    out_dir: Path,
    cfg: AutotuneConfig,
    *,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    argv: list[str] | None = None,
    trace_offsets_h: list[float] | None = None,
    trace_compression: float | str | None = None,
) -> pd.DataFrame:
    """Run every policy x scenario x seed; write results, summary and plots; return the results.
    Trace scenarios run once per variant of :func:`trace_variants`."""
    from envs.scenarios import validate_scenario
    from models.registry import make_policy

    for scenario in scenarios:  # fail before any work on a bad name or file
        validate_scenario(scenario, cfg.simulation.trace_gaps)
    for name in policies:
        if name != BOUND:
            make_policy(name, cfg, 0)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg_json = yaml.safe_dump(cfg.model_dump(mode="json"))
    run_list = list(dict.fromkeys([*policies, REFERENCE, BOUND]))
    variants = trace_variants(scenarios, cfg, trace_offsets_h, trace_compression)
    jobs = [
        Job(p, s, seed, seed == seeds[0], label, overrides)
        for label, s, overrides in variants
        for seed in seeds
        for p in run_list
    ]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    rows: list[dict[str, Any]] = []
    intervals: list[dict[str, Any]] = []
    done = 0
    if workers <= 1:
        results = (_run_job(j, cfg_json) for j in jobs)
        for row, ivs in results:
            rows.append(row)
            intervals.extend(ivs)
            done += 1
            if on_progress:
                on_progress(done, len(jobs))
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=_SPAWN) as pool:
            for row, ivs in pool.map(_run_job, jobs, [cfg_json] * len(jobs)):
                rows.append(row)
                intervals.extend(ivs)
                done += 1
                if on_progress:
                    on_progress(done, len(jobs))

    df = pd.DataFrame(rows)
    for column, name in (("cost_vs_oracle", REFERENCE), ("cost_vs_bound", BOUND)):
        ref = df[df.policy == name].set_index(["scenario", "seed"])["cost_slot_hours"]
        df[column] = [
            row.cost_slot_hours / ref.loc[(row.scenario, row.seed)]
            if ref.loc[(row.scenario, row.seed)] > 0
            else math.nan
            for row in df.itertuples()
        ]
    bound_rows = df[df.policy == BOUND][list(RESULT_COLUMNS)].reset_index(drop=True)
    df = df[df.policy.isin(policies)][list(RESULT_COLUMNS)].reset_index(drop=True)
    df.to_csv(out_dir / "results.csv", index=False)
    iv = pd.DataFrame(intervals)
    iv.to_csv(out_dir / "intervals.csv", index=False)
    (out_dir / "summary.md").write_text(summary_markdown(df, seeds), encoding="utf-8")
    write_plots(df, iv[iv.policy.isin(policies)] if len(iv) else iv, out_dir / "plots", bound_rows)
    (out_dir / "config.yml").write_text(cfg_json, encoding="utf-8")
    write_run_metadata(
        out_dir / "run.yaml",
        cfg,
        argv,
        policies=policies,
        scenarios=scenarios,
        seeds=seeds,
        variants={label: dict(overrides) for label, _, overrides in variants},
    )
    return df


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% CI half-width of each summary metric per scenario and policy."""
    out = []
    for (scenario, policy), g in df.groupby(["scenario", "policy"], sort=False):
        rec: dict[str, Any] = {"scenario": scenario, "policy": policy, "n": len(g)}
        for m in SUMMARY_METRICS:
            x = g[m].astype(float)
            rec[m] = x.mean()
            rec[f"{m}_ci95"] = t95(len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else math.nan
        out.append(rec)
    return pd.DataFrame(out)


def fmt_ci(value: float, ci: float, pct: bool = False) -> str:
    """``value ± ci`` (a share as a percentage with ``pct``); the value alone when ``ci`` is NaN."""
    if pct:
        s = f"{value:.1%}"
        return s if math.isnan(ci) else f"{s} ± {ci:.1%}"
    s = f"{value:.2f}"
    return s if math.isnan(ci) else f"{s} ± {ci:.2f}"


def summary_markdown(df: pd.DataFrame, seeds: list[int]) -> str:
    s = summarise(df)
    lines = [
        "# Policy comparison",
        "",
        f"Means over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}) with 95% confidence intervals "
        "(Student's t) where there is more than one seed. `SLI attainment` is the share of control "
        "intervals meeting all three SLIs; cost is provisioned slot-hours; `vs bound` divides it by "
        "the bound's (the cheapest schedule found in hindsight, envs/bound.py) and `vs oracle` by the "
        "clairvoyant oracle's cost on the same arrivals.",
        "",
    ]
    if len(seeds) < MIN_SEEDS_FOR_CLAIMS:
        lines += [
            f"**{len(seeds)} seed(s): fewer than {MIN_SEEDS_FOR_CLAIMS}, too few to claim a difference "
            "between policies** (rerun with `--seeds 5` or more).",
            "",
        ]
    for scenario, g in s.groupby("scenario", sort=False):
        lines += [
            f"## {scenario}",
            "",
            "| policy | SLI attainment | slot-hours | vs bound | vs oracle | success rate | mean time s | P99 s "
            "| max backlog |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in g.itertuples():
            lines.append(
                f"| {r.policy} | {fmt_ci(r.sli_attainment, r.sli_attainment_ci95, True)} "
                f"| {fmt_ci(r.cost_slot_hours, r.cost_slot_hours_ci95)} | {fmt_ci(r.cost_vs_bound, r.cost_vs_bound_ci95)} "
                f"| {fmt_ci(r.cost_vs_oracle, r.cost_vs_oracle_ci95)} "
                f"| {fmt_ci(r.success_rate, r.success_rate_ci95, True)} "
                f"| {fmt_ci(r.mean_processing_time_s, r.mean_processing_time_s_ci95)} "
                f"| {fmt_ci(r.p99_processing_time_s, r.p99_processing_time_s_ci95)} "
                f"| {fmt_ci(r.max_backlog, r.max_backlog_ci95)} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_plots(
    df: pd.DataFrame, intervals: pd.DataFrame, plot_dir: Path, bound: pd.DataFrame | None = None
) -> list[Path]:
    # Figure objects directly, not pyplot: no GUI backend needed, and the caller's backend (a
    # notebook's inline one) is left alone
    from matplotlib.figure import Figure

    plot_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for scenario, g in intervals.groupby("scenario", sort=False) if len(intervals) else []:
        fig = Figure(figsize=(10, 8))
        axes = fig.subplots(3, 1, sharex=True)
        first = g[g.policy == g.policy.iloc[0]]
        axes[0].plot(first.time_s / 60, first.arrival_rate_per_s, color="black", lw=1)
        axes[0].set_ylabel("arrivals / s")
        for policy, p in g.groupby("policy", sort=False):
            axes[1].plot(p.time_s / 60, p.target_concurrency, lw=1, label=policy)
            axes[2].plot(p.time_s / 60, p.backlog, lw=1, label=policy)
        axes[1].set_ylabel("concurrency (slots)")
        axes[2].set_ylabel("backlog (tasks)")
        axes[2].set_yscale("symlog", linthresh=100)
        axes[2].axhline(100, color="grey", ls="--", lw=0.8)
        axes[2].set_xlabel("simulated minutes")
        axes[1].legend(loc="upper left", fontsize=8, ncol=4)
        axes[0].set_title(f"{scenario} (first seed)")
        fig.tight_layout()
        path = plot_dir / f"{scenario.replace(':', '_').replace('/', '_')}.png"
        fig.savefig(path, dpi=90)
        paths.append(path)
    paths.append(pareto_plot(df, bound, plot_dir / "cost_vs_sli.png"))
    return paths


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both cost (lower) and attainment (higher), by cost."""
    front: list[tuple[float, float]] = []
    for cost, att in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or att > front[-1][1]:
            front.append((cost, att))
    return front


def pareto_plot(df: pd.DataFrame, bound: pd.DataFrame | None, path: Path) -> Path:
    """Per scenario: mean cost (over the bound's, paired by seed) against mean SLI attainment with 95%
    intervals, the Pareto front dotted, the bound marked at 1."""
    from matplotlib.figure import Figure

    s = summarise(df)
    b = summarise(bound) if bound is not None and len(bound) else None
    colors = {p: f"C{i % 10}" for i, p in enumerate(dict.fromkeys(s.policy[s.policy != BOUND]))}
    scenarios = list(dict.fromkeys(s.scenario))
    cols = min(3, len(scenarios))
    rows = math.ceil(len(scenarios) / cols)
    fig = Figure(figsize=(4.5 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, scenario in zip(axes, scenarios, strict=False):
        g = s[(s.scenario == scenario) & (s.policy != BOUND)]  # the bound is the star
        for r in g.itertuples():
            ax.errorbar(
                r.cost_vs_bound,
                r.sli_attainment,
                xerr=None if math.isnan(r.cost_vs_bound_ci95) else r.cost_vs_bound_ci95,
                yerr=None if math.isnan(r.sli_attainment_ci95) else r.sli_attainment_ci95,
                fmt="o",
                ms=5,
                capsize=2,
                color=colors[r.policy],
                label=r.policy,
            )
        if b is not None and scenario in set(b.scenario):
            br = b[b.scenario == scenario].iloc[0]
            ax.scatter([1.0], [br.sli_attainment], marker="*", s=160, color="black", label="bound", zorder=3)
            ax.axvline(1.0, color="black", lw=0.6, ls="--")
        front = pareto_front(list(zip(g.cost_vs_bound, g.sli_attainment, strict=True)))  # of the policies
        ax.plot([p[0] for p in front], [p[1] for p in front], color="grey", lw=0.8, ls=":")
        ax.set_title(scenario, fontsize=10)
        ax.set_xlabel("cost / bound's cost (same seeds)")
        ax.set_ylabel("SLI attainment")
    for ax in axes[len(scenarios) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(8, len(labels)), fontsize=8)
    fig.suptitle("cost against SLI attainment (means over seeds, 95% intervals; dotted: the policies' Pareto front)")
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    fig.savefig(path, dpi=90)
    return path
