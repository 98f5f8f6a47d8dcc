"""The ``autotune`` command line.

Errors the user can fix (bad config, bad trace, unknown scenario or policy) print one line naming
what was wrong and where, and exit with status 2; nothing prints a traceback unless
``AUTOTUNE_DEBUG=1`` is set.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
import yaml
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from core.config import TraceGaps

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


class RunEndedEarly(Exception):
    """The live run ended before its replay did (an outage longer than its budget); the report was
    printed and written. Exit status 3."""


def _parse_sets(values: list[str] | None, flag: str = "--set") -> dict[str, Any]:
    """``KEY=VALUE`` overrides; each VALUE is read as YAML (safe: no ``!!python/...`` tags)."""
    out: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} {item!r}: expected KEY=VALUE, e.g. --set control.interval_s=5")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            why = " ".join(str(getattr(err, "problem", None) or err).split())
            raise UserError(f"{flag} {item!r}: the value is not valid YAML ({why})") from None
    return out


def _check_seed(seed: int, flag: str = "--seed") -> None:
    from core.config import MAX_SEED

    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"{flag} must be in [0, {MAX_SEED}] (32 bits), got {seed}")


def _check_seeds(seeds: int) -> None:
    from core.config import MAX_SEEDS

    if not 1 <= seeds <= MAX_SEEDS:
        raise UserError(f"--seeds must be at least 1 and at most {MAX_SEEDS:,}, got {seeds}")


def _check_workers(workers: int | None) -> None:
    from core.config import MAX_WORKERS_PER_CORE

    cores = os.cpu_count() or 1
    limit = MAX_WORKERS_PER_CORE * cores
    if workers is not None and not 1 <= workers <= limit:
        raise UserError(
            f"--workers must be between 1 and {limit} ({MAX_WORKERS_PER_CORE} per core, {cores} cores "
            f"here), got {workers}"
        )


def _check_out(out: Path | None, kind: str) -> None:
    """Refuse an ``--out`` that cannot be written as a ``kind`` ("file" or "folder") before any work."""
    if out is None:
        return
    if kind == "file" and out.is_dir():
        raise UserError(f"--out {out}: is a directory; give the path of a file to write")
    if kind == "folder" and out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder; give a folder to write into")


def _database_url(url: str, source: str):
    """``url`` parsed, or a UserError naming ``source`` (the flag or variable it came from)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except ArgumentError:
        raise UserError(
            f"{source} {url!r}: not a database URL; use sqlite:///PATH.db or "
            "mysql+pymysql://user:password@host:3306/database"
        ) from None


def _existing_database(database_url: str | None) -> str:
    """The database of a command that reads a run's (``decisions``, ``control``, ``submit``):
    ``--database-url``, else ``AUTOTUNE_DATABASE_URL``, else the newest run folder's. A SQLite file
    that does not exist is refused, not created empty: no tuner or cluster can be behind it."""
    env = os.environ.get("AUTOTUNE_DATABASE_URL")
    if database_url:
        url, source = database_url, "--database-url"
    elif env:
        url, source = env, "AUTOTUNE_DATABASE_URL"
    else:
        return _newest_run_database()
    parsed = _database_url(url, source)
    if parsed.get_backend_name() == "sqlite" and parsed.query.get("uri") != "true":
        path = parsed.database
        if not path or path == ":memory:":
            raise UserError(
                f"{source} {url!r}: an in-memory SQLite database holds no run; give the run's file, "
                "e.g. sqlite:///runs/live-.../autotune.db"
            )
        if Path(path).is_dir():
            raise UserError(f"{source} {url!r}: {path} is a directory, not a SQLite database file")
        if not Path(path).exists():
            raise UserError(
                f"{source} {url!r}: {path} does not exist (this command reads a run's database; it does not create one)"
            )
    return url


def _load(config: Path | None, overrides: dict[str, Any]):
    from core.config import load_config, with_overrides

    cfg = load_config(config)
    return with_overrides(cfg, overrides, source="command line") if overrides else cfg


@app.command()
def simulate(
    scenario: Annotated[str, typer.Option(help="named scenario or trace:PATH.csv")] = "diurnal",
    policy: Annotated[
        str,
        typer.Option(
            help="policy: ppo (the shipped model), a baseline, a model path, module:callable; several comma-separated"
        ),
    ] = "ppo",
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
    from envs.bound import NAME as BOUND
    from envs.bound import compute_bound
    from envs.rollout import IntervalRecord, run_policy
    from envs.scaling_env import ConcurrencyScalingEnv
    from models.registry import make_policy

    _check_seed(seed)
    _check_out(out, "file")
    overrides = _parse_sets(set_)
    overrides["simulation.scenario"] = scenario
    for key, value in (
        ("control.interval_s", interval_s),
        ("simulation.peak_rate_per_s", peak_rate),
        ("simulation.duration_s", duration_s),
    ):
        if value is not None:
            overrides[key] = value
    cfg = _load(config, overrides)
    names = [p.strip() for p in policy.split(",") if p.strip()]
    if not names:
        raise UserError("--policy: give at least one policy name")
    policies = [None if n == BOUND else make_policy(n, cfg, seed) for n in names]  # validated before any run
    env = ConcurrencyScalingEnv(cfg)
    results = [compute_bound(cfg, seed).rollout if p is None else run_policy(env, p, seed) for p in policies]

    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["policy", *[f.name for f in fields(IntervalRecord)]])
            for res in results:
                for rec in res.intervals:
                    writer.writerow([res.summary.policy, *asdict(rec).values()])
        from core.provenance import write_run_metadata

        meta_path = write_run_metadata(
            out.with_name(out.name + ".run.yaml"),
            cfg,
            policies=names,
            seed=seed,
            summaries=[s.as_dict() for s in (r.summary for r in results)],
        )
    summaries = [r.summary for r in results]
    if as_json:
        keys = (
            "sli_attainment",
            "success_rate",
            "mean_processing_time_s",
            "p90_processing_time_s",
            "p99_processing_time_s",
            "mean_backlog",
            "max_backlog",
            "cost_slot_hours",
        )
        objs = [
            {
                "policy": s.policy,
                "scenario": s.scenario,
                "seed": s.seed,
                **{k: getattr(s, k) for k in keys},
                "sli_attainment_by_sli": {
                    "success_rate": s.success_rate_attainment,
                    "processing_time": s.processing_time_attainment,
                    "backlog": s.backlog_attainment,
                },
                "scaling_changes": s.scaling_changes,
                "guard_overrides": s.guard_overrides,
            }
            for s in summaries
        ]
        print(json.dumps(objs[0] if len(objs) == 1 else objs, indent=2))
        return
    table = Table(
        title=f"scenario {scenario}, seed {seed}, interval {cfg.control.interval_s:g} s, "
        f"{summaries[0].intervals} intervals"
    )
    for col in (
        "policy",
        "all SLIs",
        "success",
        "time",
        "backlog",
        "success rate",
        "mean s",
        "P90 s",
        "P99 s",
        "mean backlog",
        "max backlog",
        "slot-hours",
        "changes",
        "overrides",
    ):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for s in summaries:
        table.add_row(
            s.policy,
            f"{s.sli_attainment:.1%}",
            f"{s.success_rate_attainment:.1%}",
            f"{s.processing_time_attainment:.1%}",
            f"{s.backlog_attainment:.1%}",
            f"{s.success_rate:.4%}",
            f"{s.mean_processing_time_s:.2f}",
            f"{s.p90_processing_time_s:.2f}",
            f"{s.p99_processing_time_s:.2f}",
            f"{s.mean_backlog:.1f}",
            str(s.max_backlog),
            f"{s.cost_slot_hours:.1f}",
            str(s.scaling_changes),
            str(s.guard_overrides),
        )
    console.print(table)
    console.print(
        "SLI columns: share of intervals meeting each SLI (success rate >= "
        f"{cfg.slis.success_rate_min:.1%}, mean processing time <= {cfg.slis.mean_processing_time_s_max:g} s, "
        f"backlog <= {cfg.slis.backlog_max:g})."
    )
    if out is not None:
        console.print(f"per-interval records: {out} (config, command and git revision: {meta_path})")


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=not err_console.is_terminal,
    )


@app.command()
def train(
    timesteps: Annotated[int | None, typer.Option(help="total environment steps (default: hyperparams file)")] = None,
    seed: Annotated[int, typer.Option(help="seed for PPO, the environments and the randomisation")] = 0,
    out: Annotated[Path | None, typer.Option(help="run folder (default models/ppo_<time>_s<seed>)")] = None,
    hyperparams: Annotated[
        Path | None, typer.Option(help="hyperparameter YAML (default training/hyperparams/ppo.yml)")
    ] = None,
    hp: Annotated[list[str] | None, typer.Option("--hp", help="hyperparameter override KEY=VALUE")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config file")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="config override KEY=VALUE (dotted path)")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Train a PPO policy on domain-randomised simulated load."""
    import time

    from core.observation import ENV_ID
    from training.ppo_hyperparams import HYPERPARAMS_FILE, load_hyperparams
    from training.train import train as run_training

    _check_seed(seed)
    _check_out(out, "folder")
    if timesteps is not None and timesteps < 1:
        raise UserError(f"--timesteps must be at least 1, got {timesteps}")
    cfg = _load(config, _parse_sets(set_))
    overrides = _parse_sets(hp, "--hp")
    if timesteps is not None:
        overrides["n_timesteps"] = timesteps
    params = load_hyperparams(hyperparams or HYPERPARAMS_FILE, ENV_ID, overrides)
    run_dir = out or Path("models") / f"ppo_{time.strftime('%Y%m%d-%H%M%S')}_s{seed}"
    console.print(f"training PPO for {params.n_timesteps:,} steps, seed {seed}, into {run_dir}")
    res = run_training(
        cfg, params, seed, run_dir, progress=progress and console.is_terminal, argv=["autotune", *sys.argv[1:]]
    )
    console.print(
        f"done: {res.total_timesteps:,} steps in {res.wall_time_s:.0f} s ({res.steps_per_s:,.0f} steps/s); "
        f"model {res.model_path}, best {res.best_model_path}"
    )


@app.command()
def generalization(
    policy: Annotated[str, typer.Option(help="the learned policy: ppo (the shipped model) or a model path")] = "ppo",
    families: Annotated[
        str, typer.Option(help="comma-separated scenarios (default: every training family and the held-back day)")
    ] = "",
    seeds: Annotated[int, typer.Option(help="seeds 0..N-1 per family")] = 5,
    leave_one_out_steps: Annotated[
        int | None,
        typer.Option(help="train a PPO of this many steps without each family and judge it there (leave-one-out)"),
    ] = None,
    hyperparams: Annotated[
        Path | None, typer.Option(help="hyperparameter YAML for leave-one-out training (default ppo.yml)")
    ] = None,
    hp: Annotated[list[str] | None, typer.Option("--hp", help="hyperparameter override KEY=VALUE")] = None,
    train_seed: Annotated[int, typer.Option(help="seed of the leave-one-out trainings")] = 0,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/generalization"),
    workers: Annotated[int | None, typer.Option(help="processes (default: all cores)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config file")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="config override KEY=VALUE (dotted path)")] = None,
) -> None:
    """Judge the learned policy family by family against every calibrated rule and the bound."""
    from core.observation import ENV_ID
    from training.generalization import FAMILIES, run_generalization
    from training.ppo_hyperparams import HYPERPARAMS_FILE, load_hyperparams

    _check_seeds(seeds)
    _check_workers(workers)
    _check_out(out, "folder")
    _check_seed(train_seed)
    cfg = _load(config, _parse_sets(set_))
    names = [f.strip() for f in families.split(",") if f.strip()] or list(FAMILIES)
    params = None
    if leave_one_out_steps is not None:
        if leave_one_out_steps < 1:
            raise UserError(f"--leave-one-out-steps must be at least 1, got {leave_one_out_steps}")
        params = load_hyperparams(hyperparams or HYPERPARAMS_FILE, ENV_ID, _parse_sets(hp, "--hp"))
    with _progress() as bar:
        task = bar.add_task("generalization", total=None)
        run_generalization(
            names,
            list(range(seeds)),
            out,
            cfg,
            model=policy,
            leave_one_out_steps=leave_one_out_steps,
            hyperparams=params,
            train_seed=train_seed,
            workers=workers,
            on_progress=lambda msg: bar.update(task, description=msg),
            argv=["autotune", *sys.argv[1:]],
        )
    text = (out / "summary.md").read_text(encoding="utf-8")
    console.print(text[: text.index("\n## ", text.index("## Verdicts") + 1)], markup=False)
    console.print(f"results: {out / 'results.csv'}, {out / 'summary.md'}; plot: {out / 'pareto.png'}")


@app.command()
def compare(
    policies: Annotated[
        str, typer.Option(help="comma-separated: baselines, ppo, model paths, module:callable")
    ] = "ppo,hpa,kpa,keda,predictive,static,threshold,oracle,bound",
    scenarios: Annotated[
        str, typer.Option(help="comma-separated scenario names or trace:PATH.csv")
    ] = "flash-sale,step,diurnal,bursty,worldcup,worldcup-holdout",
    seeds: Annotated[int, typer.Option(help="seeds 0..N-1 per scenario")] = 5,
    trace_offsets_h: Annotated[
        str, typer.Option(help="trace scenarios: hours into the trace to start from, comma-separated; '' = configured")
    ] = "0,6,12,18",
    trace_compression: Annotated[
        str,
        typer.Option(
            help="trace scenarios: trace seconds per simulated second; auto = one trace bin per two "
            "decision intervals, at least real time; config = as configured"
        ),
    ] = "auto",
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/compare"),
    workers: Annotated[int | None, typer.Option(help="processes (default: all cores)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config file")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="config override KEY=VALUE (dotted path)")] = None,
) -> None:
    """Compare policies on the same seeded scenarios: results.csv, summary.md, plots."""
    from training.compare import run_compare

    _check_seeds(seeds)
    _check_workers(workers)
    _check_out(out, "folder")
    cfg = _load(config, _parse_sets(set_))
    names = [p.strip() for p in policies.split(",") if p.strip()]
    scen = [s.strip() for s in scenarios.split(",") if s.strip()]
    if not names or not scen:
        raise UserError("--policies and --scenarios need at least one entry each")
    offsets = _parse_offsets(trace_offsets_h)
    compression: float | str | None = None if trace_compression == "config" else trace_compression
    if compression not in (None, "auto"):
        try:
            value = float(trace_compression)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"--trace-compression: a number > 0, auto or config, got {trace_compression!r}")
        compression = value
    with _progress() as bar:
        task = bar.add_task("compare", total=None)
        run_compare(
            names,
            scen,
            list(range(seeds)),
            out,
            cfg,
            trace_offsets_h=offsets,
            trace_compression=compression,
            workers=workers,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
            argv=["autotune", *sys.argv[1:]],
        )
    console.print((out / "summary.md").read_text(encoding="utf-8"))
    console.print(f"results: {out / 'results.csv'}; plots: {out / 'plots'}")


def _parse_offsets(text: str) -> list[float] | None:
    if not text.strip():
        return None
    out = []
    for part in text.split(","):
        try:
            h = float(part)
        except ValueError:
            h = math.nan
        if not (math.isfinite(h) and h >= 0):
            raise UserError(f"--trace-offsets-h: hours >= 0, comma-separated; {part.strip()!r} is not")
        out.append(h)
    return out


@app.command()
def calibrate(
    scenarios: Annotated[
        str, typer.Option(help="training scenarios to calibrate on")
    ] = "flash-sale,step,diurnal,bursty,worldcup",
    seeds: Annotated[int, typer.Option(help="seeds 0..N-1 per scenario")] = 3,
    attainment: Annotated[float, typer.Option(help="required mean SLI attainment on every scenario")] = 0.98,
    trials: Annotated[
        int | None, typer.Option(help="budget: distinct settings tried per rule, the same for every rule")
    ] = None,
    search_seed: Annotated[int, typer.Option(help="seed of the search (TPE sampler)")] = 0,
    out: Annotated[Path | None, typer.Option(help="where to write the calibration")] = None,
    workers: Annotated[int | None, typer.Option(help="processes (default: all cores)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config file")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="config override KEY=VALUE (dotted path)")] = None,
) -> None:
    """Tune hpa, kpa, keda, predictive and static alike (TPE, the same budget each); keep the cheapest meeting the SLIs."""
    from models.calibration import CALIBRATION_FILE
    from training.calibrate import DEFAULT_TRIALS, calibration_table, run_calibration

    if not 0 < attainment <= 1:
        raise UserError(f"--attainment must be in (0, 1], got {attainment}")
    trials = DEFAULT_TRIALS if trials is None else trials
    if trials < 1:
        raise UserError(f"--trials must be at least 1, got {trials}")
    _check_seed(search_seed, "--search-seed")
    _check_seeds(seeds)
    _check_workers(workers)
    _check_out(out, "file")
    cfg = _load(config, _parse_sets(set_))
    scen = [s.strip() for s in scenarios.split(",") if s.strip()]
    if not scen:
        raise UserError("--scenarios: give at least one scenario")
    with _progress() as bar:
        task = bar.add_task("calibrate", total=None)
        result = run_calibration(
            cfg,
            scen,
            list(range(seeds)),
            attainment,
            out or CALIBRATION_FILE,
            trials=trials,
            search_seed=search_seed,
            workers=workers,
            argv=["autotune", *sys.argv[1:]],
            on_progress=lambda d, t: bar.update(task, completed=d, total=t),
        )
    print(calibration_table(result))
    print(f"written to {out or CALIBRATION_FILE}")


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
def policies(
    config: Annotated[Path | None, typer.Option(help="YAML config file")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="config override KEY=VALUE (dotted path)")] = None,
) -> None:
    """List the baseline policies, the bound, the knobs calibration searches and the settings it chose."""
    from control import policies as pol
    from envs import bound
    from models.calibration import CALIBRATION_FILE, load_calibration
    from training.calibrate import calibration_table, search_space

    cfg = _load(config, _parse_sets(set_))
    console.print(pol.__doc__ or "", markup=False)
    print(f"Offline yardstick (simulate and compare only):\n\n- ``{bound.NAME}``: {bound.SUMMARY}\n")
    print("Knobs searched by `autotune calibrate` (the others keep the anchor's defaults):")
    for rule, knobs in search_space(cfg).items():
        print(f"- {rule}: " + "; ".join(k.describe() for k in knobs))
    calibration = load_calibration(cfg)
    if calibration is None:
        print(f"\nNo calibration for this cluster's bounds in {CALIBRATION_FILE}: the plain names run the defaults.")
        return
    criterion = calibration.get("criterion", {})
    print(
        f"\nCalibrated ({CALIBRATION_FILE}; attainment >= {criterion.get('attainment')} on every one of "
        f"{', '.join(criterion.get('scenarios', []))} x seeds {criterion.get('seeds')}):"
    )
    print(calibration_table(calibration))


# core.config.TraceGaps, spelled out so that the command line starts without importing pydantic
# (tests/test_trace.py checks the two agree)
TRACE_GAP_CHOICES = ("reject", "fill-zero", "interpolate")


@app.command("check-trace")
def check_trace(
    path: Path,
    gaps: Annotated[
        str,
        typer.Option(help="missing bins: reject (the file), fill-zero, or interpolate; as simulation.trace_gaps"),
    ] = "reject",
) -> None:
    """Validate a trace CSV (timestamp,count) and print its shape, and how many bins were filled."""
    from envs.trace import load_trace

    if gaps not in TRACE_GAP_CHOICES:
        raise UserError(f"--gaps {gaps!r}: choose one of {', '.join(TRACE_GAP_CHOICES)}")
    tr = load_trace(path, gaps=cast("TraceGaps", gaps))
    c = tr.counts
    filled = f", {tr.filled_bins} bins filled ({gaps})" if gaps != "reject" else ""
    console.print(
        f"{path}: {len(c)} bins of {tr.bin_s:g} s, count min {c.min():g}, mean {c.mean():.1f}, max {c.max():g}{filled}"
    )


RUN_HELP = "flags win over AUTOTUNE_* environment variables; unset means the embedded default"


@app.command()
def run(
    policy: Annotated[
        str,
        typer.Option(
            help="who tunes: ppo (the shipped model), a baseline (hpa, static, "
            "threshold, ...), a model path or module:callable"
        ),
    ] = "ppo",
    mode: Annotated[
        str,
        typer.Option(
            help="active: the policy's decisions are applied; shadow: recorded, the "
            "calibrated HPA's applied; off: recorded, nothing changes"
        ),
    ] = "active",
    scenario: Annotated[
        str, typer.Option(help="load profile replayed: a named scenario or trace:PATH.csv")
    ] = "worldcup",
    duration_s: Annotated[float, typer.Option(help="wall seconds the profile's day is compressed into")] = 300.0,
    peak_rate: Annotated[float, typer.Option(help="arrival rate at the profile's peak, tasks/s")] = 60.0,
    interval_s: Annotated[float, typer.Option(help="control interval, seconds")] = 15.0,
    seed: Annotated[int, typer.Option(help="seed of the replayed arrivals and the executors")] = 0,
    time_scale: Annotated[float, typer.Option(help="service times x this (0.1: ten times faster tasks)")] = 1.0,
    slots_per_actor: Annotated[int, typer.Option(help="task slots per executor actor")] = 25,
    config: Annotated[Path | None, typer.Option(help="YAML config file")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="config override KEY=VALUE (dotted path)")] = None,
    database_url: Annotated[
        str | None, typer.Option(help=f"tasks/attempts/audit/decisions database; {RUN_HELP}")
    ] = None,
    redis_url: Annotated[str | None, typer.Option(help=f"live queue (redis://host:port/db); {RUN_HELP}")] = None,
    prometheus_url: Annotated[
        str | None, typer.Option(help=f"read metrics back from this Prometheus; {RUN_HELP}")
    ] = None,
    ray_address: Annotated[str | None, typer.Option(help=f"existing Ray cluster; {RUN_HELP}")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="serve /metrics on this port for Prometheus")] = None,
    metrics_host: Annotated[
        str | None,
        typer.Option(help="address /metrics listens on (default 127.0.0.1; 0.0.0.0 for a Prometheus on another host)"),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="run folder (default runs/live-<time>-<policy>)")] = None,
    user: Annotated[str, typer.Option(help="who starts the run (recorded with its decisions)")] = "",
    operators_file: Annotated[
        Path | None,
        typer.Option(
            help="who may steer the run (`autotune control`): users, "
            "roles, keys; default AUTOTUNE_OPERATORS_FILE, else one "
            "made in the run folder for --user"
        ),
    ] = None,
    dashboard: Annotated[bool, typer.Option(help="live terminal dashboard (off when not a terminal)")] = True,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="continue the run in this folder whose driver died: same run "
            "id, store and queue, its options; every unfinished task is picked "
            "up and the replay goes on where it stopped"
        ),
    ] = None,
) -> None:
    """Replay a load profile against live Ray executors while a policy tunes their concurrency.

    With nothing configured: a local Ray, an embedded SQLite store and queue, the in-process exporter;
    a busy World Cup 1998 day compressed into five minutes, tuned by the shipped PPO model. Ends with an
    SLI and cost report; results in the run folder, decisions in the store (``autotune decisions``).
    """
    import time as _time

    from autotune.live_run import LiveRun, RunOptions
    from autotune.runtime import resolve_endpoints
    from control.tuner import Mode

    try:
        Mode(mode)
    except ValueError:
        raise UserError(f"--mode {mode!r}: choose active, shadow or off") from None
    for name, value in (
        ("--duration-s", duration_s),
        ("--peak-rate", peak_rate),
        ("--interval-s", interval_s),
        ("--time-scale", time_scale),
        ("--slots-per-actor", slots_per_actor),
    ):
        if not (value > 0 and math.isfinite(value)):
            raise UserError(f"{name} must be > 0 and finite, got {value}")
    _check_seed(seed)
    from core.config import check_arrivals, check_ticks
    from executors.replay import REPLAY_TICK_S

    try:  # the replay plan draws every tick's arrivals up front: refuse sizes that exhaust memory
        check_ticks("--duration-s", duration_s, REPLAY_TICK_S)
        check_ticks("--interval-s", interval_s, REPLAY_TICK_S)
        check_arrivals("--peak-rate", peak_rate, REPLAY_TICK_S)
    except ValueError as err:
        raise UserError(str(err)) from None
    if resume is not None:
        from autotune.run_state import ResumeError

        run_dir = resume
        endpoints = resolve_endpoints(
            run_dir,
            database_url=database_url,
            redis_url=redis_url,
            prometheus_url=prometheus_url,
            ray_address=ray_address,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )
        _database_url(endpoints.database_url, "database URL (--database-url or AUTOTUNE_DATABASE_URL)")
        try:
            live = LiveRun.resuming(run_dir, endpoints)
        except ResumeError as err:
            raise UserError(str(err)) from None
        o = live.opts
        err_console.print(
            f"autotune run --resume {run_dir}: run {live.run_id}, {o.policy} ({o.mode}) on {o.scenario}, "
            f"{o.duration_s:g} s (the options it started with); "
            + ", ".join(f"{k} {v}" for k, v in endpoints.describe().items()),
            markup=False,
        )
    else:
        cfg = _load(config, _parse_sets(set_))
        run_dir = (
            out or Path("runs") / f"live-{_time.strftime('%Y%m%d-%H%M%S')}-{policy.replace('/', '_').replace(':', '_')}"
        )
        endpoints = resolve_endpoints(
            run_dir,
            database_url=database_url,
            redis_url=redis_url,
            prometheus_url=prometheus_url,
            ray_address=ray_address,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )
        _database_url(endpoints.database_url, "database URL (--database-url or AUTOTUNE_DATABASE_URL)")
        opts = RunOptions(
            policy=policy,
            mode=mode,
            scenario=scenario,
            duration_s=duration_s,
            peak_rate_per_s=peak_rate,
            interval_s=interval_s,
            seed=seed,
            time_scale=time_scale,
            slots_per_actor=slots_per_actor,
            user=user or os.environ.get("USER", "operator"),
            operators_file=str(operators_file or os.environ.get("AUTOTUNE_OPERATORS_FILE") or "") or None,
        )
        live = LiveRun(cfg, opts, endpoints, run_dir)
        err_console.print(
            f"autotune run: {policy} ({mode}) on {scenario}, {duration_s:g} s; "
            + ", ".join(f"{k} {v}" for k, v in endpoints.describe().items()),
            markup=False,
        )
    with live:
        err_console.print(live.operators_note, markup=False)
        if live.policy_problem:
            err_console.print(f"warning: {live.policy_problem}; the calibrated HPA tunes instead", markup=False)
        try:
            if dashboard and console.is_terminal:
                from rich.live import Live

                from autotune.dashboard import render

                with Live(render(live.dashboard), console=console, refresh_per_second=4) as screen:
                    report = live.run(on_update=lambda d: screen.update(render(d)))
            else:
                report = live.run()
        except KeyboardInterrupt:  # Ctrl-C: stop the replay, report what ran
            err_console.print("interrupted: reporting the intervals so far", markup=False)
            report = live.finish()
    _print_run_report(report, run_dir)
    if report.extra.get("ended_by"):
        raise RunEndedEarly(
            f"the run ended early: {report.extra['ended_by']}; what ran is reported above; "
            f"continue it with: autotune run --resume {run_dir}"
        )


def _print_run_report(report, run_dir: Path) -> None:
    t = Table(title=f"{report.policy} ({report.mode}): SLI and cost report")
    t.add_column("measure")
    t.add_column("value", justify="right")
    rows = [
        ("control intervals", f"{report.intervals}"),
        ("intervals meeting all SLIs", f"{report.sli_attainment:.1%}"),
        ("  success rate > 99.5%", f"{report.success_rate_ok_share:.1%}"),
        ("  mean processing < 5 s", f"{report.processing_time_ok_share:.1%}"),
        ("  backlog < 100", f"{report.backlog_ok_share:.1%}"),
        (
            "tasks submitted / succeeded / failed / unfinished",
            f"{report.tasks_submitted} / {report.tasks_succeeded} / {report.tasks_failed} / {report.tasks_unfinished}",
        ),
        ("mean processing time", f"{report.mean_processing_time_s:.2f} s"),
        ("worst interval P99", f"{report.worst_p99_processing_time_s:.2f} s"),
        ("max backlog", f"{report.max_backlog}"),
        ("cost (slot-seconds)", f"{report.slot_seconds:,.0f}"),
        ("mean concurrency", f"{report.mean_concurrency:.1f}"),
        ("decisions (fallbacks)", f"{report.decisions} ({report.fallback_decisions})"),
    ]
    extra = report.extra or {}
    for key, label in (
        ("outages", "outages waited out"),
        ("dead_letters", "dead-lettered entries"),
        ("dropped_duplicates", "duplicate entries dropped unrun"),
        ("arrivals_refused", "arrivals refused (held too long)"),
    ):
        if extra.get(key):
            rows.append((label, str(extra[key])))
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    console.print(f"results in {run_dir}/ (summary.json, intervals.csv, run.yaml)")


@app.command()
def decisions(
    last: Annotated[int, typer.Option(help="how many, newest first")] = 20,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="the run's database; default AUTOTUNE_DATABASE_URL, else the newest run folder's embedded SQLite"
        ),
    ] = None,
    cluster: Annotated[str, typer.Option(help="cluster name the decisions were recorded under")] = "autotune",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines")] = False,
) -> None:
    """The tuner's last decisions: time, observation, policy output, guard result, applied value, reason,
    mode and who."""
    from autotune.decisions_view import format_decisions
    from core.config import MAX_LAST_DECISIONS
    from executors.store import TaskStore

    if not 1 <= last <= MAX_LAST_DECISIONS:
        raise UserError(f"--last must be >= 1 and <= {MAX_LAST_DECISIONS:,}, got {last}")
    url = _existing_database(database_url)
    store = TaskStore(url, connect_retries=1)
    try:
        records = store.last_decisions(last, cluster=cluster)
    finally:
        store.close()
    if as_json:
        for r in records:
            typer.echo(json.dumps(asdict(r), default=str))
        return
    if not records:
        console.print(f"no decisions recorded for cluster {cluster!r} in {url}")
        return
    console.print(format_decisions(records))


@app.command("dead-letters")
def dead_letters(
    last: Annotated[int, typer.Option(help="how many, newest first")] = 20,
    tenant: Annotated[str | None, typer.Option(help="only this tenant's")] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="the cluster's database; default AUTOTUNE_DATABASE_URL, else the newest run folder's embedded SQLite"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines")] = False,
) -> None:
    """Queue entries the cluster could not run (undecodable, no such task, a type not registered,
    a bad attempt number), newest first, with the reason. Each cost its own task only (it failed
    with the reason); the cluster went on."""
    from executors.store import TaskStore

    if not 1 <= last <= 1_000_000:
        raise UserError(f"--last must be 1 to 1,000,000, got {last}")
    url = _existing_database(database_url)
    store = TaskStore(url, connect_retries=1)
    try:
        store.create_schema()
        letters = store.dead_letters(tenant, limit=last)
    finally:
        store.close()
    if as_json:
        for d in letters:
            typer.echo(json.dumps(asdict(d)))
        return
    if not letters:
        console.print(f"no dead letters in {url}")
        return
    t = Table(title=f"dead letters (newest first) in {url}")
    for col in ("time", "tenant", "task", "entry", "reason"):
        t.add_column(col)
    import datetime as _dt

    for d in letters:
        t.add_row(
            _dt.datetime.fromtimestamp(d.ts_s).isoformat(timespec="seconds"),
            d.tenant,
            d.task_id,
            d.message_id,
            d.reason,
        )
    console.print(t)


@app.command()
def control(
    mode: Annotated[str | None, typer.Option(help="switch the running tuner to active, shadow or off")] = None,
    override: Annotated[
        int | None, typer.Option(help="set the concurrency by hand (within the cluster bounds)")
    ] = None,
    user: Annotated[str, typer.Option(help="who asks (default $USER); the tuner's operators file says its roles")] = "",
    key_file: Annotated[
        Path | None,
        typer.Option(
            help="the user's key; default AUTOTUNE_OPERATOR_KEY_FILE, else "
            "operator-<user>.key in the running tuner's run folder"
        ),
    ] = None,
    ttl_s: Annotated[float, typer.Option(help="the request expires this many seconds after it is signed")] = 120.0,
    role: Annotated[
        list[str] | None,
        typer.Option("--role", hidden=True, help="ignored: roles come from the tuner's operators file"),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(help="the running tuner's database; default AUTOTUNE_DATABASE_URL, else the newest run folder's"),
    ] = None,
    cluster: Annotated[str, typer.Option(help="cluster name of the running tuner")] = "autotune",
    wait_s: Annotated[float, typer.Option(help="wait this long for the tuner to apply or refuse it")] = 60.0,
) -> None:
    """Ask the running tuner (``autotune run``) to change its mode or override the concurrency.

    The request is signed with the user's key (HMAC-SHA256), bound to the cluster's running tuner
    and expires after --ttl-s; the tuner verifies it against its operators file (which also says
    the user's roles: 'operator' is needed), applies it at its next interval or refuses it, and
    audits either way. With no tuner running, nothing is queued."""
    import time as _time

    from autotune.operator_auth import OperatorsError, check_user, new_nonce, read_key_file, signed_request, tuner_alive
    from control.tuner import Mode
    from executors.store import TaskStore

    if (mode is None) == (override is None):
        raise UserError("give exactly one of --mode or --override")
    if mode is not None:
        try:
            Mode(mode)
        except ValueError:
            raise UserError(f"--mode {mode!r}: choose active, shadow or off") from None
    if not ttl_s > 0:
        raise UserError(f"--ttl-s must be > 0, got {ttl_s}")
    if role:
        err_console.print(
            "warning: --role is ignored (and will go): the tuner takes the user's roles from its operators file",
            markup=False,
        )
    user = user or os.environ.get("USER", "operator")
    try:
        check_user(user, "--user")
    except OperatorsError as err:
        raise UserError(str(err)) from None
    if not (wait_s >= 0 and math.isfinite(wait_s)):
        raise UserError(f"--wait-s must be a finite number >= 0, got {wait_s}")
    url = _existing_database(database_url)
    action, value = ("mode", mode) if mode is not None else ("override", str(override))
    store = TaskStore(url, connect_retries=1)
    try:
        store.create_schema()
        now = _time.time()
        runs = store.tuner_runs(cluster)
        live = [r for r in runs if tuner_alive(r, now)]
        if not live:
            raise UserError(
                f"no tuner of cluster {cluster!r} is running ({_last_seen(runs, now)}); nothing "
                f"was queued (database {store.url_masked})"
            )
        tuner = max(live, key=lambda r: r["started_s"])
        key_path = key_file or os.environ.get("AUTOTUNE_OPERATOR_KEY_FILE")
        if not key_path and tuner["run_dir"] and (Path(tuner["run_dir"]) / f"operator-{user}.key").exists():
            key_path = Path(tuner["run_dir"]) / f"operator-{user}.key"
        if not key_path:
            raise UserError(
                f"no key for user {user!r}: pass --key-file or set AUTOTUNE_OPERATOR_KEY_FILE (the "
                f"tuner's admin makes one with `autotune operator-key --user {user} --role operator "
                "--operators-file FILE`, FILE being the tuner's --operators-file); a run without "
                "one keeps operator-<user>.key for the user who started it in its run folder"
            )
        key = read_key_file(Path(key_path), f"--key-file for user {user!r}")
        req = signed_request(
            cluster=cluster,
            run_id=tuner["run_id"],
            user=user,
            action=action,
            value=value,
            key=key,
            now_s=now,
            ttl_s=ttl_s,
            nonce=new_nonce(),
        )
        rid = store.request_control(
            cluster,
            user,
            [],
            action,
            value,
            now,
            run_id=req["run_id"],
            nonce=req["nonce"],
            issued_s=req["issued_s"],
            expires_s=req["expires_s"],
            signature=req["signature"],
        )
        deadline = _time.monotonic() + wait_s
        row = store.control_request(rid)
        while row is not None and row["status"] == "pending" and _time.monotonic() < deadline:
            _time.sleep(0.5)
            row = store.control_request(rid)
    finally:
        store.close()
    what = f"request {rid} ({action} {value}, for run {tuner['run_id']}, expires in {ttl_s:g} s)"
    if row is None or row["status"] == "pending":
        console.print(
            f"{what} queued; the tuner of cluster {cluster!r} has not taken it within {wait_s:g} s "
            "(it is applied or refused at the tuner's next interval)"
        )
        return
    if row["status"] == "refused":
        raise UserError(f"{what} refused by the tuner: {row['detail']}")
    console.print(f"{what} applied by the running tuner")


def _last_seen(runs: list[dict[str, Any]], now_s: float) -> str:
    if not runs:
        return "none was ever registered in this database"
    last = runs[0]
    state = "ended" if last["status"] == "ended" else "stopped beating"
    return f"last seen {now_s - last['heartbeat_s']:.0f} s ago, run {last['run_id']} on {last['host']}, {state}"


@app.command("operator-key")
def operator_key(
    user: Annotated[str, typer.Option(help="the operator's user name")],
    operators_file: Annotated[Path, typer.Option(help="the tuner's operators file (created if absent)")],
    role: Annotated[
        list[str],
        typer.Option("--role", help="a role of the user ('operator' may steer the tuner); repeat for several"),
    ],
    key_file: Annotated[
        Path | None, typer.Option(help="where the key goes (default operator-<user>.key beside the operators file)")
    ] = None,
    new_key: Annotated[bool, typer.Option(help="write a new key even if the key file exists (rotate it)")] = False,
) -> None:
    """Give a user a key and roles for steering the tuner: creates the key file (mode 0600) and adds or
    updates the user's entry in the operators file. Start the tuner with ``--operators-file`` and
    give the user its key file (``autotune control --key-file``)."""
    from autotune.operator_auth import add_operator

    path, created = add_operator(operators_file, user, role, key_file, rotate=new_key)
    mode = path.stat().st_mode & 0o777
    console.print(
        f"{user}: roles {', '.join(sorted(set(role)))} in {operators_file}; key {path} "
        f"({'new' if created else 'kept'}, mode {mode:04o}); a tuner reads the file when it starts",
        markup=False,
        soft_wrap=True,
    )
    if mode & 0o077:
        err_console.print(f"warning: {path} is readable by others (mode {mode:04o}): chmod 600 it", markup=False)


def _parse_now(now: str | None, tz: str):
    from datetime import datetime
    from zoneinfo import ZoneInfo

    if now is None:
        return datetime.now(ZoneInfo(tz))
    try:
        when = datetime.fromisoformat(now)
    except ValueError:
        raise UserError(f"--now {now!r}: expected an ISO 8601 time such as 2026-11-23T10:00:00+08:00") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=ZoneInfo(tz))


def _instruction_table(ins, threshold: float) -> Table:
    t = Table(title="parsed request", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value")
    t.add_row("intent", ins.intent or "none")
    t.add_row("confidence", f"{ins.confidence:.2f} (threshold {threshold:.2f})")
    t.add_row("backend", ins.backend + (f" (fallback: {ins.fallback})" if ins.fallback else ""))
    for k, v in ins.params.items():
        t.add_row(f"  {k}", str(v))
    if ins.missing:
        t.add_row("missing", ", ".join(ins.missing))
    for p in ins.problems:
        t.add_row("note", p)
    return t


@app.command()
def submit(
    text: Annotated[str, typer.Option("--text", help="the request in plain Chinese or English")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="submit without asking for confirmation")] = False,
    dry_run: Annotated[bool, typer.Option(help="parse and show, submit nothing")] = False,
    tenant: Annotated[str, typer.Option(help="the submitter's tenant")] = "default",
    user: Annotated[str, typer.Option(help="who submits (authenticated elsewhere)")] = "",
    role: Annotated[
        list[str] | None,
        typer.Option("--role", help="the user's roles (refund needs 'refunds', clean_data 'data_admin')"),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(help="auto (LLM if configured, else offline), offline or llm; default intake.nl.backend"),
    ] = None,
    now: Annotated[str | None, typer.Option(help="resolve relative dates against this ISO time (default: now)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config file")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="config override KEY=VALUE (dotted path)")] = None,
    database_url: Annotated[
        str | None,
        typer.Option(help="the cluster's database; default AUTOTUNE_DATABASE_URL, else the newest run folder's"),
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(help="the cluster's live queue; default AUTOTUNE_REDIS_URL, else the queue in the database"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the instruction (and task) as JSON")] = False,
) -> None:
    """Turn a plain-language request into a task (intent and parameters), show it, and submit it to the
    cluster's queue on confirmation. Nothing is submitted below the confidence threshold or with a
    required parameter missing; the task passes the same validation, role and tenant checks as any."""
    import time as _time

    from executors.intake import Submitter
    from executors.queue import open_queue
    from executors.store import TaskStore
    from intake_nl.parser import TaskParser
    from intake_nl.submit import submit_instruction

    cfg = _load(config, _parse_sets(set_))
    parser = TaskParser(cfg, backend=backend)
    when = _parse_now(now, cfg.intake.nl.timezone)
    ins = parser.parse(text, when)
    threshold = cfg.intake.nl.confidence_threshold
    out: dict[str, Any] = {
        "intent": ins.intent,
        "params": ins.params,
        "confidence": ins.confidence,
        "backend": ins.backend,
        "fallback": ins.fallback,
        "missing": list(ins.missing),
        "problems": list(ins.problems),
    }
    if as_json:
        typer.echo(json.dumps(out, ensure_ascii=False))
    else:
        console.print(_instruction_table(ins, threshold))
    why = ins.refusal(threshold)
    if why is not None:
        raise UserError(f"nothing submitted: {why}")
    if dry_run:
        console.print("dry run: nothing submitted")
        return
    url = _existing_database(database_url)  # before asking: a missing database is refused first
    if not yes:
        try:
            confirmed = typer.confirm("Submit this task?", default=False, err=True)
        except typer.Abort:
            raise UserError(
                "no answer to 'Submit this task?' (input closed): nothing submitted; "
                "pass --yes to submit without asking"
            ) from None
        if not confirmed:
            console.print("not submitted")
            return
    queue_url = redis_url or os.environ.get("AUTOTUNE_REDIS_URL") or url
    submitter = Submitter(user or os.environ.get("USER", "operator"), tenant, frozenset(role or ()))
    store = TaskStore(url, connect_retries=1)
    try:
        store.create_schema()
        queue = open_queue(queue_url, tenant)
        try:
            done = submit_instruction(cfg, store, queue, ins, submitter, _time.time())
        finally:
            close = getattr(queue, "close", None)
            if close is not None:
                close()
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps({"submitted": asdict(done)}, ensure_ascii=False))
    else:
        console.print(
            f"submitted task {done.task_id} ({done.type}, priority {done.priority:.2f}, "
            f"{done.priority_class}) for tenant {done.tenant!r}"
        )


@app.command("intake-eval")
def intake_eval(
    backend: Annotated[
        str, typer.Option(help="comma-separated: offline, llm; default offline, plus llm when one is configured")
    ] = "",
    split: Annotated[str, typer.Option(help="test (held back), train or all")] = "test",
    dataset: Annotated[Path | None, typer.Option(help="a labeled JSONL file (default: the shipped set)")] = None,
    errors: Annotated[int, typer.Option(help="show this many misparsed requests per backend")] = 0,
    config: Annotated[Path | None, typer.Option(help="YAML config file")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="config override KEY=VALUE (dotted path)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    out: Annotated[
        Path | None,
        typer.Option(help="write results.json, errors.csv and run.yaml (config, command, git revision) to this folder"),
    ] = None,
) -> None:
    """Intent accuracy and parameter completeness of each intake backend on the labeled requests
    (by default the held-back test split; the offline classifier learns only from train)."""
    from intake_nl.dataset import REFERENCE_NOW, load_examples
    from intake_nl.evaluate import evaluate
    from intake_nl.llm import resolve_llm_settings
    from intake_nl.parser import TaskParser

    if split not in ("test", "train", "all"):
        raise UserError(f"--split {split!r}: choose test, train or all")
    if errors < 0:
        raise UserError(f"--errors must be >= 0, got {errors}")
    _check_out(out, "folder")
    cfg = _load(config, _parse_sets(set_))
    examples = load_examples(dataset, split=None if split == "all" else split)
    names = [b.strip() for b in backend.split(",") if b.strip()] or (
        ["offline"] + (["llm"] if resolve_llm_settings(cfg.intake.nl.llm) is not None else [])
    )
    for b in names:
        if b not in ("offline", "llm"):
            raise UserError(f"--backend {b!r}: choose offline or llm")
    results = [evaluate(TaskParser(cfg, backend=b), examples, REFERENCE_NOW, backend=b) for b in names]
    if out is not None:
        from core.provenance import write_run_metadata

        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps([r.as_dict() for r in results], indent=1), encoding="utf-8")
        with (out / "errors.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["backend", "id", "what", "detail"])
            for r in results:
                w.writerows([r.backend, *e] for e in r.errors)
        write_run_metadata(
            out / "run.yaml",
            cfg,
            backends=names,
            split=split,
            dataset=str(dataset) if dataset else "intake_nl/data",
            reference_now=REFERENCE_NOW.isoformat(),
        )
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in results]))
        return
    t = Table(title=f"intake on {len(examples)} labeled requests ({split} split), read at {REFERENCE_NOW.isoformat()}")
    for col in (
        "backend",
        "language",
        "requests",
        "intent accuracy",
        "param completeness",
        "param precision",
        "exact",
        "fallbacks",
        "seconds",
    ):
        t.add_column(col, justify="left" if col in ("backend", "language") else "right")
    for r in results:
        for lang, s in [("all", r.overall), *sorted(r.by_lang.items())]:
            t.add_row(
                r.backend,
                lang,
                str(s.n),
                f"{s.intent_accuracy:.1%}",
                f"{s.param_completeness:.1%}",
                f"{s.param_precision:.1%}",
                f"{s.exact_share:.1%}",
                str(r.fallbacks) if lang == "all" else "",
                f"{r.seconds:.2f}" if lang == "all" else "",
            )
    console.print(t)
    for r in results:
        for ex_id, what, detail in r.errors[:errors]:
            console.print(f"{r.backend} {ex_id}: {what}: {detail}", markup=False)


def _newest_run_database() -> str:
    found = sorted(Path("runs").glob("live-*/autotune.db"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(
            "no database given and no run folder with one under runs/; pass --database-url or set AUTOTUNE_DATABASE_URL"
        )
    return f"sqlite:///{found[-1].resolve()}"


def _known_errors() -> tuple[type[BaseException], ...]:
    from autotune.operator_auth import OperatorsError
    from autotune.run_state import ResumeError
    from autotune.runtime import EndpointError
    from control.tuner import PermissionDenied
    from core.config import ConfigError
    from envs.scenarios import UnknownScenarioError
    from envs.trace import TraceError
    from executors.intake import SubmissionError
    from executors.metrics_source import MetricsError
    from executors.queue import QueueError
    from executors.store import StoreError
    from intake_nl.dataset import DatasetError
    from intake_nl.parser import ParserError
    from models import ModelError
    from models.calibration import CalibrationFileError
    from models.registry import UnknownPolicyError
    from training.calibrate import CalibrationError
    from training.generalization import GeneralizationError
    from training.ppo_hyperparams import HyperparamError

    return (
        ResumeError,
        DatasetError,
        ParserError,
        UserError,
        ConfigError,
        TraceError,
        UnknownScenarioError,
        UnknownPolicyError,
        ModelError,
        HyperparamError,
        CalibrationError,
        CalibrationFileError,
        GeneralizationError,
        EndpointError,
        StoreError,
        QueueError,
        MetricsError,
        SubmissionError,
        PermissionDenied,
        OperatorsError,
    )


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    try:
        app(args=argv, standalone_mode=False)
    except SystemExit as exc:  # typer/click exits for --help
        return int(exc.code or 0)
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.Exit):
            return exc.exit_code
        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, (click.exceptions.Abort, typer.Abort)):
            err_console.print("aborted")
            return 1
        if isinstance(exc, RunEndedEarly):
            err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            return 3
        if os.environ.get("AUTOTUNE_DEBUG"):
            raise
        if isinstance(exc, _known_errors()):
            for line in str(exc).splitlines() or [type(exc).__name__]:
                err_console.print(f"error: {line}", markup=False, highlight=False, soft_wrap=True)
            return 2
        if isinstance(exc, OSError) and exc.filename is not None:  # a path given: missing, a directory, ...
            err_console.print(
                f"error: {exc.filename}: {exc.strerror or exc}", markup=False, highlight=False, soft_wrap=True
            )
            return 2
        err_console.print(
            f"internal error: {type(exc).__name__}: {exc} (set AUTOTUNE_DEBUG=1 for a traceback)",
            markup=False,
            highlight=False,
        )
        return 1
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
