"""Residual actions (``control.action_base: rule``): the factor scales a calibrated rule's proposal.

Always choosing 1.0 is the rule itself, interval by interval; other factors scale its proposal; a
model trained in one mode is refused in the other; the config names a bad field.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from control.actions import factor_policy
from core.config import ConfigError
from core.observation import ENV_ID
from envs.rollout import policy_context, run_policy
from envs.scaling_env import ConcurrencyScalingEnv
from models import DEFAULT_MODEL_DIR, META_NAME, ModelError, load_model
from models.registry import agent_policy, make_policy
from tests.conftest import small_config

SIM = {"duration_s": 900.0, "peak_rate_per_s": 120.0}


def rule_config(rule: str = "kpa", **sections):
    return small_config(control={"action_base": "rule", "base_rule": rule}, simulation=SIM, **sections)


def _trajectory(res):
    return [(r.applied, r.proposed, r.guard_reasons, r.reason, r.emergency) for r in res.intervals]


@pytest.mark.parametrize("rule", ["kpa", "hpa", "predictive"])
def test_always_one_is_the_rule_itself(rule):
    cfg = rule_config(rule)
    alone = run_policy(ConcurrencyScalingEnv(cfg, scenario="flash-sale"), make_policy(rule, cfg), seed=5)
    agent = run_policy(ConcurrencyScalingEnv(cfg, scenario="flash-sale"), agent_policy(cfg, lambda ctx: 1), seed=5)
    assert _trajectory(agent) == _trajectory(alone)
    assert replace(agent.summary, policy=rule) == alone.summary
    assert len({r.applied for r in alone.intervals}) > 2  # the rule did scale: the test means something

    # the same through the Gymnasium API: env.step(1) every interval
    env = ConcurrencyScalingEnv(cfg, scenario="flash-sale")
    env.reset(seed=5)
    applied, truncated = [], False
    while not truncated:
        _, _, _, truncated, info = env.step(1)
        applied.append(info["record"].decision.applied)
    assert applied == [r.applied for r in alone.intervals]


def test_other_factors_scale_the_rule_proposal():
    cfg = rule_config("kpa")
    rule = make_policy("kpa", cfg)
    up = agent_policy(cfg, lambda ctx: 2)  # x1.2
    down = agent_policy(cfg, lambda ctx: 0)  # x0.8
    env = ConcurrencyScalingEnv(cfg, scenario="flash-sale")
    obs, _ = env.reset(seed=2)
    truncated, asked, state = False, 0, rule.initial_state
    while not truncated:
        ctx = policy_context(env, obs, rule)
        want, want_state = rule.decide(ctx, state)
        got_up, up_state = up.decide(ctx, state)
        got_down, _ = down.decide(ctx, state)
        assert got_up >= want >= got_down
        assert got_up == pytest.approx(1.2 * want) and got_down == pytest.approx(0.8 * want)
        assert up_state == want_state  # the base rule's own state, whatever the factor
        obs, _, _, truncated, _ = env.step_policy(rule)
        state = env.tuner_state.policy_state
        asked += 1
    assert asked == env.n_steps


def test_current_mode_scales_the_concurrency_in_force():
    cfg = small_config()
    env = ConcurrencyScalingEnv(cfg)
    obs, _ = env.reset(seed=0, options={"concurrency": 3})
    ctx = policy_context(env, obs, make_policy("static", cfg))
    assert factor_policy(lambda c: 2, (0.8, 1.0, 1.2), None).decide(ctx, None) == (4.0, None)  # at least one slot
    assert agent_policy(cfg, lambda c: 1).params == {"action_base": "current"}
    assert agent_policy(rule_config("hpa"), lambda c: 1).params == {"action_base": "rule", "base_rule": "hpa"}


def test_a_model_of_the_other_action_base_is_refused(tmp_path):
    # the shipped model's meta predates the field: it means "current", and loads as before
    _, meta = load_model(DEFAULT_MODEL_DIR, ENV_ID, (0.8, 1.0, 1.2))
    assert meta.action_base == "current" and meta.base_rule is None
    with pytest.raises(ModelError) as err:
        make_policy("ppo", rule_config("kpa"))
    msg = str(err.value)
    assert "control.action_base 'current'" in msg and "control.action_base 'rule'" in msg and "'kpa'" in msg

    residual = tmp_path / "residual"
    shutil.copytree(DEFAULT_MODEL_DIR, residual)
    data = json.loads((residual / META_NAME).read_text())
    (residual / META_NAME).write_text(json.dumps({**data, "action_base": "rule", "base_rule": "kpa"}))
    with pytest.raises(
        ModelError, match=r"trained with control.action_base 'rule'.*config has control.action_base 'current'"
    ):
        make_policy(str(residual), small_config())
    with pytest.raises(ModelError, match="trained to scale control.base_rule 'kpa', config has 'hpa'"):
        make_policy(str(residual), rule_config("hpa"))
    policy = make_policy(str(residual), rule_config("kpa"))  # the mode it was (labelled as) trained in
    assert policy.params["action_base"] == "rule" and policy.initial_state is not None


@pytest.mark.parametrize(
    ("control", "words"),
    [
        ({"action_base": "residual"}, "action_base"),
        ({"base_rule": "oracle"}, "unknown base rule 'oracle'"),
        ({"attainment_target": 0.0}, "attainment_target"),
        ({"attainment_target": 1.5}, "attainment_target"),
    ],
)
def test_bad_action_settings_name_the_field(control, words):
    with pytest.raises(ConfigError, match=words):
        small_config(control=control)
