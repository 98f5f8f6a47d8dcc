"""The Gymnasium environment: API conformance, determinism, guard in the loop, rewards."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs  # noqa: F401  (registers the environments)
from core.observation import ENV_ID, FEATURE_NAMES, N_FEATURES
from envs.rewards import reference_reward, sli_cost_reward
from envs.scaling_env import ConcurrencyScalingEnv
from tests.conftest import make_snapshot as _snap
from tests.conftest import small_config

REGISTERED = [env_id for env_id in gym.registry if env_id.startswith("ConcurrencyScaling")]


def test_some_env_is_registered_with_a_version():
    assert REGISTERED == [ENV_ID]


# The observation each env version gives. A new feature, or a feature defined anew, needs a new
# version: bump ENV_ID, add its features here and a line to the env's Version History.
OBSERVATION_BY_VERSION = {
    "ConcurrencyScaling-v1": (
        "backlog_high",
        "backlog_normal",
        "backlog_low",
        "retrying",
        "load_ratio",
        "failure_ratio",
        "mean_time_ratio",
        "p90_time_ratio",
        "p99_time_ratio",
        "concurrency",
        "warming",
        "utilisation",
        "backlog_trend",
        "load_trend",
        "demand",
    ),
}


def test_the_env_version_names_its_observation():
    assert OBSERVATION_BY_VERSION.get(ENV_ID) == FEATURE_NAMES, (
        f"the observation is not the one {ENV_ID} was released with: bump the version in core/observation.py"
    )
    version = ENV_ID.rsplit("-", 1)[1]
    assert f"- {version}: " in (ConcurrencyScalingEnv.__doc__ or ""), "no Version History line for it"


@pytest.mark.parametrize("env_id", REGISTERED)
def test_gymnasium_check_env(env_id):
    env = gym.make(env_id, config=small_config()).unwrapped
    gym_check_env(env, skip_render_check=True)


@pytest.mark.parametrize("env_id", REGISTERED)
def test_sb3_check_env(env_id):
    env = gym.make(env_id, config=small_config()).unwrapped
    sb3_check_env(env, warn=True)


def test_observation_matches_documented_table():
    assert N_FEATURES == 15 and len(FEATURE_NAMES) == 15
    doc = ConcurrencyScalingEnv.__doc__ or ""
    assert "Box(15,)" in doc
    for i, name in enumerate(FEATURE_NAMES):
        assert f"| {i:<5} | {name}" in doc, name


def _rollout(seed: int, actions: list[int]):
    env = ConcurrencyScalingEnv(small_config(simulation={"scenario": "flash-sale"}))
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out.append(obs)
        out.append(np.array([r, info["record"].decision.applied]))
        if term or trunc:
            break
    return np.concatenate(out)


def test_same_seed_same_episode():
    actions = list(np.random.default_rng(3).integers(0, 3, 40))
    a, b = _rollout(11, actions), _rollout(11, actions)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, _rollout(12, actions))


def test_episode_truncates_at_duration_and_needs_reset():
    env = ConcurrencyScalingEnv(small_config())
    with pytest.raises(gym.error.ResetNeeded):
        env.step(1)
    env.reset(seed=0)
    steps = 0
    while True:
        steps += 1
        _, _, term, trunc, _ = env.step(1)
        assert not term
        if trunc:
            break
    assert steps == env.n_steps == 40  # 600 s / 15 s


def test_action_factors_pass_through_the_guard():
    env = ConcurrencyScalingEnv(small_config(tasks={"order_processing": {"concurrency": 100}}))
    env.reset(seed=0)
    _, _, _, _, info = env.step(2)  # x1.2
    d = info["record"].decision
    assert d.policy_output == 120 and d.applied == 120 and d.reason == "policy"
    _, _, _, _, info = env.step(0)  # x0.8 right after a change: held by the scale-down cooldown
    d = info["record"].decision
    assert d.policy_output == 96 and d.applied == 120 and "cooldown" in d.guard_reasons


def test_configurable_factors_and_interval():
    env = ConcurrencyScalingEnv(small_config(control={"factors": [0.5, 1.0, 1.5, 2.0], "interval_s": 5.0}))
    assert env.action_space.n == 4
    env.reset(seed=0)
    _, _, _, _, info = env.step(3)
    assert info["record"].snapshot.interval_s == 5.0


def test_concurrency_never_leaves_bounds_under_random_actions():
    cfg = small_config(
        cluster={"min_concurrency": 20, "max_concurrency": 150}, tasks={"order_processing": {"concurrency": 40}}
    )
    env = ConcurrencyScalingEnv(cfg)
    env.reset(seed=5)
    rng = np.random.default_rng(5)
    for _ in range(40):
        _, _, _, trunc, info = env.step(int(rng.integers(0, 3)))
        snap = info["record"].snapshot
        assert 20 <= snap.target_concurrency <= 150
        if trunc:
            break


def test_sli_cost_reward_hand_worked():
    cfg = small_config()  # max_concurrency 400
    # all SLIs met, 100 slots of 400: 1 - 0.5 * 0.25
    assert sli_cost_reward(_snap(), None, cfg) == pytest.approx(0.875)
    # mean time 7.5 s against 5 s: excess 0.5 -> 0 - 0.25*0.5 - 0.125
    assert sli_cost_reward(_snap(mean_processing_time_s=7.5), None, cfg) == pytest.approx(-0.25)
    # backlog 300 against 100 (excess 2) and 1% failures against 0.5% (excess 1)
    r = sli_cost_reward(_snap(backlog_by_priority=(100, 200, 0), succeeded=99, failed=1), None, cfg)
    assert r == pytest.approx(-0.25 * 3 - 0.125)


def test_reference_reward_hand_worked():
    cfg = small_config()
    prev = _snap(succeeded=98, failed=2, backlog_by_priority=(0, 50, 0))
    now = _snap(succeeded=99, failed=1, backlog_by_priority=(0, 30, 0))
    # success_diff 0.01 * 100 + queue_diff 20 * 0.1
    assert reference_reward(now, prev, cfg) == pytest.approx(1.0 + 2.0)
    assert reference_reward(now, None, cfg) == 0.0


def test_unknown_scenario_and_reward_fail_at_construction():
    with pytest.raises(ValueError, match="unknown scenario 'nope'"):
        ConcurrencyScalingEnv(small_config(), scenario="nope")
    with pytest.raises(ValueError, match="unknown reward"):
        ConcurrencyScalingEnv(small_config(control={"reward": "nope"}))


def test_observation_features_hand_worked():
    import math

    from core.observation import observation_features

    cfg = small_config()  # SLOs: backlog 100, 5 s, 99.5%; max concurrency 400
    prev = _snap(backlog_by_priority=(0, 20, 0), arrivals=120)
    now = _snap(
        backlog_by_priority=(10, 50, 40),
        retrying=5,
        arrivals=150,
        succeeded=99,
        failed=1,
        mean_processing_time_s=2.5,
        p90_processing_time_s=5.0,
        p99_processing_time_s=60.0,
        target_concurrency=120,
        serving_concurrency=100,
        warming_concurrency=20,
    )
    obs = observation_features(now, prev, cfg.slis, 400, 1.0)
    # busy 150 slot-s over 100 attempts: 1.5 s per attempt; 10 arrivals/s -> 15 busy slots of demand
    expected = [
        math.log1p(0.1),
        math.log1p(0.5),
        math.log1p(0.4),
        math.log1p(0.05),
        15 / 100,
        0.01 / 0.005,
        0.5,
        1.0,
        10.0,  # p99 ratio 12 is clipped to 10
        120 / 400,
        20 / 120,
        0.1,
        (105 - 20) / 100,
        (15 - 12) / 100,
        15 / 400,
    ]
    np.testing.assert_allclose(obs, np.array(expected, dtype=np.float32), rtol=1e-6)
    # a NaN metric becomes the feature's lower bound, not a NaN input to the policy
    broken = now._replace(mean_processing_time_s=float("nan"))
    assert observation_features(broken, prev, cfg.slis, 400, 1.0)[6] == 0.0


def test_bursty_scenario_is_new_every_episode_and_reproducible():
    env = ConcurrencyScalingEnv(small_config(simulation={"scenario": "bursty"}))
    env.reset(seed=1)
    a = env.arrival_rates_per_s.copy()
    env.reset(seed=2)
    b = env.arrival_rates_per_s.copy()
    env.reset(seed=1)
    np.testing.assert_array_equal(a, env.arrival_rates_per_s)
    assert not np.array_equal(a, b)
    assert a.max() == pytest.approx(80.0)  # scaled to the configured peak
    assert a.min() > 0
