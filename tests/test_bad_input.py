"""Malformed input to every command ends in one ``error:`` line naming the input, exit status 2, and
nothing written that was not asked for; and the size limits of ``core.config`` hold at their
bounds. Everything here is refused before any simulation, training or Ray start."""

from __future__ import annotations

import math
import os

import pytest

from autotune.cli import main
from core import config as limits
from core.config import ConfigError, LimitError, check_arrivals, check_ticks, config_from_dict


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_clear_error(code: int, out: str, err: str, needle: str) -> None:
    assert code == 2, (code, out, err)
    assert needle in err, err
    assert "Traceback" not in out + err and "internal error" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A working directory of bad files; AUTOTUNE_* variables unset so the flags decide."""
    for name in ("AUTOTUNE_DATABASE_URL", "AUTOTUNE_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))  # NUL bytes and invalid UTF-8
    (tmp_path / "latin1.yaml").write_bytes("task_type: caf\xe9\n".encode("latin-1"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "unknown.yaml").write_text("bogus: 1\n")
    (tmp_path / "tag.yaml").write_text("control: !!python/object/apply:os.getcwd []\n")
    (tmp_path / "inf.yaml").write_text("control: {interval_s: .inf}\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x\n")
    (tmp_path / "labeled.jsonl").write_bytes(b'{"id": "\xff"}\n')
    return tmp_path


# (args with {tmp} for the working directory, what the message must name)
CASES = [
    # files as --config: binary, not UTF-8, the wrong shape, unknown keys, a python tag, a directory
    (("simulate", "--config", "{tmp}/binary.yaml"), "binary.yaml: not a UTF-8 text file"),
    (("simulate", "--config", "{tmp}/latin1.yaml"), "latin1.yaml: not a UTF-8 text file (bad byte at offset 14)"),
    (("simulate", "--config", "{tmp}/list.yaml"), "list.yaml: the top level must be a mapping"),
    (("simulate", "--config", "{tmp}/unknown.yaml"), "unknown.yaml: bogus: Extra inputs"),
    (("simulate", "--config", "{tmp}/tag.yaml"), "tag.yaml line 1: not valid YAML"),
    (("simulate", "--config", "{tmp}/inf.yaml"), "inf.yaml: control.interval_s: Input should be a finite number"),
    (("simulate", "--config", "{tmp}/folder"), "folder: is a directory, not a config file"),
    (("compare", "--config", "/dev/zero"), "/dev/zero: not a regular file"),
    # --set: YAML syntax, python tags, non-finite floats, sizes past the limits, wrong types
    (("simulate", "--set", "control.interval_s=[1,"), "--set 'control.interval_s=[1,': the value is not valid YAML"),
    (
        ("simulate", "--set", 'control.interval_s=!!python/object/apply:os.system ["touch {tmp}/pwned"]'),
        "could not determine a constructor for the tag",
    ),
    (("simulate", "--set", "control.interval_s=.inf"), "control.interval_s: Input should be a finite number"),
    (("simulate", "--set", "control.interval_s=.nan"), "control.interval_s: Input should be a finite number"),
    (("simulate", "--set", "simulation.duration_s=.inf"), "simulation.duration_s: Input should be a finite"),
    (("simulate", "--set", "simulation.interval_s=.inf"), "unknown field 'simulation.interval_s'"),
    (
        ("simulate", "--set", "tasks.order_processing.retry_policy.cap_s=.inf"),
        "retry_policy.cap_s: Input should be a finite",
    ),
    (("simulate", "--set", "control.factors=[0.8, .nan]"), "control.factors.1: Input should be a finite number"),
    (
        ("simulate", "--set", "simulation.duration_s=1e12"),
        "simulation.duration_s: 1e+12 s is 2e+12 ticks of 0.5 s; the limit is 5,000,000 ticks",
    ),
    (("simulate", "--duration-s", "2e8"), "simulation.duration_s: 2e+08 s is 4e+08 ticks"),
    (("simulate", "--set", "simulation.tick_s=1e-9"), "simulation.duration_s: 3600 s is 3.6e+12 ticks of 1e-09 s"),
    (("simulate", "--peak-rate", "1e30"), "simulation.peak_rate_per_s: 1e+30 tasks/s is 5e+29 arrivals per tick"),
    (("simulate", "--interval-s", "1e9"), "control.interval_s: 1e+09 s is 2e+09 ticks"),
    (("simulate", "--set", "tasks.order_processing.timeout=1e12"), "tasks.order_processing.timeout: 1e+12 s"),
    (("simulate", "--set", "cluster.warmup_s=1e12"), "cluster.warmup_s: 1e+12 s"),
    (
        ("simulate", "--set", "tasks.order_processing.retry_policy.max_retries=1000000000"),
        "tasks.order_processing.retry_policy: 1,000,000,001 attempts",
    ),
    (("simulate", "--set", "control=[1, 2]"), "control: Input should be a valid dictionary"),
    (("simulate", "--set", "control.factors=5"), "control.factors: Input should be a valid tuple"),
    (("simulate", "--set", " =5"), "expected KEY=VALUE"),
    # simulate's own options
    (("simulate", "--seed", "-1"), "--seed must be in [0, 4294967295]"),
    (("simulate", "--seed", "99999999999999999999"), "--seed must be in [0, 4294967295]"),
    (("simulate", "--out", "{tmp}/folder"), "--out {tmp}/folder: is a directory"),
    (("simulate", "--scenario", "trace:/dev/zero"), "/dev/zero: not a CSV text file"),
    (("simulate", "--scenario", "trace:{tmp}/folder"), "folder: is a directory, not a CSV file"),
    # train
    (("train", "--seed", "-1"), "--seed must be in [0, 4294967295]"),
    (("train", "--timesteps", "0"), "--timesteps must be at least 1, got 0"),
    (("train", "--hyperparams", "{tmp}/binary.yaml"), "binary.yaml: not a UTF-8 text file"),
    (("train", "--hyperparams", "{tmp}/folder"), "folder: is a directory, not a hyperparameter file"),
    (("train", "--hyperparams", "{tmp}/list.yaml"), "list.yaml: needs a 'default:' entry"),
    (("train", "--hp", "gamma=[1,"), "--hp 'gamma=[1,': the value is not valid YAML"),
    (("train", "--hp", "learning_rate=.nan"), "--hp: learning_rate: Input should be a finite number (got nan)"),
    (("train", "--hp", "n_envs=100000000"), "n_envs: 100,000,000 environments; the limit is 256"),
    (("train", "--hp", "n_steps=100000000"), "n_steps x n_envs is 400,000,000; the limit is 1,000,000"),
    (("train", "--out", "{tmp}/afile"), "--out {tmp}/afile: exists and is not a folder"),
    # compare and calibrate
    (("compare", "--seeds", "100000000"), "--seeds must be at least 1 and at most 10,000, got 100000000"),
    (("compare", "--workers", "0"), "--workers must be between 1 and"),
    (("compare", "--workers", "-3"), "--workers must be between 1 and"),
    (("compare", "--workers", "100000"), "got 100000"),
    (("compare", "--out", "{tmp}/afile"), "--out {tmp}/afile: exists and is not a folder"),
    (("calibrate", "--seeds", "0"), "--seeds must be at least 1"),
    (("calibrate", "--scenarios", ","), "--scenarios: give at least one scenario"),
    (("calibrate", "--workers", "0"), "--workers must be between 1 and"),
    (("calibrate", "--out", "{tmp}/folder"), "--out {tmp}/folder: is a directory"),
    # check-trace
    (("check-trace", "/dev/zero"), "/dev/zero: not a CSV text file (contains NUL bytes)"),
    (("check-trace", "{tmp}/folder"), "folder: is a directory"),
    # run: refused before Ray starts (and before the run folder is made)
    (("run", "--peak-rate", "inf"), "--peak-rate must be > 0 and finite, got inf"),
    (("run", "--peak-rate", "nan"), "--peak-rate must be > 0 and finite, got nan"),
    (("run", "--duration-s", "inf"), "--duration-s must be > 0 and finite, got inf"),
    (("run", "--interval-s", "inf"), "--interval-s must be > 0 and finite, got inf"),
    (("run", "--time-scale", "nan"), "--time-scale must be > 0 and finite"),
    (("run", "--duration-s", "1e12"), "--duration-s: 1e+12 s is 2e+12 ticks of 0.5 s; the limit is 5,000,000 ticks"),
    (("run", "--interval-s", "1e9"), "--interval-s: 1e+09 s is 2e+09 ticks"),
    (
        ("run", "--peak-rate", "1e9"),
        "--peak-rate: 1e+09 tasks/s is 5e+08 arrivals per tick of 0.5 s; the limit is 100,000",
    ),
    (("run", "--seed", "-1"), "--seed must be in [0, 4294967295]"),
    (("run", "--set", "control.interval_s=[1,"), "--set 'control.interval_s=[1,'"),
    (("run", "--database-url", "garbage", "--redis-url", "redis://127.0.0.1:6379/0"), "'garbage': not a database URL"),
    # decisions, control, submit: a database URL that cannot be parsed or served
    (("decisions", "--database-url", "garbage"), "--database-url 'garbage': not a database URL"),
    (("decisions", "--database-url", "foo://x"), "foo://x: cannot open the database"),
    (("decisions", "--database-url", "sqlite://"), "an in-memory SQLite database holds no run"),
    (("decisions", "--database-url", "sqlite:///{tmp}/folder"), "folder is a directory, not a SQLite database"),
    (("decisions", "--last", "100000000000000000000"), "--last must be >= 1 and <= 1,000,000"),
    (("control", "--mode", "active", "--database-url", "garbage"), "not a database URL"),
    (("control", "--mode", "active", "--wait-s", "nan"), "--wait-s must be a finite number >= 0"),
    (("control", "--mode", "active", "--wait-s", "-1"), "--wait-s must be a finite number >= 0"),
    (
        (
            "submit",
            "--text",
            "Please process order ORD-1029384",
            "--backend",
            "offline",
            "--yes",
            "--database-url",
            "garbage",
        ),
        "--database-url 'garbage': not a database URL",
    ),
    # intake-eval
    (("intake-eval", "--dataset", "{tmp}/labeled.jsonl"), "labeled.jsonl: not a UTF-8 text file"),
    (("intake-eval", "--errors", "-1"), "--errors must be >= 0, got -1"),
    (("intake-eval", "--out", "{tmp}/afile"), "--out {tmp}/afile: exists and is not a folder"),
]


@pytest.mark.parametrize(("args", "needle"), CASES, ids=[" ".join(a)[:70] for a, _ in CASES])
def test_bad_input_is_one_clear_error(capsys, files, args, needle):
    before = sorted(p.name for p in files.iterdir())
    code, out, err = run_cli(capsys, *(a.replace("{tmp}", str(files)) for a in args))
    assert_one_clear_error(code, out, err, needle.replace("{tmp}", str(files)))
    assert sorted(p.name for p in files.iterdir()) == before  # nothing written: no run folder, no pwned


@pytest.mark.parametrize(
    "command",
    [
        ("decisions",),
        ("control", "--mode", "active"),
        ("submit", "--text", "Please process order ORD-1029384", "--backend", "offline", "--yes"),
    ],
)
@pytest.mark.parametrize("via", ["flag", "environment"])
def test_read_only_commands_refuse_a_missing_sqlite_file_without_creating_it(capsys, files, monkeypatch, command, via):
    db = files / "does-not-exist.db"
    url = f"sqlite:///{db}"
    if via == "flag":
        code, out, err = run_cli(capsys, *command, "--database-url", url)
        source = "--database-url"
    else:
        monkeypatch.setenv("AUTOTUNE_DATABASE_URL", url)
        code, out, err = run_cli(capsys, *command)
        source = "AUTOTUNE_DATABASE_URL"
    assert_one_clear_error(code, out, err, f"{source} '{url}': {db} does not exist")
    assert not db.exists() and not list(files.glob("does-not-exist.db*"))


def test_workers_limit_is_per_core(capsys, files):
    limit = limits.MAX_WORKERS_PER_CORE * (os.cpu_count() or 1)
    code, out, err = run_cli(capsys, "compare", "--workers", str(limit + 1))
    assert_one_clear_error(code, out, err, f"--workers must be between 1 and {limit}")


# -- the limits, one unit test each ------------------------------------------------------------


def test_every_config_float_must_be_finite():
    for data, field in [
        ({"control": {"interval_s": math.inf}}, "control.interval_s"),
        ({"simulation": {"peak_rate_per_s": math.nan}}, "simulation.peak_rate_per_s"),
        ({"slis": {"backlog_max": math.inf}}, "slis.backlog_max"),
        ({"guard": {"emergency_scale_up_factor": math.inf}}, "guard.emergency_scale_up_factor"),
        ({"intake": {"nl": {"llm": {"timeout_s": math.inf}}}}, "intake.nl.llm.timeout_s"),
    ]:
        with pytest.raises(ConfigError, match="Input should be a finite number") as exc:
            config_from_dict(data, "c.yaml")
        assert str(exc.value).startswith(f"c.yaml: {field}: ")


def test_episode_ticks_limit_holds_at_its_bound():
    tick = 0.5
    at_limit = config_from_dict({"simulation": {"duration_s": limits.MAX_TICKS * tick, "tick_s": tick}})
    assert at_limit.simulation.duration_s / tick == limits.MAX_TICKS
    with pytest.raises(ConfigError, match=r"c.yaml: simulation.duration_s: .* the limit is 5,000,000 ticks"):
        config_from_dict({"simulation": {"duration_s": (limits.MAX_TICKS + 1) * tick, "tick_s": tick}}, "c.yaml")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"control": {"interval_s": 3e6}}, "control.interval_s"),
        ({"cluster": {"warmup_s": 3e6}}, "cluster.warmup_s"),
        ({"tasks": {"order_processing": {"timeout": 3e6}}}, "tasks.order_processing.timeout"),
        (
            {"tasks": {"order_processing": {"retry_policy": {"max_retries": 100_000, "cap_s": 30.0}}}},
            "tasks.order_processing.retry_policy",
        ),
    ],
)
def test_other_simulator_spans_share_the_tick_limit(data, field):
    with pytest.raises(ConfigError) as exc:
        config_from_dict(data, "c.yaml")
    assert str(exc.value).startswith(f"c.yaml: {field}: ") and "the limit is 5,000,000 ticks" in str(exc.value)


def test_arrivals_per_tick_limit_holds_at_its_bound():
    tick = 0.5
    peak = limits.MAX_ARRIVALS_PER_TICK / tick
    assert config_from_dict({"simulation": {"peak_rate_per_s": peak}}).simulation.peak_rate_per_s == peak
    with pytest.raises(ConfigError, match="simulation.peak_rate_per_s: .* the limit is 100,000 per tick"):
        config_from_dict({"simulation": {"peak_rate_per_s": peak * 1.01}})


def test_limit_checks_name_their_field_and_refuse_nan():
    check_ticks("--duration-s", 10.0, 0.5)
    check_arrivals("--peak-rate", 10.0, 0.5)
    for call in (
        lambda: check_ticks("--duration-s", math.nan, 0.5),
        lambda: check_arrivals("--peak-rate", math.nan, 0.5),
    ):
        with pytest.raises(LimitError) as exc:
            call()
        assert exc.value.field in str(exc.value)


def test_replay_tick_is_the_one_run_checks():
    from executors.replay import REPLAY_TICK_S, plan_replay

    plan = plan_replay(config_from_dict({"simulation": {"scenario": "step", "duration_s": 10.0}}))
    assert plan.tick_s == REPLAY_TICK_S and len(plan.arrivals) == 10.0 / REPLAY_TICK_S


def _trace(n_rows: int, newline_at_end: bool = True) -> str:
    text = "timestamp,count\n" + "\n".join(f"{60 * i},{i}" for i in range(n_rows))
    return text + ("\n" if newline_at_end else "")


@pytest.mark.parametrize("newline_at_end", [True, False])
def test_trace_row_limit(tmp_path, monkeypatch, newline_at_end):
    import envs.trace as trace

    monkeypatch.setattr(trace, "MAX_TRACE_ROWS", 5)
    ok = tmp_path / "ok.csv"
    ok.write_text(_trace(5, newline_at_end))
    assert len(trace.load_trace(ok)) == 5
    big = tmp_path / "big.csv"
    big.write_text(_trace(6, newline_at_end))
    with pytest.raises(trace.TraceError, match=r"big.csv: more than 5 rows, the limit for a trace"):
        trace.load_trace(big)


def test_trace_byte_limit_and_binary_stream(tmp_path, monkeypatch):
    import envs.trace as trace

    monkeypatch.setattr(trace, "MAX_TRACE_BYTES", 100)
    wide = tmp_path / "wide.csv"
    wide.write_text("timestamp,count,note\n" + "".join(f"{60 * i},1,{'x' * 40}\n" for i in range(3)))
    with pytest.raises(trace.TraceError, match="wide.csv: larger than 100 bytes"):
        trace.load_trace(wide)
    zeros = tmp_path / "zeros.csv"  # what /dev/zero gives: refused at the first chunk, not read whole
    zeros.write_bytes(b"timestamp,count\n" + bytes(50))
    with pytest.raises(trace.TraceError, match="zeros.csv: not a CSV text file"):
        trace.load_trace(zeros)


def test_hyperparameter_limits():
    from training.ppo_hyperparams import HyperparamError, load_hyperparams

    assert load_hyperparams(overrides={"n_envs": 2, "n_steps": 128}).n_envs == 2
    with pytest.raises(
        HyperparamError, match=f"n_envs: {limits.MAX_ENVS + 1} environments; the limit is {limits.MAX_ENVS}"
    ):
        load_hyperparams(overrides={"n_envs": limits.MAX_ENVS + 1, "n_steps": 1})
    with pytest.raises(HyperparamError, match="n_steps x n_envs is 1,000,004; the limit is 1,000,000"):
        load_hyperparams(overrides={"n_envs": 4, "n_steps": 250_001})
