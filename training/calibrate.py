"""``autotune calibrate``: a fair rival. Grid-search the HPA's metric and target, and the static level.

Every candidate runs on the training scenarios and seeds; a candidate meets the SLIs when its mean
SLI attainment reaches ``attainment`` on every scenario; the cheapest such candidate (total mean
slot-hours) wins. The result, with the whole grid, is written to ``models/calibration.yaml``, from
which ``hpa`` and ``static`` take their settings (when it was made for the same cluster bounds).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from core.config import AutotuneConfig, config_from_dict, with_overrides
from core.provenance import run_metadata

UTILIZATION_TARGETS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
BACKLOG_TARGETS = (2.0, 5.0, 10.0, 20.0, 50.0)


# fresh interpreters: forking a process that has torch (or numba) threads running can deadlock
_SPAWN = multiprocessing.get_context("spawn")


class CalibrationError(ValueError):
    pass


def candidates(cfg: AutotuneConfig) -> list[tuple[str, float]]:
    c = cfg.cluster
    step = max(1, (c.max_concurrency - c.min_concurrency) // 20)
    static_levels = sorted({*range(c.min_concurrency, c.max_concurrency + 1, step), c.max_concurrency})
    return (
        [("hpa-utilization", t) for t in UTILIZATION_TARGETS]
        + [("hpa-backlog", t) for t in BACKLOG_TARGETS]
        + [("static", float(level)) for level in static_levels]
    )


def candidate_policy(kind: str, value: float, cfg: AutotuneConfig):
    from control.policies import default_hpa_config, hpa_policy, static_policy

    if kind == "static":
        return static_policy(int(value))
    metric = "utilization" if kind == "hpa-utilization" else "backlog"
    return hpa_policy(cfg, default_hpa_config(cfg, metric, value), kind)


def _run(job: tuple[str, float, str, int, str]) -> dict[str, Any]:
    from envs.rollout import run_policy
    from envs.scaling_env import ConcurrencyScalingEnv

    kind, value, scenario, seed, cfg_yaml = job
    cfg = with_overrides(config_from_dict(yaml.safe_load(cfg_yaml)), {"simulation.scenario": scenario})
    s = run_policy(ConcurrencyScalingEnv(cfg), candidate_policy(kind, value, cfg), seed).summary
    return {
        "kind": kind,
        "value": value,
        "scenario": scenario,
        "seed": seed,
        "sli_attainment": s.sli_attainment,
        "cost_slot_hours": s.cost_slot_hours,
    }


def select(grid: pd.DataFrame, kinds: tuple[str, ...], attainment: float) -> dict[str, Any]:
    """The cheapest candidate of ``kinds`` meeting ``attainment`` on every scenario (else the best)."""
    per = grid[grid.kind.isin(kinds)].groupby(["kind", "value", "scenario"]).mean(numeric_only=True).reset_index()
    agg = (
        per.groupby(["kind", "value"])
        .agg(
            min_attainment=("sli_attainment", "min"),
            mean_attainment=("sli_attainment", "mean"),
            cost_slot_hours=("cost_slot_hours", "sum"),
        )
        .reset_index()
    )
    ok = agg[agg.min_attainment >= attainment]
    best = ok.nsmallest(1, "cost_slot_hours") if len(ok) else agg.nlargest(1, ["min_attainment"])
    row = best.iloc[0]
    return {
        "kind": str(row.kind),
        "value": float(row.value),
        "min_attainment": float(row.min_attainment),
        "mean_attainment": float(row.mean_attainment),
        "cost_slot_hours": float(row.cost_slot_hours),
        "meets_slis": bool(len(ok)),
    }


def run_calibration(
    cfg: AutotuneConfig,
    scenarios: list[str],
    seeds: list[int],
    attainment: float,
    out: Path,
    *,
    workers: int | None = None,
    argv: list[str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    from envs.scenarios import validate_scenario
    from training.randomization import HOLDOUT_SCENARIOS

    for s in scenarios:
        validate_scenario(s)
        if s in HOLDOUT_SCENARIOS:
            raise CalibrationError(f"scenario {s!r} is held back for evaluation; calibrate on training scenarios")
    cfg_yaml = yaml.safe_dump(cfg.model_dump(mode="json"))
    jobs = [(k, v, s, seed, cfg_yaml) for k, v in candidates(cfg) for s in scenarios for seed in seeds]
    rows = []
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=workers, mp_context=_SPAWN) as pool:
        for i, row in enumerate(pool.map(_run, jobs, chunksize=4), 1):
            rows.append(row)
            if on_progress:
                on_progress(i, len(jobs))
    grid = pd.DataFrame(rows)
    hpa = select(grid, ("hpa-utilization", "hpa-backlog"), attainment)
    static = select(grid, ("static",), attainment)
    slots = cfg.cluster.slots_per_replica
    result = {
        "hpa": {
            "metric": "utilization" if hpa["kind"] == "hpa-utilization" else "backlog",
            "target": hpa["value"],
            **{k: hpa[k] for k in ("min_attainment", "mean_attainment", "cost_slot_hours", "meets_slis")},
        },
        "static": {
            "level": int(static["value"]),
            **{k: static[k] for k in ("min_attainment", "mean_attainment", "cost_slot_hours", "meets_slis")},
        },
        "criterion": {"attainment": attainment, "scenarios": scenarios, "seeds": seeds},
        "cluster": cfg.cluster.model_dump(),
        "slots_per_replica": slots,
        "provenance": {k: v for k, v in run_metadata(cfg, argv).items() if k != "config"},
        "grid": grid.groupby(["kind", "value", "scenario"])
        .mean(numeric_only=True)
        .drop(columns="seed")
        .reset_index()
        .round(4)
        .to_dict(orient="records"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(result, sort_keys=False), encoding="utf-8")
    return result
