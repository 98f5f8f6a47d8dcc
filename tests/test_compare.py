"""Policy comparison, end to end on tiny budgets (calibration: tests/test_calibrate.py)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tests.conftest import small_config
from training.compare import RESULT_COLUMNS, run_compare, t95


def test_t_quantiles():
    assert t95(1) == pytest.approx(12.706)
    assert t95(11) == pytest.approx(2.179)  # next tabulated df up: conservative
    assert t95(100) == 1.96
    assert math.isnan(t95(0))


def test_compare_writes_results_summary_and_plots(tmp_path):
    cfg = small_config(simulation={"duration_s": 300.0})
    df = run_compare(
        ["hpa-default", "threshold", "oracle"],
        ["flash-sale", "step"],
        [0, 1],
        tmp_path,
        cfg,
        workers=2,
        argv=["autotune", "compare"],
    )
    assert tuple(df.columns) == RESULT_COLUMNS
    assert len(df) == 3 * 2 * 2
    on_disk = pd.read_csv(tmp_path / "results.csv")
    assert tuple(on_disk.columns) == RESULT_COLUMNS and len(on_disk) == 12
    oracle = on_disk[on_disk.policy == "oracle"]
    assert (oracle.cost_vs_oracle == 1.0).all()
    assert (on_disk.sli_attainment.between(0, 1)).all()
    summary = (tmp_path / "summary.md").read_text()
    assert "## flash-sale" in summary and "## step" in summary and "±" in summary
    for name in ("flash-sale.png", "step.png", "cost_vs_sli.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000
    assert (tmp_path / "run.yaml").is_file() and (tmp_path / "config.yml").is_file()
    # same seeds, same numbers: a serial rerun reproduces the parallel one
    again = run_compare(
        ["hpa-default", "threshold", "oracle"], ["flash-sale", "step"], [0, 1], tmp_path / "b", cfg, workers=1
    )
    pd.testing.assert_frame_equal(
        df.sort_values(["policy", "scenario", "seed"]).reset_index(drop=True),
        again.sort_values(["policy", "scenario", "seed"]).reset_index(drop=True),
    )


def test_oracle_runs_as_reference_even_when_not_asked(tmp_path):
    df = run_compare(["static"], ["step"], [0], tmp_path, small_config(simulation={"duration_s": 300.0}), workers=1)
    assert set(df.policy) == {"static"} and df.cost_vs_oracle.notna().all() and (df.cost_vs_oracle > 0).all()


def test_compare_refuses_bad_names_before_running(tmp_path):
    from envs.scenarios import UnknownScenarioError
    from models.registry import UnknownPolicyError

    with pytest.raises(UnknownPolicyError):
        run_compare(["hpa", "nope"], ["step"], [0], tmp_path, small_config())
    with pytest.raises(UnknownScenarioError):
        run_compare(["hpa"], ["nope"], [0], tmp_path, small_config())
    assert not (tmp_path / "results.csv").exists()
