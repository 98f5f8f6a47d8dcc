"""The command line: the simulate report, JSON output, and one-line errors without tracebacks."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from autotune.cli import main

JSON_KEYS = {
    "sli_attainment",
    "success_rate",
    "mean_processing_time_s",
    "p90_processing_time_s",
    "p99_processing_time_s",
    "mean_backlog",
    "max_backlog",
    "cost_slot_hours",
}


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_policies_lists_every_baseline(capsys):
    from models.registry import BASELINES

    code, out, _ = run_cli(capsys, "policies")
    assert code == 0
    for name in BASELINES:
        assert f"``{name}``" in out, name
    assert "``bound``" in out


def test_simulate_runs_the_bound_beside_policies(capsys):
    code, out, _ = run_cli(capsys, "simulate", "--scenario", "step", "--policy", "bound,static", "--json")
    assert code == 0
    bound, static = json.loads(out)
    assert bound["policy"] == "bound" and bound["cost_slot_hours"] < static["cost_slot_hours"]


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--trace-offsets-h", "1,x", "--trace-offsets-h"),
        ("--trace-offsets-h", "-3", "--trace-offsets-h"),
        ("--trace-compression", "0", "--trace-compression"),
        ("--trace-compression", "fast", "--trace-compression"),
    ],
)
def test_compare_trace_flags_fail_in_one_line(capsys, tmp_path, flag, value, says):
    code, out, err = run_cli(capsys, "compare", flag, value, "--out", str(tmp_path / "c"))
    assert code == 2 and says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


def test_simulate_runs_the_new_yardsticks(capsys):
    code, out, _ = run_cli(
        capsys, "simulate", "--scenario", "step", "--policy", "kpa,keda,predictive", "--duration-s", "300", "--json"
    )
    assert code == 0
    assert [row["policy"] for row in json.loads(out)] == ["kpa", "keda", "predictive"]


def test_simulate_json(capsys):
    code, out, err = run_cli(
        capsys,
        "simulate",
        "--scenario",
        "flash-sale",
        "--policy",
        "hpa",
        "--seed",
        "3",
        "--duration-s",
        "600",
        "--json",
    )
    assert code == 0, err
    obj = json.loads(out)
    assert set(obj) >= JSON_KEYS
    assert 0.0 <= obj["sli_attainment"] <= 1.0
    assert obj["cost_slot_hours"] > 0
    assert obj["p99_processing_time_s"] >= obj["p90_processing_time_s"]


def test_simulate_table_and_interval_csv(capsys, tmp_path):
    out_csv = tmp_path / "intervals.csv"
    code, out, err = run_cli(
        capsys,
        "simulate",
        "--scenario",
        "step",
        "--policy",
        "static,threshold",
        "--duration-s",
        "300",
        "--out",
        str(out_csv),
    )
    assert code == 0, err
    assert "threshold" in out and "slot-hours" in out
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 2 * 20
    assert {r["policy"] for r in rows} == {"static", "threshold"}
    import yaml

    meta = yaml.safe_load((tmp_path / "intervals.csv.run.yaml").read_text())
    assert meta["config"]["simulation"]["scenario"] == "step"
    assert meta["config"]["simulation"]["duration_s"] == 300
    assert meta["policies"] == ["static", "threshold"] and meta["seed"] == 0
    assert meta["git_revision"] and meta["command"]
    assert [s["policy"] for s in meta["summaries"]] == ["static", "threshold"]


def test_simulate_is_deterministic(capsys):
    args = (
        "simulate",
        "--scenario",
        "worldcup",
        "--policy",
        "threshold",
        "--seed",
        "9",
        "--duration-s",
        "600",
        "--json",
    )
    _, a, _ = run_cli(capsys, *args)
    _, b, _ = run_cli(capsys, *args)
    assert a == b


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("simulate", "--scenario", "nope"), "unknown scenario 'nope'"),
        (("simulate", "--policy", "magic"), "unknown policy 'magic'"),
        (("simulate", "--interval-s", "-3"), "control.interval_s"),
        (("simulate", "--set", "cluster.min_concurrency=500"), "min_concurrency (500) must be <= max_concurrency"),
        (("simulate", "--set", "control.factors=[0.8, 0, 1.2]"), "control.factors"),
        (("simulate", "--set", "nonsense"), "expected KEY=VALUE"),
        (("simulate", "--config", "/nonexistent/c.yaml"), "config file not found"),
        (("simulate", "--policy", "/nonexistent/model.zip"), "model file not found"),
        (("simulate", "--policy", "no_such_module:decide"), "cannot import module 'no_such_module'"),
        (("train", "--hp", "n_stepz=3"), "--hp: unknown key 'n_stepz' (did you mean 'n_steps'?)"),
        (("train", "--hp", "gamma=7"), "--hp: gamma: Input should be less than or equal to 1 (got 7)"),
        (("compare", "--policies", "hpa,nope", "--scenarios", "step"), "unknown policy 'nope'"),
        (("compare", "--scenarios", "trace:/nonexistent.csv"), "nonexistent.csv"),
        (("compare", "--seeds", "0"), "--seeds must be at least 1"),
        (("calibrate", "--attainment", "2"), "--attainment must be in (0, 1]"),
        (("calibrate", "--scenarios", "worldcup-holdout"), "held back for evaluation"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, args, expected):
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err + out
    assert err.count("\n") == 1


def test_bad_trace_names_file_and_line(capsys, tmp_path):
    bad = tmp_path / "load.csv"
    bad.write_text("timestamp,count\n0,5\n60,-3\n120,4\n")
    code, out, err = run_cli(capsys, "simulate", "--scenario", f"trace:{bad}")
    assert code == 2
    assert "load.csv" in err and "line 3" in err
    missing = tmp_path / "missing.csv"
    code, out, err = run_cli(capsys, "simulate", "--scenario", f"trace:{missing}")
    assert code == 2 and "missing.csv" in err


def test_console_script_exit_status_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "autotune.cli", "simulate", "--scenario", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "unknown scenario" in proc.stderr
