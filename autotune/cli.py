"""The ``autotune`` command line.

Errors the user can fix (bad config, bad trace, unknown scenario or policy) print one line naming
what was wrong and where, and exit with status 2; nothing prints a traceback unless
``AUTOTUNE_DEBUG=1`` is set.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="autotune",
    help="Reinforcement-learning autotuning control plane for a task-execution cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
if not console.is_terminal:  # piped or captured: do not squeeze tables into 80 columns
    console = Console(width=200)
err_console = Console(stderr=True, width=200)


class UserError(Exception):
    """An error whose message is the whole story."""


def _parse_sets(values: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set control.interval_s=5")
        out[key.strip()] = yaml.safe_load(raw)
    return out


def _load(config: Path | None, overrides: dict[str, Any]):
    from autotune.config import load_config, with_overrides

    cfg = load_config(config)
    return with_overrides(cfg, overrides, source="command line") if overrides else cfg


@app.command()
def simulate(
    scenario: Annotated[str, typer.Option(help="named scenario or trace:PATH.csv")] = "diurnal",
    policy: Annotated[str, typer.Option(help="policy: ppo (the shipped model), a baseline, a model path, "
                                        "module:callable; several comma-separated")] = "ppo",
    seed: Annotated[int, typer.Option(help="seed for arrivals and all randomness")] = 0,
    config: Annotated[Path | None, typer.Option(help="YAML config file")] = None,
    interval_s: Annotated[float | None, typer.Option(help="decision interval, seconds")] = None,
    peak_rate: Annotated[float | None, typer.Option(help="peak arrival rate, tasks/s")] = None,
    duration_s: Annotated[float | None, typer.Option(help="simulated seconds")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="config override KEY=VALUE (dotted path)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    out: Annotated[Path | None, typer.Option(help="write per-interval records to this CSV")] = None,
) -> None:
    """Run policies on a simulated scenario and report SLI attainment, latency and cost."""
    from autotune.rollout import IntervalRecord, run_policy
    from control.policies import make_policy
    from envs.scaling_env import ConcurrencyScalingEnv

    overrides = _parse_sets(set_)
    overrides["simulation.scenario"] = scenario
    for key, value in (("control.interval_s", interval_s), ("simulation.peak_rate_per_s", peak_rate),
                       ("simulation.duration_s", duration_s)):
        if value is not None:
            overrides[key] = value
    cfg = _load(config, overrides)
    names = [p.strip() for p in policy.split(",") if p.strip()]
    if not names:
        raise UserError("--policy: give at least one policy name")
    policies = [make_policy(n, cfg, seed) for n in names]  # all validated before any run
    env = ConcurrencyScalingEnv(cfg)
    results = [run_policy(env, p, seed) for p in policies]

    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["policy", *[f.name for f in fields(IntervalRecord)]])
            for res in results:
                for rec in res.intervals:
                    writer.writerow([res.summary.policy, *asdict(rec).values()])
        from autotune.provenance import write_run_metadata

        meta_path = write_run_metadata(out.with_name(out.name + ".run.yaml"), cfg, policies=names, seed=seed,
                                       summaries=[s.as_dict() for s in (r.summary for r in results)])
    summaries = [r.summary for r in results]
    if as_json:
        keys = ("sli_attainment", "success_rate", "mean_processing_time_s", "p90_processing_time_s",
                "p99_processing_time_s", "mean_backlog", "max_backlog", "cost_slot_hours")
        objs = [{"policy": s.policy, "scenario": s.scenario, "seed": s.seed,
                 **{k: getattr(s, k) for k in keys},
                 "sli_attainment_by_sli": {"success_rate": s.success_rate_attainment,
                                           "processing_time": s.processing_time_attainment,
                                           "backlog": s.backlog_attainment},
                 "scaling_changes": s.scaling_changes, "guard_overrides": s.guard_overrides}
                for s in summaries]
        print(json.dumps(objs[0] if len(objs) == 1 else objs, indent=2))
        return
    table = Table(title=f"scenario {scenario}, seed {seed}, interval {cfg.control.interval_s:g} s, "
                        f"{summaries[0].intervals} intervals")
    for col in ("policy", "all SLIs", "success", "time", "backlog", "success rate", "mean s", "P90 s",
                "P99 s", "mean backlog", "max backlog", "slot-hours", "changes", "overrides"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for s in summaries:
        table.add_row(
            s.policy, f"{s.sli_attainment:.1%}", f"{s.success_rate_attainment:.1%}",
            f"{s.processing_time_attainment:.1%}", f"{s.backlog_attainment:.1%}", f"{s.success_rate:.4%}",
            f"{s.mean_processing_time_s:.2f}", f"{s.p90_processing_time_s:.2f}", f"{s.p99_processing_time_s:.2f}",
            f"{s.mean_backlog:.1f}", str(s.max_backlog), f"{s.cost_slot_hours:.1f}", str(s.scaling_changes),
            str(s.guard_overrides),
        )
    console.print(table)
    console.print("SLI columns: share of intervals meeting each SLI (success rate >= "
                  f"{cfg.slis.success_rate_min:.1%}, mean processing time <= {cfg.slis.mean_processing_time_s_max:g} s, "
                  f"backlog <= {cfg.slis.backlog_max:g}).")
    if out is not None:
        console.print(f"per-interval records: {out} (config, command and git revision: {meta_path})")


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, disable=not err_console.is_terminal)


@app.command()
def train(
    timesteps: Annotated[int | None, typer.Option(help="total environment steps (default: hyperparams file)")] = None,
    seed: Annotated[int, typer.Option(help="seed for PPO, the environments and the randomisation")] = 0,
    out: Annotated[Path | None, typer.Option(help="run folder (default models/ppo_<time>_s<seed>)")] = None,
    hyperparams: Annotated[Path | None, typer.Option(help="hyperparameter YAML (default training/hyperparams/ppo.yml)")] = None,
    hp: Annotated[list[str] | None, typer.Option("--hp", help="hyperparameter override KEY=VALUE")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config file")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="config override KEY=VALUE (dotted path)")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Train a PPO policy on domain-randomised simulated load."""
    import time

    from training.train import HYPERPARAMS_FILE, load_hyperparams
    from training.train import train as run_training

    cfg = _load(config, _parse_sets(set_))
    overrides = _parse_sets(hp)
    if timesteps is not None:
        overrides["n_timesteps"] = timesteps
    params = load_hyperparams(hyperparams or HYPERPARAMS_FILE, overrides=overrides)
    run_dir = out or Path("models") / f"ppo_{time.strftime('%Y%m%d-%H%M%S')}_s{seed}"
    console.print(f"training PPO for {params['n_timesteps']:,} steps, seed {seed}, into {run_dir}")
    res = run_training(cfg, params, seed, run_dir, progress=progress and console.is_terminal,
                       argv=["autotune", *sys.argv[1:]])
    console.print(f"done: {res.total_timesteps:,} steps in {res.wall_time_s:.0f} s ({res.steps_per_s:,.0f} steps/s); "
                  f"model {res.model_path}, best {res.best_model_path}")


@app.command()
def compare(
    policies: Annotated[str, typer.Option(help="comma-separated: baselines, ppo, model paths, module:callable")]
    = "ppo,hpa,static,threshold,oracle",
    scenarios: Annotated[str, typer.Option(help="comma-separated scenario names or trace:PATH.csv")]
    = "flash-sale,step,diurnal,bursty,worldcup,worldcup-holdout",
    seeds: Annotated[int, typer.Option(help="seeds 0..N-1 per scenario")] = 5,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/compare"),
    workers: Annotated[int | None, typer.Option(help="processes (default: all cores)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config file")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="config override KEY=VALUE (dotted path)")] = None,
) -> None:
    """Compare policies on the same seeded scenarios: results.csv, summary.md, plots."""
    from training.compare import run_compare

    if seeds < 1:
        raise UserError("--seeds must be at least 1")
    cfg = _load(config, _parse_sets(set_))
    names = [p.strip() for p in policies.split(",") if p.strip()]
    scen = [s.strip() for s in scenarios.split(",") if s.strip()]
    if not names or not scen:
        raise UserError("--policies and --scenarios need at least one entry each")
    with _progress() as bar:
        task = bar.add_task("compare", total=None)
        run_compare(names, scen, list(range(seeds)), out, cfg, workers=workers,
                    on_progress=lambda done, total: bar.update(task, completed=done, total=total),
                    argv=["autotune", *sys.argv[1:]])
    console.print((out / "summary.md").read_text(encoding="utf-8"))
    console.print(f"results: {out / 'results.csv'}; plots: {out / 'plots'}")


@app.command()
def calibrate(
    scenarios: Annotated[str, typer.Option(help="training scenarios to calibrate on")]
    = "flash-sale,step,diurnal,bursty,worldcup",
    seeds: Annotated[int, typer.Option(help="seeds 0..N-1 per scenario")] = 3,
    attainment: Annotated[float, typer.Option(help="required mean SLI attainment on every scenario")] = 0.98,
    out: Annotated[Path | None, typer.Option(help="where to write the calibration")] = None,
    workers: Annotated[int | None, typer.Option(help="processes (default: all cores)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config file")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="config override KEY=VALUE (dotted path)")] = None,
) -> None:
    """Grid-search HPA (metric, target) and the static level; keep the cheapest meeting the SLIs."""
    from models.calibration import CALIBRATION_FILE
    from training.calibrate import run_calibration

    if not 0 < attainment <= 1:
        raise UserError(f"--attainment must be in (0, 1], got {attainment}")
    cfg = _load(config, _parse_sets(set_))
    scen = [s.strip() for s in scenarios.split(",") if s.strip()]
    with _progress() as bar:
        task = bar.add_task("calibrate", total=None)
        result = run_calibration(cfg, scen, list(range(seeds)), attainment, out or CALIBRATION_FILE,
                                 workers=workers, argv=["autotune", *sys.argv[1:]],
                                 on_progress=lambda d, t: bar.update(task, completed=d, total=t))
    console.print(yaml.safe_dump({k: result[k] for k in ("hpa", "static")}, sort_keys=False))
    console.print(f"written to {out or CALIBRATION_FILE}")


@app.command()
def scenarios() -> None:
    """List the named scenarios."""
    from envs.scenarios import NAMED_SHAPES, PACKAGED_TRACES, STOCHASTIC_SHAPES

    for name, fn in {**NAMED_SHAPES, **STOCHASTIC_SHAPES}.items():
        console.print(f"[bold]{name}[/bold]: {(fn.__doc__ or '').strip().splitlines()[0] if fn.__doc__ else ''}")
    for name, trace in PACKAGED_TRACES.items():
        console.print(f"[bold]{name}[/bold]: replay of the packaged trace {trace}.csv")
    console.print("[bold]trace:PATH.csv[/bold]: replay of a CSV with header timestamp,count")


@app.command()
def policies() -> None:
    """List the baseline policies."""
    from control import policies as pol

    console.print(pol.__doc__ or "")


@app.command("check-trace")
def check_trace(path: Path) -> None:
    """Validate a trace CSV (timestamp,count) and print its shape."""
    from envs.trace import load_trace

    tr = load_trace(path)
    c = tr.counts
    console.print(f"{path}: {len(c)} bins of {tr.bin_s:g} s, count min {c.min():g}, mean {c.mean():.1f}, "
                  f"max {c.max():g}")


def _known_errors() -> tuple[type[BaseException], ...]:
    from autotune.config import ConfigError
    from control.policies import UnknownPolicyError
    from envs.scenarios import UnknownScenarioError
    from envs.trace import TraceError
    from models import ModelError
    from training.calibrate import CalibrationError
    from training.train import HyperparamError

    return (UserError, ConfigError, TraceError, UnknownScenarioError, UnknownPolicyError, ModelError,
            HyperparamError, CalibrationError)


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    try:
        app(args=argv, standalone_mode=False)
    except SystemExit as exc:  # typer/click exits for --help
        return int(exc.code or 0)
    except Exception as exc:  # noqa: BLE001 - the CLI must never show a bare traceback
        import click

        if isinstance(exc, click.exceptions.Exit):
            return exc.exit_code
        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            err_console.print("aborted")
            return 1
        if os.environ.get("AUTOTUNE_DEBUG"):
            raise
        if isinstance(exc, _known_errors()):
            for line in str(exc).splitlines() or [type(exc).__name__]:
                err_console.print(f"error: {line}", markup=False, highlight=False, soft_wrap=True)
            return 2
        err_console.print(f"internal error: {type(exc).__name__}: {exc} (set AUTOTUNE_DEBUG=1 for a traceback)",
                          markup=False, highlight=False)
        return 1
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
