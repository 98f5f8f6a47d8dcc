"""Calibration of the rules alike: one search space per rule searched with one budget, selection of
the cheapest setting meeting the SLIs, calibrated and ``-default`` names, bad settings named at load,
and a tiny real run read back by the registry."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import yaml

import models.calibration as calibration
from models.calibration import RULES, CalibrationFileError, calibration_cluster, rule_policy, rule_settings
from models.registry import BASELINES, make_policy
from tests.conftest import small_config
from training.calibrate import Knob, default_params, run_calibration, search_rule, search_space, select


def fake_evaluate(calls: list[tuple[str, dict]]):
    """Synthetic outcomes, no simulation: cost grows with a hash of the setting, attainment 1."""

    def evaluate(rule, settings):
        calls.append((rule, dict(settings)))
        cost = float(abs(hash(tuple(sorted(settings.items())))) % 1000)
        return [{"scenario": s, "seed": 0, "sli_attainment": 1.0, "cost_slot_hours": cost} for s in ("a", "b")]

    return evaluate


# -- the search ---------------------------------------------------------------------------------
def test_every_rule_has_a_search_space_of_its_own_settings():
    cfg = small_config()
    space = search_space(cfg)
    assert tuple(space) == RULES
    for rule, knobs in space.items():
        assert 1 <= len({k.field for k in knobs}) <= 4, rule
        defaults = rule_policy(rule, {}, cfg).params
        for k in knobs:  # every knob is a setting of the rule, and its range holds the anchor's default
            assert k.field in defaults, (rule, k.field)
            if k.when is None or defaults.get(k.when[0]) == k.when[1]:
                assert k.contains(defaults[k.field]) or rule == "static", (rule, k.field)


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_gets_the_same_budget_of_distinct_valid_settings(rule):
    cfg = small_config()
    knobs = search_space(cfg)[rule]
    calls: list[tuple[str, dict]] = []
    settings_of, runs, proposals = search_rule(rule, knobs, cfg, fake_evaluate(calls), 12, 0.98, seed=0)
    assert len(settings_of) == 12 and len(calls) == 12 and proposals >= 12
    keys = {tuple(sorted(s.items())) for s in settings_of}
    assert len(keys) == 12  # a repeated proposal is not run again and does not count
    assert sorted(runs.trial.unique()) == list(range(12)) and len(runs) == 12 * 2
    # the first trial is the anchor's defaults (those inside the ranges)
    defaults = rule_policy(rule, {}, cfg).params
    assert all(
        settings_of[0][k.field] == defaults[k.field] for k in knobs if k.param in default_params(rule, knobs, cfg)
    )
    for settings in settings_of:
        for k in knobs:
            if k.field in settings and (k.when is None or settings.get(k.when[0]) == k.when[1]):
                assert k.contains(settings[k.field]), (rule, settings)
        rule_policy(rule, settings, cfg)  # every setting tried is a valid one


def test_the_search_repeats_with_its_seed():
    cfg = small_config()
    runs = [search_rule("kpa", search_space(cfg)["kpa"], cfg, fake_evaluate([]), 15, 0.98, seed=3)[0] for _ in (1, 2)]
    assert runs[0] == runs[1]
    other = search_rule("kpa", search_space(cfg)["kpa"], cfg, fake_evaluate([]), 15, 0.98, seed=4)[0]
    assert other != runs[0]


def test_a_space_smaller_than_the_budget_gives_what_it_holds():
    cfg = small_config(
        cluster={"min_concurrency": 4, "max_concurrency": 8}, tasks={"order_processing": {"concurrency": 6}}
    )
    settings_of, _, proposals = search_rule("static", search_space(cfg)["static"], cfg, fake_evaluate([]), 10, 0.98)
    assert sorted(s["level"] for s in settings_of) == [4, 5, 6, 7, 8] and proposals == 10 * 20


def test_knob_contains_its_grid_only():
    k = Knob("target", 0.4, 1.0, step=0.05)
    assert k.contains(0.7) and k.contains(0.4) and k.contains(1.0)
    assert not k.contains(0.71) and not k.contains(1.05) and not k.contains("0.7") and not k.contains(True)
    assert Knob("metric", choices=("utilization", "backlog")).contains("backlog")


# -- selection ----------------------------------------------------------------------------------
def frame(rows):
    return pd.DataFrame(
        [
            {"trial": t, "scenario": s, "seed": seed, "sli_attainment": a, "cost_slot_hours": c}
            for t, s, seed, a, c in rows
        ]
    )


def test_select_takes_the_cheapest_trial_meeting_the_criterion_on_every_scenario():
    runs = frame(
        [
            (0, "a", 0, 0.90, 5),  # cheapest, but misses on a
            (0, "b", 0, 1.00, 5),
            (1, "a", 0, 0.995, 8),
            (1, "b", 0, 1.00, 8),
            (2, "a", 0, 1.00, 9),
            (2, "b", 0, 1.00, 9),
            (3, "a", 0, 1.00, 7),  # cheaper than 1 on average, but its mean over seeds on a misses
            (3, "a", 1, 0.97, 7),
            (3, "b", 0, 1.00, 7),
        ]
    )
    best = select(runs, 0.99)
    assert best["trial"] == 1 and best["meets_slis"] and best["cost_slot_hours"] == 16
    assert best["min_attainment"] == 0.995 and best["mean_attainment"] == pytest.approx(0.9975)
    # nobody meets it: the best worst-scenario attainment, the cheaper of those tied
    none = select(runs, 1.0 + 1e-9)
    assert not none["meets_slis"] and none["trial"] == 2


def test_select_breaks_cost_ties_by_the_earlier_trial():
    runs = frame([(0, "a", 0, 1.0, 5), (1, "a", 0, 1.0, 4), (2, "a", 0, 1.0, 4)])
    assert select(runs, 0.98)["trial"] == 1


# -- names: calibrated and defaults ---------------------------------------------------------------
CALIBRATED = {
    "hpa": {"metric": "backlog", "target": 12, "scale_down_stabilization_s": 120, "scale_up_percent": 50},
    "kpa": {"target_utilisation": 0.85, "stable_window_s": 120, "panic_threshold_percentage": 300},
    "keda": {"queue_length": 7, "polling_interval_s": 15, "scale_down_stabilization_s": 60},
    "predictive": {"target_utilisation": 0.8, "extra_lead_s": 30, "alpha": 0.2, "beta": 0.1},
    "static": {"level": 140},
}


def write_calibration(path, cfg, entries):
    outcome = {"min_attainment": 0.99, "mean_attainment": 0.995, "cost_slot_hours": 100.0, "meets_slis": True}
    data = {rule: {**settings, **outcome} for rule, settings in entries.items()}
    path.write_text(yaml.safe_dump({**data, "cluster": calibration_cluster(cfg)}), encoding="utf-8")
    return path


@pytest.fixture
def calibrated(tmp_path, monkeypatch):
    cfg = small_config()
    path = write_calibration(tmp_path / "calibration.yaml", cfg, CALIBRATED)
    monkeypatch.setattr(calibration, "CALIBRATION_FILE", path)
    return cfg


@pytest.mark.parametrize("rule", RULES)
def test_plain_names_run_the_calibrated_settings_and_default_names_the_defaults(calibrated, rule):
    cfg = calibrated
    assert rule in BASELINES and f"{rule}-default" in BASELINES
    plain, default = make_policy(rule, cfg), make_policy(f"{rule}-default", cfg)
    assert (plain.name, default.name) == (rule, f"{rule}-default")
    anchor = rule_policy(rule, {}, cfg).params
    for field, value in CALIBRATED[rule].items():
        assert plain.params[field] == value, field
        assert default.params[field] == anchor[field] != value, field
    assert default.params == anchor


def test_the_defaults_are_the_anchors():
    cfg = small_config()
    hpa = make_policy("hpa-default", cfg).params
    assert (hpa["metric"], hpa["target"], hpa["scale_down_stabilization_s"], hpa["scale_up_percent"]) == (
        "utilization",
        0.7,
        300.0,
        100.0,
    )
    assert make_policy("kpa-default", cfg).params["stable_window_s"] == 60.0
    assert make_policy("keda-default", cfg).params["queue_length"] == 20.0
    assert make_policy("predictive-default", cfg).params["extra_lead_s"] == 0.0
    assert make_policy("static-default", cfg).params["level"] == cfg.task.concurrency


def test_without_a_calibration_for_these_bounds_plain_names_run_the_defaults(calibrated):
    other = small_config(cluster={"max_concurrency": 300})
    for rule in RULES:
        assert make_policy(rule, other).params == make_policy(f"{rule}-default", other).params, rule


def test_a_rule_left_out_of_the_file_runs_its_defaults(tmp_path, monkeypatch):
    cfg = small_config()
    path = write_calibration(tmp_path / "calibration.yaml", cfg, {"static": {"level": 140}})
    monkeypatch.setattr(calibration, "CALIBRATION_FILE", path)
    assert make_policy("kpa", cfg).params == make_policy("kpa-default", cfg).params
    assert make_policy("static", cfg).params["level"] == 140


# -- bad settings ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rule, field, value",
    [
        ("hpa", "target", 0.0),
        ("hpa", "metric", "cpu"),
        ("hpa", "scale_up_percent", -10),
        ("hpa", "scale_down_stabilisation_s", 60),  # not a field (British spelling)
        ("kpa", "target_utilisation", 2.0),
        ("kpa", "stable_window_s", "a minute"),
        ("keda", "polling_interval_s", 0),
        ("keda", "queue_lenght", 5),
        ("predictive", "alpha", 0.0),
        ("predictive", "extra_lead_s", -15),
        ("static", "level", 0),
        ("static", "levels", 10),
    ],
)
def test_a_bad_setting_fails_at_load_naming_file_rule_and_field(tmp_path, monkeypatch, rule, field, value):
    cfg = small_config()
    entries = {r: dict(s) for r, s in CALIBRATED.items()}
    entries[rule][field] = value
    path = write_calibration(tmp_path / "calibration.yaml", cfg, entries)
    monkeypatch.setattr(calibration, "CALIBRATION_FILE", path)
    for name in ("static", rule):  # whichever name is asked for, the file is checked whole
        with pytest.raises(CalibrationFileError) as err:
            make_policy(name, cfg)
        message = str(err.value)
        assert str(path) in message and f"rule {rule!r}" in message and f"field {field!r}" in message, message


def test_the_cli_reports_a_bad_calibration_in_one_line(tmp_path, monkeypatch, capsys):
    from autotune.cli import main

    cfg = small_config()
    entries = {**CALIBRATED, "kpa": {**CALIBRATED["kpa"], "panic_threshold_percentage": 50}}
    monkeypatch.setattr(calibration, "CALIBRATION_FILE", write_calibration(tmp_path / "c.yaml", cfg, entries))
    code = main(["simulate", "--scenario", "step", "--policy", "hpa", "--duration-s", "300"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "c.yaml" in err and "rule 'kpa'" in err and "panic_threshold_percentage" in err


def test_outcome_keys_are_not_settings():
    entry = {"level": 5, "min_attainment": 1.0, "cost_slot_hours": 3.0, "meets_slis": True, "trials": [], "search": {}}
    assert rule_settings(entry) == {"level": 5}


# -- a tiny real calibration ------------------------------------------------------------------------
def test_a_tiny_calibration_writes_a_file_the_registry_reads_back(tmp_path, monkeypatch, capsys):
    cfg = small_config(simulation={"duration_s": 300.0})
    out = tmp_path / "calibration.yaml"
    progress: list[tuple[int, int]] = []
    result = run_calibration(
        cfg, ["step"], [0], 0.9, out, trials=3, workers=1, on_progress=lambda d, t: progress.append((d, t))
    )
    assert progress[-1] == (5 * 3, 5 * 3)
    data = yaml.safe_load(out.read_text())
    assert data["criterion"] == {"attainment": 0.9, "scenarios": ["step"], "seeds": [0], "duration_s": 300.0}
    assert data["cluster"] == calibration_cluster(cfg) and "git_revision" in data["provenance"]
    for rule in RULES:
        entry = data[rule]
        assert entry["search"]["method"] == "optuna-tpe" and entry["search"]["trials"] == 3, rule
        assert len(entry["trials"]) == 3 and set(entry["per_scenario"]) == {"step"}
        assert isinstance(entry["meets_slis"], bool) and 0 <= entry["min_attainment"] <= 1
        chosen = entry["trials"][entry["search"]["chosen_trial"]]
        assert chosen["cost_slot_hours"] == entry["cost_slot_hours"]
        assert {k: chosen[k] for k in rule_settings(entry)} == rule_settings(entry)
    assert result["hpa"] == data["hpa"]

    monkeypatch.setattr(calibration, "CALIBRATION_FILE", out)
    for rule in RULES:
        params = make_policy(rule, cfg).params
        assert all(params[k] == v for k, v in rule_settings(data[rule]).items()), rule

    from autotune.cli import main

    assert main(["policies"]) == 0  # the default config's cluster is the one calibrated for
    printed = capsys.readouterr().out
    assert "| predictive | target_utilisation=" in printed and "Knobs searched" in printed

    # the same seeds and search seed give the same file, but for its provenance
    again = run_calibration(cfg, ["step"], [0], 0.9, tmp_path / "again.yaml", trials=3, workers=1)
    assert {r: again[r] for r in RULES} == {r: result[r] for r in RULES}

    with pytest.raises(ValueError, match="held back"):
        run_calibration(cfg, ["worldcup-holdout"], [0], 0.9, out)


def test_the_cli_refuses_a_budget_below_one(capsys):
    from autotune.cli import main

    assert main(["calibrate", "--trials", "0"]) == 2
    assert "--trials must be at least 1" in capsys.readouterr().err


def test_calibration_file_is_parsed_once_per_version(tmp_path):
    """Every environment asks for its fallback's settings: the file is read again only when it changes."""
    import shutil

    from core.config import AutotuneConfig
    from models import calibration as cal

    path = tmp_path / "calibration.yaml"
    shutil.copy(cal.CALIBRATION_FILE, path)
    cfg = AutotuneConfig()
    cal._parsed.cache_clear()
    first = cal.load_calibration(cfg, path)
    first["hpa"]["target"] = -1.0  # a caller changing its copy does not change the cache
    assert cal.load_calibration(cfg, path)["hpa"]["target"] != -1.0
    assert cal._parsed.cache_info().misses == 1
    text = path.read_text().replace("\n  level: 160\n", "\n  level: 161\n")
    path.write_text(text)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert cal.load_calibration(cfg, path)["static"]["level"] == 161
