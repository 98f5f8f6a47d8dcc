"""Hyperparameter files: typed, validated at load, and every mistake named by file, entry and key."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.cli import main
from core.observation import ENV_ID
from training.ppo_hyperparams import (
    HYPERPARAMS_DIR,
    HYPERPARAMS_FILE,
    HyperparamError,
    PPOHyperparams,
    fine_tune_hyperparams,
    load_hyperparams,
)

SHIPPED = sorted(HYPERPARAMS_DIR.glob("*.yml"))


def edited(tmp_path: Path, old: str, new: str) -> Path:
    """The shipped ppo.yml with one edit: mistakes in a real file, not a toy one."""
    text = HYPERPARAMS_FILE.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path = tmp_path / "ppo.yml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def error_of(path: Path, overrides: dict | None = None) -> str:
    with pytest.raises(HyperparamError) as info:
        load_hyperparams(path, ENV_ID, overrides)
    return str(info.value)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_the_shipped_files_validate(path):
    hp = load_hyperparams(path, ENV_ID)
    assert isinstance(hp, PPOHyperparams)
    assert hp.n_steps * hp.n_envs == 2048 and hp.batch_size == 256 and hp.gamma == 0.98
    assert hp.randomization.scenarios and hp.evaluation.episodes()


def test_both_shipped_files_are_there_and_differ_where_they_say():
    assert [p.name for p in SHIPPED] == ["ppo.yml", "ppo_wide.yml"]
    narrow, wide = (load_hyperparams(p) for p in SHIPPED)
    assert narrow.randomization.time_compression == (12.0, 48.0) and not narrow.randomization.time_compression_log
    assert wide.randomization.time_compression == (12.0, 300.0) and wide.randomization.time_compression_log
    assert narrow.model_dump(exclude={"randomization"}) == wide.model_dump(exclude={"randomization"})


def test_ppo_kwargs_are_stable_baselines3_arguments():
    from stable_baselines3 import PPO

    accepted = inspect.signature(PPO.__init__).parameters
    assert set(load_hyperparams().ppo_kwargs()) <= set(accepted)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (f"{ENV_ID}: {{}}", f"{ENV_ID}: {{gamm: 0.9}}", f"{ENV_ID}: unknown key 'gamm' (did you mean 'gamma'?)"),
        ("  n_epochs: 5", "  n_epoch: 5", "default: unknown key 'n_epoch' (did you mean 'n_epochs'?)"),
        (
            "    peak_rate_per_s: [30.0, 300.0]",
            "    peak_rate: [30.0, 300.0]",
            "default: unknown key 'randomization.peak_rate' (did you mean 'randomization.peak_rate_per_s'?)",
        ),
        (
            "    seeds: [1001]",
            "    seed: [1001]",
            "default: unknown key 'evaluation.seed' (did you mean 'evaluation.seeds'?)",
        ),
        (f"{ENV_ID}: {{}}", f"{ENV_ID}: {{target_kl: 0.01}}", f"{ENV_ID}: unknown key 'target_kl'"),
    ],
)
def test_a_misspelled_key_is_named_with_its_entry_and_a_suggestion(tmp_path, old, new, expected):
    path = edited(tmp_path, old, new)
    assert error_of(path) == f"{path}: {expected}"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            f"{ENV_ID}: {{}}",
            f"{ENV_ID}: {{gamma: 1.5}}",
            f"{ENV_ID}: gamma: Input should be less than or equal to 1 (got 1.5)",
        ),
        (f"{ENV_ID}: {{}}", f"{ENV_ID}: {{gamma: 0}}", f"{ENV_ID}: gamma: Input should be greater than 0 (got 0)"),
        (
            "  gae_lambda: 0.95",
            "  gae_lambda: -0.1",
            "default: gae_lambda: Input should be greater than or equal to 0 (got -0.1)",
        ),
        (
            "  learning_rate: 3.0e-4",
            "  learning_rate: 0.0",
            "default: learning_rate: Input should be greater than 0 (got 0.0)",
        ),
        ("  n_steps: 512", "  n_steps: 0", "default: n_steps: Input should be greater than or equal to 1 (got 0)"),
        (
            "  batch_size: 256",
            "  batch_size: 1",
            "default: batch_size: Input should be greater than or equal to 2 (got 1)",
        ),
        (
            "  batch_size: 256",
            "  batch_size: 4096",
            "default: batch_size: 4096 exceeds n_steps x n_envs (2048), the steps of one update",
        ),
        (
            f"{ENV_ID}: {{}}",
            f"{ENV_ID}: {{n_envs: 1, n_steps: 64}}",  # the entry shrinks the rollout under default's batch
            "default: batch_size: 256 exceeds n_steps x n_envs (64), the steps of one update",
        ),
        (
            "    peak_rate_per_s: [30.0, 300.0]",
            "    peak_rate_per_s: [300.0, 30.0]",
            "default: randomization.peak_rate_per_s: need 0 < low <= high, got 300.0, 30.0",
        ),
        (
            "    scenarios: [flash-sale, step, bursty, worldcup]",
            "    scenarios: [flash-sale, worldcup-holdut]",
            "default: evaluation.scenarios: unknown scenario(s) ['worldcup-holdut']; choose from constant, diurnal, "
            "flash-sale, step, bursty, mmpp, onoff, flash-crowd, weekly, worldcup, worldcup-holdout or trace:PATH.csv",
        ),
    ],
)
def test_a_value_out_of_bounds_is_named(tmp_path, old, new, expected):
    path = edited(tmp_path, old, new)
    assert error_of(path) == f"{path}: {expected}"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("  n_steps: 512", "  n_steps: 512.0", "default: n_steps: Input should be a valid integer (got 512.0)"),
        ("  n_epochs: 5", "  n_epochs: five", "default: n_epochs: Input should be a valid integer (got 'five')"),
        ("  n_envs: 4", "  n_envs: true", "default: n_envs: Input should be a valid integer (got True)"),
        # YAML 1.1 reads an exponent without a dot as a string: refused, not silently coerced
        (
            "  learning_rate: 3.0e-4",
            "  learning_rate: 3e-4",
            "default: learning_rate: Input should be a valid number (got '3e-4')",
        ),
        ("  net_arch: [64, 64]", "  net_arch: 64", "default: net_arch: Input should be a valid tuple (got 64)"),
        (
            "  policy: MlpPolicy",
            "  policy: CnnPolicy",
            "default: policy: Input should be 'MlpPolicy' (got 'CnnPolicy')",
        ),
    ],
)
def test_a_wrong_type_is_named(tmp_path, old, new, expected):
    path = edited(tmp_path, old, new)
    assert error_of(path) == f"{path}: {expected}"


def test_a_missing_env_entry_is_named(tmp_path):
    path = edited(tmp_path, f"{ENV_ID}: {{}}", "ConcurrencyScaling-v0: {}")  # a file written for the old version
    assert error_of(path) == (
        f"{path}: no '{ENV_ID}:' entry (the file has: default, ConcurrencyScaling-v0); "
        f"add '{ENV_ID}: {{}}' to train it on the defaults"
    )
    bare = edited(tmp_path, f"{ENV_ID}: {{}}", f"{ENV_ID}:")  # an empty entry takes the defaults
    assert load_hyperparams(bare) == load_hyperparams()


def test_a_missing_key_names_both_entries(tmp_path):
    path = edited(tmp_path, "  gamma: 0.98", "")
    assert error_of(path) == f"{path}: {ENV_ID}: missing key 'gamma' (neither default: nor {ENV_ID}: sets it)"


def test_overrides_are_named_as_the_command_line(tmp_path):
    assert error_of(HYPERPARAMS_FILE, {"n_stepz": 3}) == "--hp: unknown key 'n_stepz' (did you mean 'n_steps'?)"
    assert error_of(HYPERPARAMS_FILE, {"randomizaton.peak_rate_per_s": [1.0, 2.0]}) == (
        "--hp: unknown key 'randomizaton' (did you mean 'randomization'?)"
    )
    assert (
        error_of(HYPERPARAMS_FILE, {"gamma.x": 1}) == "--hp: gamma.x: gamma is a single value, not a section with keys"
    )
    assert error_of(HYPERPARAMS_FILE, {"randomization.peak_rate_per_s": [3.0, 1.0]}) == (
        "--hp: randomization.peak_rate_per_s: need 0 < low <= high, got 3.0, 1.0"
    )
    hp = load_hyperparams(overrides={"randomization.peak_rate_per_s": [10.0, 20.0], "evaluation.seeds": [7]})
    assert hp.randomization.peak_rate_per_s == (10.0, 20.0) and hp.randomization.scenarios  # the rest kept
    assert hp.evaluation.episodes()[0] == {"simulation.scenario": "flash-sale", "_seed": 7}


def test_every_problem_is_reported_on_one_line(tmp_path):
    path = edited(tmp_path, f"{ENV_ID}: {{}}", f"{ENV_ID}: {{gamm: 0.9, n_epochs: 0}}")
    message = error_of(path)
    assert "\n" not in message
    assert f"{path}: {ENV_ID}: unknown key 'gamm'" in message
    assert f"{path}: {ENV_ID}: n_epochs: Input should be greater than or equal to 1 (got 0)" in message


def test_fine_tuning_hyperparameters_are_checked_too():
    hp = fine_tune_hyperparams(n_steps=4, learning_rate=1e-3, seed=2)
    assert hp.ppo_overrides() == {"n_steps": 4, "batch_size": 4, "seed": 2, "learning_rate": 1e-3}
    assert "learning_rate" not in fine_tune_hyperparams(n_steps=4).ppo_overrides()  # the model's own
    with pytest.raises(HyperparamError, match=r"^fine-tuning: n_steps: Input should be greater than or equal to 2"):
        fine_tune_hyperparams(n_steps=1)
    with pytest.raises(HyperparamError, match=r"^fine-tuning: learning_rate: Input should be greater than 0"):
        fine_tune_hyperparams(n_steps=4, learning_rate=-1.0)


def test_the_cli_gives_one_line_and_exit_code_2(tmp_path, capsys):
    path = edited(tmp_path, f"{ENV_ID}: {{}}", f"{ENV_ID}: {{gamm: 0.9}}")
    code = main(["train", "--hyperparams", str(path), "--out", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert code == 2
    assert err == f"error: {path}: {ENV_ID}: unknown key 'gamm' (did you mean 'gamma'?)\n"
    assert "Traceback" not in out + err
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_the_console_script_exits_2_without_a_traceback(tmp_path):
    path = edited(tmp_path, "  gae_lambda: 0.95", "  gae_lambda: 1.5")
    proc = subprocess.run(
        [sys.executable, "-m", "autotune.cli", "train", "--hyperparams", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: {path}: default: gae_lambda: Input should be less than or equal to 1 (got 1.5)"
    ]
