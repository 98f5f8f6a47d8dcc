"""``autotune generalization``: does a learned policy hold up on load families it was not trained on?

For each family (a scenario: the training draw's families, :data:`training.randomization.TRAINING_SCENARIOS`,
and the held-back World Cup day), every calibrated rival rule (:data:`RIVALS`), the learned policy and
the bound run on the same seeds through ``compare``'s code (:func:`training.compare.run_compare`:
trace families replayed from several hours of the day at one trace bin per two decisions, so a
per-second trace plays in real time). Two ways to get the learned policy:

- ``model``: one model for every family (the shipped one by default). A family it was trained on is
  marked ``held_out: no`` (read from its ``model_meta.json``): there it is not a test of
  generalisation, and the table says so;
- ``leave_one_out_steps``: leave-one-family-out. For each training family, a PPO is trained for that
  many steps on the training draw without it (its weight dropped, and left out of the run's
  evaluation episodes too), into ``out/models/without-<family>``, and judged on that family only; the
  held-back day is judged by a model trained on every training family (``out/models/all``).

The verdict per scenario is the issue's goal: the learned policy meets the SLIs in at least as many
intervals as the best calibrated rule (its mean attainment plus both 95% half-widths reaches the
rule's mean), at no more than 0.8x that rule's cost, and within 1.25x of the bound's. The best rule
is the cheapest rival meeting ``attainment`` (the calibration's criterion) on that scenario, else the
one with the highest attainment.

Written into ``out``: ``results.csv`` (every run, ``learned`` for the learned policy, with the model
it was and whether the family was held out), ``summary.md`` (per scenario: every rival, the learned
policy and the bound with 95% intervals, then the verdict table), ``pareto.png`` (per scenario, cost
over the bound's against attainment), each family's ``compare`` folder, and ``run.yaml`` (resolved
config, command, git revision, models).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from core.config import AutotuneConfig
from core.provenance import write_run_metadata
from training.compare import BOUND, fmt_ci, pareto_plot, run_compare, summarise, t95
from training.ppo_hyperparams import PPOHyperparams
from training.randomization import HOLDOUT_SCENARIOS, TRAINING_SCENARIOS

RIVALS = ("hpa", "kpa", "keda", "predictive", "static")
LEARNED = "learned"
FAMILIES: tuple[str, ...] = (*TRAINING_SCENARIOS, *sorted(HOLDOUT_SCENARIOS))
COST_VS_RULE_GOAL = 0.8
COST_VS_BOUND_GOAL = 1.25
DEFAULT_ATTAINMENT = 0.98


class GeneralizationError(ValueError):
    pass


def trained_families(model_dir: Path) -> tuple[str, ...] | None:
    """The scenarios a model folder's training drew from (its ``model_meta.json``), or None if unknown."""
    meta = model_dir / "model_meta.json" if model_dir.is_dir() else model_dir.with_name("model_meta.json")
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
        return tuple(data["hyperparams"]["randomization"]["scenarios"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def without_family(hp: PPOHyperparams, family: str) -> PPOHyperparams:
    """``hp`` with ``family`` out of the training draw (the others keep their weights) and out of the
    run's evaluation episodes."""
    spec = hp.randomization
    kept = [(s, w) for s, w in zip(spec.scenarios, spec.weights(), strict=True) if s != family]
    if not kept:
        raise GeneralizationError(f"leaving out {family!r} leaves nothing to train on")
    weights: dict[str, float] = {}
    for s, w in kept:  # a scenario listed twice weighs its entries' sum
        weights[s] = weights.get(s, 0.0) + w
    new_spec = dataclasses.replace(spec, scenarios=tuple(weights), scenario_weights=weights)
    evaluation = tuple(s for s in hp.evaluation.scenarios if s != family) or (next(iter(weights)),)
    return hp.model_copy(
        update={"randomization": new_spec, "evaluation": hp.evaluation.model_copy(update={"scenarios": evaluation})}
    )


def best_rule(rows: pd.DataFrame, attainment: float) -> pd.Series:
    """Of the summarised rivals of one scenario: the cheapest meeting ``attainment``, else the best."""
    ok = rows[rows.sli_attainment >= attainment]
    if len(ok):
        return ok.sort_values("cost_slot_hours").iloc[0]
    return rows.sort_values(["sli_attainment", "cost_slot_hours"], ascending=[False, True]).iloc[0]


def verdicts(summary: pd.DataFrame, attainment: float = DEFAULT_ATTAINMENT) -> pd.DataFrame:
    """One row per scenario: the learned policy against the best rule and the bound, and the goal."""
    out = []
    for scenario, g in summary.groupby("scenario", sort=False):
        learned = g[g.policy == LEARNED]
        rivals = g[g.policy.isin(RIVALS)]
        bound = g[g.policy == BOUND]
        if not (len(learned) and len(rivals) and len(bound)):
            continue
        le, rule, b = learned.iloc[0], best_rule(rivals, attainment), bound.iloc[0]
        half = sum(0.0 if math.isnan(x) else x for x in (le.sli_attainment_ci95, rule.sli_attainment_ci95))
        att_ok = le.sli_attainment + half >= rule.sli_attainment
        vs_rule = le.cost_slot_hours / rule.cost_slot_hours if rule.cost_slot_hours > 0 else math.nan
        vs_bound = le.cost_slot_hours / b.cost_slot_hours if b.cost_slot_hours > 0 else math.nan
        out.append(
            {
                "scenario": scenario,
                "held_out": le.held_out,
                "best_rule": rule.policy,
                "rule_attainment": rule.sli_attainment,
                "learned_attainment": le.sli_attainment,
                "attainment_ok": bool(att_ok),
                "learned_vs_rule_cost": vs_rule,
                "cost_ok": bool(vs_rule <= COST_VS_RULE_GOAL),
                "learned_vs_bound_cost": vs_bound,
                "bound_ok": bool(vs_bound <= COST_VS_BOUND_GOAL),
                "goal_met": bool(att_ok and vs_rule <= COST_VS_RULE_GOAL and vs_bound <= COST_VS_BOUND_GOAL),
            }
        )
    return pd.DataFrame(out)


def run_generalization(
    families: list[str],
    seeds: list[int],
    out_dir: Path,
    cfg: AutotuneConfig,
    *,
    model: str = "ppo",
    leave_one_out_steps: int | None = None,
    hyperparams: PPOHyperparams | None = None,
    train_seed: int = 0,
    attainment: float = DEFAULT_ATTAINMENT,
    trace_offsets_h: list[float] | None = None,
    workers: int | None = None,
    on_progress: Callable[[str], None] | None = None,
    argv: list[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Judge the learned policy family by family; returns (results, verdicts) and writes them."""
    from envs.scenarios import validate_scenario
    from models import DEFAULT_MODEL_DIR
    from models.registry import make_policy

    if not families:
        raise GeneralizationError("give at least one family")
    for family in families:
        validate_scenario(family)
    if len(seeds) < 1:
        raise GeneralizationError("give at least one seed")
    if leave_one_out_steps is not None:
        if leave_one_out_steps < 1:
            raise GeneralizationError(f"leave-one-out steps must be >= 1, got {leave_one_out_steps}")
        if hyperparams is None:
            raise GeneralizationError("leave-one-family-out needs the hyperparameters to train with")
    else:
        make_policy(model, cfg)  # a model that cannot load fails before any run
    offsets = [0.0, 6.0, 12.0, 18.0] if trace_offsets_h is None else trace_offsets_h
    out_dir.mkdir(parents=True, exist_ok=True)
    say = on_progress or (lambda _msg: None)

    models: dict[str, tuple[str, bool]] = {}  # family -> (model path, held out)
    if leave_one_out_steps is not None:
        assert hyperparams is not None
        from training.train import train

        base = hyperparams.model_copy(update={"n_timesteps": leave_one_out_steps})
        for family in families:
            held_out_of = family if family in base.randomization.scenarios else None
            name = f"without-{family}" if held_out_of else "all"
            run_dir = out_dir / "models" / name
            if not (run_dir / "model_meta.json").is_file():
                say(f"training {name} ({leave_one_out_steps:,} steps)")
                hp = without_family(base, family) if held_out_of else base
                train(cfg, hp, train_seed, run_dir, progress=False, argv=argv)
            models[family] = (str(run_dir), True)
    else:
        path = Path(DEFAULT_MODEL_DIR) if model == "ppo" else Path(model)
        seen = trained_families(path) or ()
        for family in families:
            models[family] = (model, family not in seen)

    frames = []
    for family in families:
        model_name, held_out = models[family]
        say(f"evaluating {family}")
        df = run_compare(
            [*RIVALS, model_name, BOUND],
            [family],
            seeds,
            out_dir / "families" / family,
            cfg,
            workers=workers,
            argv=argv,
            trace_offsets_h=offsets,
            trace_compression="auto",
        )
        df = df.assign(family=family, model=model_name, held_out="yes" if held_out else "no")
        df.loc[df.policy == model_name, "policy"] = LEARNED
        frames.append(df)
    results = pd.concat(frames, ignore_index=True)
    results.to_csv(out_dir / "results.csv", index=False)
    summary = summarise(results)
    summary["held_out"] = [
        results[(results.scenario == r.scenario)].held_out.iloc[0] if r.policy == LEARNED else ""
        for r in summary.itertuples()
    ]
    verdict = verdicts(summary, attainment)
    verdict.to_csv(out_dir / "verdicts.csv", index=False)
    (out_dir / "summary.md").write_text(
        summary_markdown(summary, verdict, seeds, models, leave_one_out_steps), encoding="utf-8"
    )
    pareto_plot(results[results.policy != BOUND], results[results.policy == BOUND], out_dir / "pareto.png")
    write_run_metadata(
        out_dir / "run.yaml",
        cfg,
        argv,
        families=families,
        seeds=seeds,
        models={f: m for f, (m, _) in models.items()},
        leave_one_out_steps=leave_one_out_steps,
        train_seed=train_seed,
        attainment=attainment,
    )
    return results, verdict


def summary_markdown(
    summary: pd.DataFrame,
    verdict: pd.DataFrame,
    seeds: list[int],
    models: dict[str, tuple[str, bool]],
    leave_one_out_steps: int | None,
) -> str:
    how = (
        f"leave-one-family-out: a PPO trained for {leave_one_out_steps:,} steps without each family"
        if leave_one_out_steps is not None
        else f"one model for every family: {sorted({m for m, _ in models.values()})}"
    )
    lines = [
        "# Generalisation by load family",
        "",
        f"{how}. Means over {len(seeds)} seed(s) with 95% intervals (Student's t, "
        f"{t95(len(seeds) - 1):.3g} x the standard error). Goal: attainment at least the best calibrated "
        f"rule's (within the intervals), cost at most {COST_VS_RULE_GOAL}x that rule's and "
        f"{COST_VS_BOUND_GOAL}x the bound's. `held out: no` marks a family the model was trained on.",
        "",
        "## Verdicts",
        "",
        "| scenario | held out | best rule | rule SLI | learned SLI | SLI ok | cost / rule | cost / bound | goal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in verdict.itertuples():
        lines.append(
            f"| {r.scenario} | {r.held_out} | {r.best_rule} | {r.rule_attainment:.1%} | {r.learned_attainment:.1%} "
            f"| {'yes' if r.attainment_ok else 'no'} | {r.learned_vs_rule_cost:.2f} | {r.learned_vs_bound_cost:.2f} "
            f"| {'met' if r.goal_met else 'not met'} |"
        )
    met = int(verdict.goal_met.sum()) if len(verdict) else 0
    lines += ["", f"Goal met on {met} of {len(verdict)} scenario(s).", ""]
    for scenario, g in summary.groupby("scenario", sort=False):
        lines += [
            f"## {scenario}",
            "",
            "| policy | SLI attainment | slot-hours | vs bound |",
            "|---|---|---|---|",
        ]
        for r in g.itertuples():
            lines.append(
                f"| {r.policy} | {fmt_ci(r.sli_attainment, r.sli_attainment_ci95, True)} "
                f"| {fmt_ci(r.cost_slot_hours, r.cost_slot_hours_ci95, False)} "
                f"| {fmt_ci(r.cost_vs_bound, r.cost_vs_bound_ci95, False)} |"
            )
        lines.append("")
    return "\n".join(lines)
