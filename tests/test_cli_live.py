"""``autotune run`` and ``autotune decisions`` from the command line, on the embedded default."""

from __future__ import annotations

import json

import yaml

from autotune.cli import main

SHORT = ["--duration-s", "16", "--interval-s", "2", "--time-scale", "0.05", "--peak-rate", "30", "--no-dashboard"]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_on_the_embedded_default_then_query_decisions(ray_local, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("AUTOTUNE_DATABASE_URL", "AUTOTUNE_REDIS_URL", "AUTOTUNE_PROMETHEUS_URL", "AUTOTUNE_RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    code, out, err = run_cli(capsys, "run", *SHORT, "--out", str(tmp_path / "run"), "--user", "olga")
    assert code == 0, err
    assert "SLI and cost report" in out and "intervals meeting all SLIs" in out
    # no operators file given: the run made one for the user who started it, with a private key
    key = tmp_path / "run" / "operator-olga.key"
    assert "operators: olga (operator)" in err and str(key) in err
    assert yaml.safe_load((tmp_path / "run" / "operators.yaml").read_text())["olga"]["roles"] == ["operator"]
    assert key.stat().st_mode & 0o777 == 0o600
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["policy"] == "ppo" and summary["decisions"] >= 5
    assert summary["tasks_succeeded"] + summary["tasks_failed"] == summary["tasks_submitted"] > 0
    run_meta = yaml.safe_load((tmp_path / "run" / "run.yaml").read_text())
    assert run_meta["git_revision"] and run_meta["options"]["policy"] == "ppo" and "config" in run_meta

    db = f"sqlite:///{tmp_path / 'run' / 'autotune.db'}"
    code, out, err = run_cli(capsys, "decisions", "--last", "3", "--json", "--database-url", db)
    assert code == 0, err
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert len(rows) == 3 and rows[0]["time_s"] >= rows[1]["time_s"] >= rows[2]["time_s"]
    assert {"observation", "policy_output", "guard_applied", "applied", "reason", "mode", "who"} <= set(rows[0])
    code, out, err = run_cli(capsys, "decisions", "--last", "3", "--database-url", db)
    assert code == 0 and "last 3 decisions" in out and "ppo" in out


def test_missing_model_falls_back_to_hpa_and_says_so(ray_local, capsys, tmp_path):
    code, out, err = run_cli(
        capsys,
        "run",
        *SHORT,
        "--duration-s",
        "8",
        "--policy",
        str(tmp_path / "nope.zip"),
        "--out",
        str(tmp_path / "run"),
    )
    assert code == 0, err
    assert "calibrated HPA tunes instead" in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["fallback_decisions"] == summary["decisions"] > 0


def test_bad_input_is_one_line_without_traceback(capsys, tmp_path):
    for args, needle in [
        (["--redis-url", "redis://127.0.0.1:1/0"], "127.0.0.1:1"),
        (["--mode", "sideways"], "--mode 'sideways'"),
        (["--duration-s", "0"], "--duration-s must be > 0"),
        (["--metrics-port", "70000"], "metrics port 70000"),
        (["--metrics-host", "no such host!"], "metrics host 'no such host!'"),
    ]:
        code, out, err = run_cli(capsys, "run", *args, "--out", str(tmp_path / "run"), "--no-dashboard")
        assert code == 2, (args, out, err)
        assert needle in err and "Traceback" not in err, err
    (tmp_path / "ops.yaml").write_text("olga: {roles: [operator]}\n")
    code, out, err = run_cli(
        capsys, "run", "--operators-file", str(tmp_path / "ops.yaml"), "--out", str(tmp_path / "run"), "--no-dashboard"
    )
    assert code == 2 and "ops.yaml: operator 'olga': give exactly one of key_file" in err and "Traceback" not in err
    code, out, err = run_cli(capsys, "decisions", "--database-url", f"sqlite:///{tmp_path}/empty.db")
    assert code == 0 or code == 2
    assert "Traceback" not in err


def test_unreachable_ray_address_is_one_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "autotune.cli",
            "run",
            "--ray-address",
            "127.0.0.1:1",
            "--no-dashboard",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Ray at 127.0.0.1:1 unreachable" in lines[0] and "Traceback" not in proc.stderr
