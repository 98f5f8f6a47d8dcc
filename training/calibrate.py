"""``autotune calibrate``: fair rivals. Every rule's knobs are tuned alike, and the cheapest setting
that meets the SLIs is kept.

Alike means:

- the same training scenarios and seeds: every candidate setting runs on each of them;
- the same search: Optuna's TPE sampler (multivariate, seeded, the first :data:`STARTUP_TRIALS`
  settings drawn at random), its first trial the anchor's defaults, minimising the cost under the
  constraint that the SLIs are met (Optuna's constrained TPE);
- the same budget: ``trials`` distinct settings per rule. A setting the sampler proposes again is
  answered from the runs already made and does not count (a rule whose space holds fewer settings
  gets what its space holds, within ``MAX_PROPOSALS_PER_TRIAL`` proposals per trial).

The knobs searched are declared in one table, :func:`search_space`. A candidate meets the SLIs when
its mean SLI attainment (over seeds) reaches ``attainment`` on every scenario; its cost is the sum
over scenarios of its mean slot-hours. :func:`select` keeps, per rule, the cheapest trial meeting
the SLIs, else the one with the best worst-scenario attainment. The result, with every trial, is
written to ``models/calibration.yaml``, from which ``hpa``, ``kpa``, ``keda``, ``predictive`` and
``static`` take their settings (when it was made for the same cluster bounds; see
:mod:`models.calibration`).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from core.config import AutotuneConfig, config_from_dict, with_overrides
from core.provenance import run_metadata
from models.calibration import RULES, calibration_cluster, rule_policy, rule_settings

DEFAULT_TRIALS = 100  # per rule: the shipped calibration, 5 rules x 100 x 15 runs, took 15.5 minutes on 1 worker
STARTUP_TRIALS = 10  # random settings before TPE models the space (Optuna's default)
MAX_PROPOSALS_PER_TRIAL = 20
SEARCH_METHOD = "optuna-tpe"

# fresh interpreters: forking a process that has torch (or numba) threads running can deadlock
_SPAWN = multiprocessing.get_context("spawn")


class CalibrationError(ValueError):
    pass


@dataclass(frozen=True)
class Knob:
    """One setting searched: ``choices``, or a range ``[low, high]`` (``step``, ``log``, ``integer``).

    ``when=(knob, value)``: searched only in trials where that knob took that value (the HPA's target
    depends on its metric)."""

    field: str
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[str, ...] = ()
    when: tuple[str, str] | None = None

    @property
    def param(self) -> str:
        """The name in the Optuna study: unique per rule."""
        return self.field if self.when is None else f"{self.field}[{self.when[0]}={self.when[1]}]"

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one of the knob's settings (in range, on the step's grid)."""
        if self.choices:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float) or not self.low <= value <= self.high:
            return False
        step = self.step or (1 if self.integer else None)
        return step is None or abs((value - self.low) / step - round((value - self.low) / step)) < 1e-6

    def describe(self) -> str:
        if self.choices:
            span = "{" + ", ".join(self.choices) + "}"
        else:
            low, high = (int(self.low), int(self.high)) if self.integer else (self.low, self.high)
            span = f"[{low:g}, {high:g}]" + (f" step {self.step:g}" if self.step else "") + (" log" if self.log else "")
        return f"{self.field} {span}" + (f" if {self.when[0]}={self.when[1]}" if self.when else "")


def search_space(cfg: AutotuneConfig) -> dict[str, tuple[Knob, ...]]:
    """The knobs searched per rule (a rule's other settings keep the anchor's defaults). Ranges hold
    the defaults; the guard's step limits (x2 up, /2 down per decision) cap faster rates anyway."""
    c = cfg.cluster
    return {
        "hpa": (
            Knob("metric", choices=("utilization", "backlog")),
            Knob("target", 0.4, 1.0, step=0.05, when=("metric", "utilization")),  # busy share of the slots
            Knob("target", 1, 100, log=True, integer=True, when=("metric", "backlog")),  # tasks per replica
            Knob("scale_down_stabilization_s", 0, 600, step=15, integer=True),
            Knob("scale_up_percent", 25, 200, step=25, integer=True),  # per 15 s period
        ),
        "kpa": (
            Knob("target_utilisation", 0.4, 1.0, step=0.05),
            Knob("stable_window_s", 15, 300, step=15, integer=True),
            Knob("panic_threshold_percentage", 110, 400, step=10, integer=True),
        ),
        "keda": (
            Knob("queue_length", 1, 100, log=True, integer=True),
            Knob("polling_interval_s", 15, 120, step=15, integer=True),
            Knob("scale_down_stabilization_s", 0, 600, step=15, integer=True),
        ),
        "predictive": (
            Knob("target_utilisation", 0.4, 1.0, step=0.05),  # the headroom
            Knob("extra_lead_s", 0, 120, step=15, integer=True),
            Knob("alpha", 0.1, 1.0, step=0.1),
            Knob("beta", 0.1, 1.0, step=0.1),
        ),
        "static": (Knob("level", c.min_concurrency, c.max_concurrency, integer=True),),
    }


def suggest(trial: Any, knobs: tuple[Knob, ...]) -> dict[str, Any]:
    """One setting from an Optuna trial (values rounded, so what runs is what is recorded)."""
    settings: dict[str, Any] = {}
    for k in knobs:
        if k.when is not None and settings.get(k.when[0]) != k.when[1]:
            continue
        if k.choices:
            settings[k.field] = trial.suggest_categorical(k.param, k.choices)
        elif k.integer:
            step = int(k.step or 1)
            settings[k.field] = trial.suggest_int(k.param, int(k.low), int(k.high), step=step, log=k.log)
        else:
            settings[k.field] = round(trial.suggest_float(k.param, k.low, k.high, step=k.step, log=k.log), 6)
    return settings


def default_params(rule: str, knobs: tuple[Knob, ...], cfg: AutotuneConfig) -> dict[str, Any]:
    """The anchor's defaults as the study's parameters (those inside the searched ranges)."""
    defaults = rule_policy(rule, {}, cfg).params
    params: dict[str, Any] = {}
    for k in knobs:
        if k.when is not None and defaults.get(k.when[0]) != k.when[1]:
            continue
        value = defaults.get(k.field)
        if value is not None and k.contains(value):
            params[k.param] = int(value) if k.integer else value
    return params


def _run(job: tuple[str, dict[str, Any], str, int, str]) -> dict[str, Any]:
    from envs.rollout import run_policy
    from envs.scaling_env import ConcurrencyScalingEnv

    rule, settings, scenario, seed, cfg_yaml = job
    cfg = with_overrides(config_from_dict(yaml.safe_load(cfg_yaml)), {"simulation.scenario": scenario})
    s = run_policy(ConcurrencyScalingEnv(cfg), rule_policy(rule, settings, cfg), seed).summary
    return {
        "scenario": scenario,
        "seed": seed,
        "sli_attainment": s.sli_attainment,
        "cost_slot_hours": s.cost_slot_hours,
    }


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per trial (runs: trial, scenario, seed, sli_attainment, cost_slot_hours): the worst and the
    mean over scenarios of the mean attainment over seeds, and the summed mean cost."""
    per = runs.groupby(["trial", "scenario"])[["sli_attainment", "cost_slot_hours"]].mean().reset_index()
    return (
        per.groupby("trial")
        .agg(
            min_attainment=("sli_attainment", "min"),
            mean_attainment=("sli_attainment", "mean"),
            cost_slot_hours=("cost_slot_hours", "sum"),
        )
        .reset_index()
    )


def select(runs: pd.DataFrame, attainment: float) -> dict[str, Any]:
    """The cheapest trial meeting ``attainment`` on every scenario, else the one with the best
    worst-scenario attainment (the cheaper on a tie). Ties on cost go to the earlier trial."""
    agg = summarize(runs)
    ok = agg[agg.min_attainment >= attainment]
    if len(ok):
        row = ok.sort_values(["cost_slot_hours", "trial"], kind="stable").iloc[0]
    else:
        row = agg.sort_values(["min_attainment", "cost_slot_hours", "trial"], ascending=[False, True, True]).iloc[0]
    return {
        "trial": int(row.trial),
        "min_attainment": float(row.min_attainment),
        "mean_attainment": float(row.mean_attainment),
        "cost_slot_hours": float(row.cost_slot_hours),
        "meets_slis": bool(len(ok)),
    }


def search_rule(
    rule: str,
    knobs: tuple[Knob, ...],
    cfg: AutotuneConfig,
    evaluate: Callable[[str, dict[str, Any]], list[dict[str, Any]]],
    trials: int,
    attainment: float,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], pd.DataFrame, int]:
    """TPE over ``knobs`` until ``trials`` distinct settings have run. Returns the settings (index =
    trial), their runs (with a ``trial`` column) and the number of proposals."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS, multivariate=True)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    if params := default_params(rule, knobs, cfg):
        study.enqueue_trial(params)
    settings_of: list[dict[str, Any]] = []
    outcome_of: dict[tuple[tuple[str, Any], ...], tuple[float, float]] = {}
    runs: list[dict[str, Any]] = []
    proposals = 0
    while len(settings_of) < trials and proposals < trials * MAX_PROPOSALS_PER_TRIAL:
        trial = study.ask()
        proposals += 1
        settings = suggest(trial, knobs)
        key = tuple(sorted(settings.items()))
        if key not in outcome_of:
            index = len(settings_of)
            settings_of.append(settings)
            rows = [{"trial": index, **row} for row in evaluate(rule, settings)]
            runs.extend(rows)
            agg = summarize(pd.DataFrame(rows)).iloc[0]
            outcome_of[key] = (float(agg.cost_slot_hours), float(agg.min_attainment))
        cost, worst = outcome_of[key]
        trial.set_constraint("sli_shortfall", attainment - worst)  # feasible when <= 0
        study.tell(trial, cost)
    return settings_of, pd.DataFrame(runs), proposals


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def run_calibration(
    cfg: AutotuneConfig,
    scenarios: list[str],
    seeds: list[int],
    attainment: float,
    out: Path,
    *,
    trials: int = DEFAULT_TRIALS,
    search_seed: int = 0,
    workers: int | None = None,
    argv: list[str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    from envs.scenarios import validate_scenario
    from training.randomization import HOLDOUT_SCENARIOS

    for s in scenarios:
        validate_scenario(s, cfg.simulation.trace_gaps)
        if s in HOLDOUT_SCENARIOS:
            raise CalibrationError(f"scenario {s!r} is held back for evaluation; calibrate on training scenarios")
    if trials < 1:
        raise CalibrationError(f"trials must be at least 1, got {trials}")
    # the revision and versions that run, taken before the minutes of search (the tree may change)
    provenance = {k: v for k, v in run_metadata(cfg, argv).items() if k != "config"}
    cfg_yaml = yaml.safe_dump(cfg.model_dump(mode="json"))
    space = search_space(cfg)
    total = len(RULES) * trials * len(scenarios) * len(seeds)
    done = 0
    result: dict[str, Any] = {}
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=workers, mp_context=_SPAWN) as pool:

        def evaluate(rule: str, settings: dict[str, Any]) -> list[dict[str, Any]]:
            nonlocal done
            jobs = [(rule, settings, s, seed, cfg_yaml) for s in scenarios for seed in seeds]
            rows = []
            for row in pool.map(_run, jobs):
                rows.append(row)
                done += 1
                if on_progress:
                    on_progress(done, total)
            return rows

        for rule in RULES:
            settings_of, runs, proposals = search_rule(
                rule, space[rule], cfg, evaluate, trials, attainment, search_seed
            )
            result[rule] = _rule_entry(settings_of, runs, proposals, attainment, search_seed)
    if on_progress:
        on_progress(total, total)  # a rule whose space was exhausted ran fewer than its budget
    result.update(
        {
            "criterion": {
                "attainment": attainment,
                "scenarios": scenarios,
                "seeds": seeds,
                "duration_s": cfg.simulation.duration_s,
            },
            "cluster": calibration_cluster(cfg),
            "slots_per_replica": cfg.cluster.slots_per_replica,
            "provenance": provenance,
        }
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(result, sort_keys=False, default_flow_style=None, width=160), encoding="utf-8")
    return result


def _rule_entry(
    settings_of: list[dict[str, Any]], runs: pd.DataFrame, proposals: int, attainment: float, seed: int
) -> dict[str, Any]:
    best = select(runs, attainment)
    chosen = runs[runs.trial == best["trial"]]
    per_scenario = chosen.groupby("scenario")[["sli_attainment", "cost_slot_hours"]].mean().round(4)
    summary = summarize(runs).set_index("trial")
    return {
        **settings_of[best["trial"]],
        **{k: _rounded(best[k]) for k in ("min_attainment", "mean_attainment", "cost_slot_hours", "meets_slis")},
        "search": {
            "method": SEARCH_METHOD,
            "trials": len(settings_of),
            "proposals": proposals,
            "seed": seed,
            "chosen_trial": best["trial"],
        },
        "per_scenario": {str(s): {k: float(v) for k, v in row.items()} for s, row in per_scenario.iterrows()},
        "trials": [
            {
                **settings,
                **{
                    k: _rounded(float(summary.loc[i, k]))
                    for k in ("min_attainment", "mean_attainment", "cost_slot_hours")
                },
            }
            for i, settings in enumerate(settings_of)
        ],
    }


def calibration_table(data: Mapping[str, Any]) -> str:
    """The chosen settings per rule as a Markdown table (what ``autotune calibrate`` prints)."""
    lines = [
        "| rule | settings | worst-scenario attainment | mean attainment | cost (slot-h) | meets SLIs | trials |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for rule in RULES:
        entry = data.get(rule)
        if not entry:
            continue
        settings = ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in rule_settings(entry).items()
        )
        search = entry.get("search") or {}
        lines.append(
            f"| {rule} | {settings} | {entry.get('min_attainment', float('nan')):.2%} "
            f"| {entry.get('mean_attainment', float('nan')):.2%} | {entry.get('cost_slot_hours', float('nan')):.1f} "
            f"| {'yes' if entry.get('meets_slis') else 'no'} | {search.get('trials', '?')} |"
        )
    return "\n".join(lines)
