"""autotune generalization: the learned policy judged family by family, leave-one-family-out."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from autotune.cli import main
from tests.conftest import small_config
from training.generalization import (
    LEARNED,
    best_rule,
    run_generalization,
    trained_families,
    verdicts,
    without_family,
)
from training.ppo_hyperparams import load_hyperparams

TINY = {
    "n_envs": 2,
    "n_steps": 64,
    "batch_size": 64,
    "n_epochs": 1,
    "eval_freq": 128,
    "checkpoint_freq": 256,
}


def _row(policy, att, cost, att_ci=0.0, held_out=""):
    return {
        "scenario": "s",
        "policy": policy,
        "sli_attainment": att,
        "sli_attainment_ci95": att_ci,
        "cost_slot_hours": cost,
        "held_out": held_out,
    }


def test_best_rule_is_the_cheapest_meeting_the_criterion_else_the_best():
    rows = pd.DataFrame([_row("hpa", 0.99, 100), _row("kpa", 0.985, 80), _row("static", 1.0, 150)])
    assert best_rule(rows, 0.98).policy == "kpa"
    assert best_rule(rows, 0.995).policy == "static"
    assert best_rule(rows, 1.01).policy == "static"  # none meets it: the highest attainment


@pytest.mark.parametrize(
    ("learned", "goal"),
    [
        ((0.99, 60.0), True),  # as good, 0.75x the rule, 1.2x the bound
        ((0.99, 70.0), False),  # 0.875x the rule: not cheap enough
        ((0.95, 60.0), False),  # fewer intervals meet the SLIs
        ((0.985, 60.0), True),  # within the intervals (0.005 + 0.005 >= 0.99 - 0.985)
    ],
)
def test_verdict_is_the_issues_goal(learned, goal):
    summary = pd.DataFrame(
        [
            _row("kpa", 0.99, 80.0, 0.005),
            _row("hpa", 0.99, 100.0, 0.005),
            _row(LEARNED, *learned, att_ci=0.005, held_out="yes"),
            _row("bound", 1.0, 50.0),
        ]
    )
    (v,) = verdicts(summary, 0.98).to_dict("records")
    assert v["best_rule"] == "kpa" and v["goal_met"] is goal
    assert math.isclose(v["learned_vs_rule_cost"], learned[1] / 80.0)
    assert math.isclose(v["learned_vs_bound_cost"], learned[1] / 50.0)


def test_leaving_a_family_out_keeps_the_others_weights_and_evaluations():
    hp = load_hyperparams()
    out = without_family(hp, "bursty")
    spec = out.randomization
    assert "bursty" not in spec.scenarios and "bursty" not in out.evaluation.scenarios
    before = dict(zip(hp.randomization.scenarios, hp.randomization.weights(), strict=True))
    after = dict(zip(spec.scenarios, spec.weights(), strict=True))
    assert after == {s: w for s, w in before.items() if s != "bursty"}


def test_the_shipped_model_says_what_it_was_trained_on():
    from models import DEFAULT_MODEL_DIR

    seen = trained_families(DEFAULT_MODEL_DIR)
    assert seen is not None and "bursty" in seen and "mmpp" not in seen and "worldcup-holdout" not in seen


def test_one_model_over_families(tmp_path):
    cfg = small_config(simulation={"duration_s": 300.0})
    results, verdict = run_generalization(["step", "mmpp"], [0, 1], tmp_path, cfg, workers=1)
    assert set(results.policy) == {"hpa", "kpa", "keda", "predictive", "static", LEARNED, "bound"}
    held = dict(zip(verdict.scenario, verdict.held_out, strict=True))
    assert held == {"step": "no", "mmpp": "yes"}  # the shipped model never saw mmpp
    text = (tmp_path / "summary.md").read_text()
    assert "## Verdicts" in text and "## mmpp" in text and "Goal met on" in text
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    assert (tmp_path / "run.yaml").is_file() and (tmp_path / "verdicts.csv").is_file()


def test_leave_one_family_out_trains_without_the_family(tmp_path):
    cfg = small_config(simulation={"duration_s": 300.0})
    hp = load_hyperparams(overrides=TINY)
    _, verdict = run_generalization(["step"], [0, 1], tmp_path, cfg, leave_one_out_steps=256, hyperparams=hp, workers=1)
    meta = json.loads((tmp_path / "models" / "without-step" / "model_meta.json").read_text())
    assert "step" not in meta["hyperparams"]["randomization"]["scenarios"]
    assert meta["hyperparams"]["n_timesteps"] == 256
    assert list(verdict.held_out) == ["yes"]


def test_cli_errors_are_one_line(capsys, tmp_path):
    assert main(["generalization", "--families", "nope", "--out", str(tmp_path / "a")]) == 2
    assert main(["generalization", "--leave-one-out-steps", "0", "--out", str(tmp_path / "b")]) == 2
    assert main(["generalization", "--policy", str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 3 and "Traceback" not in err
