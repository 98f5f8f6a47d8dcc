"""PPO training, model files and their errors, domain randomisation. Tiny budgets throughout."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from core.config import AutotuneConfig
from core.observation import ENV_ID, N_FEATURES
from models import ModelError, load_model
from models.registry import make_policy
from tests.conftest import small_config
from training.ppo_hyperparams import HyperparamError, load_hyperparams
from training.randomization import RandomizationSpec, RandomizedScalingEnv, draw_episode
from training.train import train

TINY = {
    "n_timesteps": 512,
    "n_envs": 2,
    "n_steps": 128,
    "batch_size": 64,
    "n_epochs": 2,
    "eval_freq": 256,
    "checkpoint_freq": 512,
}


def tiny_hp(**extra):
    return load_hyperparams(overrides={**TINY, **extra})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    train(small_config(), tiny_hp(), seed=3, run_dir=run, progress=False, argv=["autotune", "train"])
    return run


def test_hyperparams_precedence_and_errors(tmp_path):
    hp = load_hyperparams(overrides={"n_steps": 64, "randomization.peak_rate_per_s": [10.0, 20.0]})
    assert hp.n_steps == 64 and hp.randomization.peak_rate_per_s == (10.0, 20.0)
    assert hp.gamma == 0.98  # from the file's default entry
    f = tmp_path / "hp.yml"
    f.write_text(
        "default: {n_envs: 2, n_timesteps: 10, n_steps: 8, batch_size: 8, n_epochs: 1, "
        "learning_rate: 0.001, gamma: 0.9, gae_lambda: 0.9, clip_range: 0.2, ent_coef: 0.0, "
        "vf_coef: 0.5, max_grad_norm: 0.5, eval_freq: 10, checkpoint_freq: 10}\n"
        f"{ENV_ID}: {{gamma: 0.95}}\n"
    )
    assert load_hyperparams(f).gamma == 0.95  # the env entry overrides default
    assert load_hyperparams(f, overrides={"gamma": 0.5}).gamma == 0.5  # the command line wins
    with pytest.raises(HyperparamError, match="unknown key 'n_stepz'"):
        load_hyperparams(overrides={"n_stepz": 3})
    with pytest.raises(HyperparamError, match="batch_size"):
        load_hyperparams(overrides={"batch_size": 100000})
    with pytest.raises(HyperparamError, match="held back"):
        load_hyperparams(overrides={"randomization.scenarios": ["worldcup-holdout"]})


def test_randomized_env_passes_check_env_and_varies():
    env = RandomizedScalingEnv(small_config())
    check_env(env, skip_render_check=True)
    rng = np.random.default_rng(0)
    draws = [draw_episode(AutotuneConfig(), RandomizationSpec(), rng) for _ in range(200)]
    scenarios = {d.overrides["simulation.scenario"] for d in draws}
    assert scenarios == {
        "constant",
        "diurnal",
        "flash-sale",
        "step",
        "bursty",
        "mmpp",
        "onoff",
        "flash-crowd",
        "weekly",
        "worldcup",
    }
    peaks = [d.overrides["simulation.peak_rate_per_s"] for d in draws]
    assert 30 <= min(peaks) < 60 and 200 < max(peaks) <= 300


def test_training_draw_weights_the_families_and_keeps_the_holdout_out():
    from collections import Counter

    from training.ppo_hyperparams import load_hyperparams
    from training.randomization import TRAINING_SCENARIO_WEIGHTS, TRAINING_SCENARIOS

    spec = RandomizationSpec()
    assert load_hyperparams().randomization.weights() == spec.weights()  # ppo.yml is the default draw
    assert "worldcup-holdout" not in spec.scenarios
    rng = np.random.default_rng(0)
    n = 8000
    counts = Counter(draw_episode(AutotuneConfig(), spec, rng).overrides["simulation.scenario"] for _ in range(n))
    total = sum(spec.weights())
    for name in TRAINING_SCENARIOS:
        expected = n * TRAINING_SCENARIO_WEIGHTS.get(name, 1.0) / total
        assert abs(counts[name] - expected) < 4 * math.sqrt(expected), (name, counts[name], expected)


def test_a_list_of_scenarios_without_weights_draws_as_before_weights():
    """A recorded config without scenario_weights (models/ppo_default's) must draw its episodes as it did:
    the uniform integer draw over its entries, a scenario listed twice weighing twice."""
    old = ("constant", "diurnal", "flash-sale", "step", "bursty", "bursty", "worldcup")
    spec = RandomizationSpec(scenarios=old)
    assert spec.weights() == [1.0] * len(old)
    for seed in range(50):  # the scenario is an episode's first draw: one uniform integer
        drawn = draw_episode(AutotuneConfig(), spec, np.random.default_rng(seed)).overrides["simulation.scenario"]
        assert drawn == old[int(np.random.default_rng(seed).integers(len(old)))]


@pytest.mark.parametrize(
    "weights, words",
    [
        ({"black-friday": 2.0}, "unknown scenario(s) ['black-friday']"),
        ({"step": -1.0}, "need weights >= 0"),
        ({"step": 0.0, "diurnal": 0.0}, "all weigh 0"),
    ],
)
def test_bad_scenario_weights_are_refused(weights, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        RandomizationSpec(scenarios=("step", "diurnal"), scenario_weights=weights)


def test_time_compression_drawn_log_uniformly_when_asked():
    rng = np.random.default_rng(0)
    spec = RandomizationSpec(time_compression=(12.0, 300.0), time_compression_log=True)
    c = np.array(
        [draw_episode(AutotuneConfig(), spec, rng).overrides["simulation.time_compression"] for _ in range(2000)]
    )
    assert c.min() >= 12 and c.max() <= 300
    # log-uniform: P(c <= 60) = ln 5 / ln 25 = 0.5; uniform would give 48 / 288 = 0.17
    assert abs((c <= 60).mean() - 0.5) < 0.04
    flat = np.array(
        [
            draw_episode(AutotuneConfig(), RandomizationSpec(time_compression=(12.0, 300.0)), rng).overrides[
                "simulation.time_compression"
            ]
            for _ in range(2000)
        ]
    )
    assert abs((flat <= 60).mean() - 48 / 288) < 0.04


def test_run_folder_is_complete(trained):
    for name in ("model.zip", "model_meta.json", "config.yml", "command.txt", "run.yaml", "evaluations.npz"):
        assert (trained / name).is_file(), name
    assert (trained / "tb").is_dir()
    meta = json.loads((trained / "model_meta.json").read_text())
    assert meta["env_id"] == ENV_ID and meta["seed"] == 3
    assert meta["total_timesteps"] == 512


def test_same_seed_same_policy(trained, tmp_path):
    again = tmp_path / "again"
    train(small_config(), tiny_hp(), seed=3, run_dir=again, progress=False)
    other = tmp_path / "other"
    train(small_config(), tiny_hp(), seed=4, run_dir=other, progress=False)
    obs = np.random.default_rng(0).uniform(0, 2, (64, N_FEATURES)).astype(np.float32)
    m1, _ = load_model(trained, ENV_ID, (0.8, 1.0, 1.2))
    m2, _ = load_model(again, ENV_ID, (0.8, 1.0, 1.2))
    m3, _ = load_model(other, ENV_ID, (0.8, 1.0, 1.2))
    a1, a2, a3 = (m.predict(obs, deterministic=True)[0] for m in (m1, m2, m3))
    np.testing.assert_array_equal(a1, a2)
    p1 = m1.policy.get_distribution(m1.policy.obs_to_tensor(obs)[0]).distribution.probs.detach().numpy()
    p3 = m3.policy.get_distribution(m3.policy.obs_to_tensor(obs)[0]).distribution.probs.detach().numpy()
    assert not np.allclose(p1, p3)


def test_trained_model_runs_as_a_policy_through_the_guard(trained):
    from envs.rollout import run_policy
    from envs.scaling_env import ConcurrencyScalingEnv

    cfg = small_config(cluster={"max_concurrency": 150})
    policy = make_policy(str(trained / "model.zip"), cfg)
    res = run_policy(ConcurrencyScalingEnv(cfg), policy, seed=0)
    assert all(4 <= r.applied <= 150 for r in res.intervals)


def test_bad_model_files_give_one_clear_error(trained, tmp_path):
    cfg = small_config()
    with pytest.raises(ModelError, match="model file not found"):
        make_policy(str(tmp_path / "nope" / "model.zip"), cfg)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "model.zip").write_bytes(b"not a zip at all")
    with pytest.raises(ModelError, match="not a zip archive"):
        make_policy(str(junk / "model.zip"), cfg)
    # a zip that is not a model, with valid metadata
    import shutil
    import zipfile

    broken = tmp_path / "broken"
    broken.mkdir()
    with zipfile.ZipFile(broken / "model.zip", "w") as z:
        z.writestr("data", "{}")
    shutil.copy(trained / "model_meta.json", broken / "model_meta.json")
    with pytest.raises(ModelError, match="cannot load the model"):
        make_policy(str(broken / "model.zip"), cfg)
    # metadata for another observation space or env version
    old = tmp_path / "old"
    shutil.copytree(trained, old)
    meta = json.loads((old / "model_meta.json").read_text())
    (old / "model_meta.json").write_text(json.dumps({**meta, "feature_names": meta["feature_names"][:14]}))
    with pytest.raises(ModelError, match="observes 14 features"):
        make_policy(str(old), cfg)
    (old / "model_meta.json").write_text(json.dumps({**meta, "env_id": "ConcurrencyScaling-v9"}))
    with pytest.raises(ModelError, match="trained for ConcurrencyScaling-v9"):
        make_policy(str(old), cfg)
    (old / "model_meta.json").unlink()
    with pytest.raises(ModelError, match="metadata missing"):
        make_policy(str(old), cfg)
    # factors the model was not trained for
    with pytest.raises(ModelError, match="picks factors"):
        make_policy(str(trained), small_config(control={"factors": [0.5, 1.0, 2.0]}))


def test_the_shipped_model_is_relabelled_and_a_v0_label_is_refused(tmp_path):
    import shutil

    from models import BEST_NAME, DEFAULT_MODEL_DIR, META_NAME

    model, meta = load_model(DEFAULT_MODEL_DIR, ENV_ID, (0.8, 1.0, 1.2))
    assert meta.env_id == ENV_ID == "ConcurrencyScaling-v1"
    assert model.observation_space.shape == (N_FEATURES,)
    assert "trained as ConcurrencyScaling-v0" in meta.extra["env_id_history"]
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(DEFAULT_MODEL_DIR / BEST_NAME, old / BEST_NAME)
    data = json.loads((DEFAULT_MODEL_DIR / META_NAME).read_text())
    (old / META_NAME).write_text(json.dumps({**data, "env_id": "ConcurrencyScaling-v0"}))
    with pytest.raises(
        ModelError, match="model trained for ConcurrencyScaling-v0, this environment is ConcurrencyScaling-v1"
    ):
        load_model(old, ENV_ID, (0.8, 1.0, 1.2))


def test_model_of_another_observation_space_is_refused(tmp_path):
    import gymnasium as gym
    from stable_baselines3 import PPO

    from models import write_meta

    folder = tmp_path / "cartpole"
    folder.mkdir()
    PPO("MlpPolicy", gym.make("CartPole-v1"), n_steps=64, batch_size=32, device="cpu").save(folder / "model.zip")
    write_meta(folder, ENV_ID, (0.8, 1.0, 1.2))
    with pytest.raises(ModelError, match=r"observations of shape \(4,\)"):
        make_policy(str(folder), small_config())
