"""The constrained (Lagrangian) reward: hand-worked values, the dual ascent, and a tiny training run
that trains the multiplier (and, in the same run, a residual-action model's metadata)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from envs.rewards import constrained_reward, dual_update, reference_reward, sli_cost_reward
from envs.rollout import run_policy
from envs.scaling_env import ConcurrencyScalingEnv
from models.registry import make_policy
from tests.conftest import make_snapshot, small_config
from tests.test_training import tiny_hp
from training.randomization import RandomizedScalingEnv
from training.train import train


def test_constrained_reward_hand_worked():
    cfg = small_config()  # max_concurrency 400; SLIs: success >= 99.5%, mean time <= 5 s, backlog <= 100
    met = make_snapshot()  # 1500 slot-s over 15 s of 400 slots: cost share 0.25; all SLIs met
    assert constrained_reward(met, None, cfg, 0.0) == pytest.approx(-0.25)
    assert constrained_reward(met, None, cfg, 7.0) == pytest.approx(-0.25)  # no violation, no price
    slow = make_snapshot(mean_processing_time_s=7.5)  # 50% over the time SLI
    # violation = 1 (an SLI broken) + 0.25 x 0.5 (its relative excess) = 1.125
    assert constrained_reward(slow, None, cfg, 0.0) == pytest.approx(-0.25)
    assert constrained_reward(slow, None, cfg, 2.0) == pytest.approx(-0.25 - 2.0 * 1.125)
    # backlog 300 (excess 2) and 1% failed (excess 1): violation 1 + 0.25 x 3
    bad = make_snapshot(backlog_by_priority=(100, 200, 0), succeeded=99, failed=1)
    assert constrained_reward(bad, None, cfg, 1.0) == pytest.approx(-0.25 - 1.75)


def test_the_other_rewards_ignore_the_multiplier():
    cfg = small_config()
    prev, now = make_snapshot(), make_snapshot(mean_processing_time_s=7.5, backlog_by_priority=(10, 0, 0))
    for lam in (0.0, 1.0, 50.0):
        assert sli_cost_reward(now, prev, cfg, lam) == sli_cost_reward(now, prev, cfg)
        assert reference_reward(now, prev, cfg, lam) == reference_reward(now, prev, cfg)
    assert sli_cost_reward(make_snapshot(), None, cfg) == pytest.approx(0.875)  # as in test_env


def test_dual_update_follows_the_attainment():
    assert dual_update(1.0, attainment=0.90, target=0.99, lr=5.0) == pytest.approx(1.45)  # short: dearer
    assert dual_update(1.0, attainment=1.00, target=0.99, lr=5.0) == pytest.approx(0.95)  # above: cheaper
    assert dual_update(0.02, attainment=1.00, target=0.99, lr=5.0) == 0.0  # never below 0
    assert dual_update(0.0, attainment=1.00, target=0.99) == 0.0
    assert dual_update(1.0, attainment=0.99, target=0.99) == pytest.approx(1.0)  # on target: unchanged


def test_the_env_prices_violations_by_its_multiplier():
    cfg = small_config(control={"reward": "constrained"}, simulation={"peak_rate_per_s": 300.0})
    rewards = {}
    for lam in (0.0, 3.0):
        env = ConcurrencyScalingEnv(cfg, scenario="flash-sale")
        env.set_lagrange_multiplier(lam)
        env.reset(seed=1, options={"concurrency": 10})
        got, truncated, prev = [], False, None
        while not truncated:
            _, r, _, truncated, info = env.step(1)
            snap = info["record"].snapshot
            assert r == pytest.approx(constrained_reward(snap, prev, cfg, lam))
            got.append(r)
            prev = snap
        rewards[lam] = np.array(got)
    assert (rewards[3.0] <= rewards[0.0]).all() and (rewards[3.0] < rewards[0.0]).any()  # it did violate
    with pytest.raises(ValueError, match="Lagrange multiplier"):
        env.set_lagrange_multiplier(-1.0)
    randomized = RandomizedScalingEnv(cfg)
    randomized.set_lagrange_multiplier(2.5)
    randomized.reset(seed=0)  # a new inner env per episode keeps the price
    assert randomized.inner.lagrange_multiplier == 2.5


@pytest.fixture(scope="module")
def constrained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("constrained")
    cfg = small_config(control={"reward": "constrained", "action_base": "rule", "base_rule": "kpa"})
    train(cfg, tiny_hp(**{"lagrange.initial": 0.5, "lagrange.lr": 2.0}), seed=0, run_dir=run, progress=False)
    return run, cfg


def test_a_tiny_constrained_run_trains_and_records_the_multiplier(constrained_run):
    run, cfg = constrained_run
    lag = json.loads((run / "model_meta.json").read_text())["lagrange"]
    assert lag["target"] == 0.99 and lag["initial"] == 0.5 and lag["lr"] == 2.0
    steps = lag["per_rollout"]
    assert [s["timesteps"] for s in steps] == [256, 512]  # 2 envs x 128 steps a rollout, 512 steps
    lam = 0.5
    for s in steps:  # each rollout's step is the dual update of that rollout's attainment
        assert 0.0 <= s["attainment"] <= 1.0
        lam = dual_update(lam, s["attainment"], 0.99, 2.0)
        assert s["multiplier"] == pytest.approx(lam)
    assert lag["multiplier"] == pytest.approx(lam)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events_dir,) = (run / "tb").iterdir()
    acc = EventAccumulator(str(events_dir))
    acc.Reload()
    assert {"lagrange/multiplier", "lagrange/attainment"} <= set(acc.Tags()["scalars"])
    logged = [e.value for e in acc.Scalars("lagrange/multiplier")]
    assert logged[-1] == pytest.approx(lam, rel=1e-6)


def test_a_residual_model_records_its_action_base_and_runs_in_that_mode(constrained_run):
    run, cfg = constrained_run
    meta = json.loads((run / "model_meta.json").read_text())
    assert meta["action_base"] == "rule" and meta["base_rule"] == "kpa"
    policy = make_policy(str(run), cfg)
    res = run_policy(ConcurrencyScalingEnv(cfg), policy, seed=0)
    assert all(4 <= r.applied <= 400 for r in res.intervals)
    from models import ModelError

    with pytest.raises(ModelError, match="control.action_base 'rule'"):
        make_policy(str(run), small_config())
