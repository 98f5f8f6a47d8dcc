"""One decision path: the simulator's environment and the live loop decide through the same code.

A scripted scenario (a flash sale under non-default guard settings, a policy that also raises once)
runs through :class:`envs.scaling_env.ConcurrencyScalingEnv`; every interval the simulator produced is
then handed, in order, to the live path's decision code (:class:`autotune.tuning_loop.TuningLoop`: its
observation, its tuner state, its apply and record). Both must make the same decisions, interval by
interval: the same applied value, guard reasons, controller and reason, fallbacks included. The same
holds for an agent's actions stepped through :class:`envs.live_env.LiveScalingEnv` (over the live
loop, fed the simulator's intervals) and through the simulator's environment, in both action modes.
"""

from __future__ import annotations

import numpy as np
import pytest

from autotune.tuning_loop import TuningLoop
from control.policies import Policy
from envs.live_env import LiveScalingEnv
from envs.scaling_env import ConcurrencyScalingEnv
from models.registry import make_policy
from tests.conftest import small_config

GUARD = {
    "max_scale_up_fraction": 0.3,
    "max_scale_down_fraction": 0.2,
    "min_step": 2,
    "scale_down_cooldown_s": 45.0,
    "scale_up_cooldown_s": 15.0,
    "emergency_scale_up_factor": 1.5,
}


def scripted(fail_at: int) -> Policy:
    """Scales by a fixed script of factors; raises once, at interval ``fail_at``."""
    script = (1.3, 1.3, 0.7, 1.0, 0.6, 1.5, 0.9, 2.0, 0.5, 1.0)

    def decide(ctx, state):
        if state == fail_at:
            raise RuntimeError("scripted failure")
        return ctx.current * script[state % len(script)], state + 1

    return Policy("scripted", decide, initial_state=0)


def decisions_both_ways(cfg, policy_for, seed: int):
    env = ConcurrencyScalingEnv(cfg, scenario="flash-sale")
    env.reset(seed=seed, options={"concurrency": 20})
    policy = policy_for()
    sim = []
    while True:
        before = env.tuner_input()
        _, _, _, truncated, info = env.step_policy(policy)
        sim.append((before, info["record"].decision))
        if truncated:
            break

    applied = {"value": 20}
    live_records = []
    clock = {"now": 0.0}
    loop = TuningLoop(
        cfg,
        source=None,
        current=lambda: applied["value"],
        apply=lambda v: applied.__setitem__("value", v),
        policy=policy_for(),
        fallback=make_policy("hpa", cfg),
        record=live_records.append,
        nominal_service_time_s=env.sim.nominal_service_time_s,
        clock=lambda: clock["now"],
    )
    loop.observed(sim[0][0].snapshot)  # the idle interval the simulator starts from
    live = []
    for i, (before, _) in enumerate(sim):
        if i:
            snap, obs, problem = loop.observed(before.snapshot)
            assert problem is None
            np.testing.assert_array_equal(obs, before.observation)  # the same observation, too
        clock["now"] = before.now_s
        live.append(loop.decide(loop.snapshot, before.observation if i == 0 else obs, None))
    assert live_records == live
    return [d for _, d in sim], live


def _key(rec):
    return (
        rec.time_s,
        rec.previous,
        rec.policy_output,
        rec.guard_applied,
        rec.guard_reasons,
        rec.applied,
        rec.controller,
        rec.reason,
        rec.fallback,
        rec.emergency,
    )


def test_the_simulator_and_the_live_loop_make_identical_decisions():
    cfg = small_config(
        guard=GUARD,
        cluster={"min_concurrency": 4, "max_concurrency": 300},
        simulation={"duration_s": 1200.0, "peak_rate_per_s": 120.0},
    )
    sim, live = decisions_both_ways(cfg, lambda: scripted(fail_at=11), seed=4)
    assert [_key(r) for r in sim] == [_key(r) for r in live]
    reasons = {r.reason.split(":")[0] + (":" + r.reason.split(":")[1] if ":" in r.reason else "") for r in sim}
    # the scenario exercises what used to differ between the two paths
    assert "fallback:emergency" in reasons, reasons
    assert "fallback:policy-error" in reasons, reasons
    assert any("cooldown" in r.guard_reasons for r in sim) and any("max_step" in r.guard_reasons for r in sim)


def test_a_rule_policy_decides_the_same_both_ways():
    cfg = small_config(guard=GUARD, simulation={"duration_s": 900.0, "peak_rate_per_s": 100.0})
    sim, live = decisions_both_ways(cfg, lambda: make_policy("threshold", cfg), seed=1)
    assert [_key(r) for r in sim] == [_key(r) for r in live]
    assert len({r.applied for r in sim}) > 2  # it did scale


class SimulatedSession:
    """A :class:`envs.live_env.LiveSession` fed the simulator's intervals in order, deciding through
    the live loop's code (:class:`autotune.tuning_loop.TuningLoop`, as :class:`autotune.live_run.LiveRun`
    does); only the cluster is missing (a real live run needs Ray and a replay in real time)."""

    def __init__(self, cfg, snapshots, nominal_service_time_s, concurrency):
        self.cfg = cfg
        self.started_s = 0.0
        self._snaps = list(snapshots)
        self._clock = 0.0
        self._applied = concurrency
        self.records = []
        self.loop = TuningLoop(
            cfg,
            source=None,
            current=lambda: self._applied,
            apply=self._apply,
            policy=make_policy("hpa", cfg),  # the run's own policy: the env's agent replaces it
            fallback=make_policy("hpa", cfg),
            record=self.records.append,
            nominal_service_time_s=nominal_service_time_s,
            clock=lambda: self._clock,
        )

    def _apply(self, value):
        self._applied = value

    def start(self):
        pass

    def pump(self, until_s):
        pass

    def observe(self):
        snap = self._snaps.pop(0)
        self._clock = snap.time_s
        return self.loop.observed(snap)

    def decide_on(self, snap, obs, problem, policy):
        return self.loop.decide(snap, obs, problem, policy)

    @property
    def current_concurrency(self):
        return self._applied

    @property
    def previous_snapshot(self):
        return self.loop.previous

    @property
    def finished(self):
        return not self._snaps


@pytest.mark.parametrize("action_base", ["rule", "current"])
def test_the_live_env_steps_actions_as_the_simulator_env_does(action_base):
    """The same actions through ConcurrencyScalingEnv and LiveScalingEnv: the same decisions, in both
    action modes (the residual one keeps the base rule's state across intervals on both sides)."""
    cfg = small_config(
        guard=GUARD,
        control={"action_base": action_base, "base_rule": "kpa"},
        simulation={"duration_s": 900.0, "peak_rate_per_s": 120.0},
    )
    actions = [int(a) for a in np.random.default_rng(7).integers(0, 3, 60)]
    env = ConcurrencyScalingEnv(cfg, scenario="flash-sale")
    env.reset(seed=3, options={"concurrency": 20})
    snapshots, sim = [], []
    for a in actions:
        snapshots.append(env.snapshot)
        _, _, _, truncated, info = env.step(a)
        sim.append(info["record"].decision)
        if truncated:
            break
    snapshots.append(env.snapshot)

    session = SimulatedSession(cfg, snapshots, env.sim.nominal_service_time_s, 20)
    live_env = LiveScalingEnv(session)
    live_env.reset()
    live, truncated = [], False
    for a in actions[: len(sim)]:
        _, _, _, truncated, info = live_env.step(a)
        live.append(info["decision"])
    assert truncated
    assert [_key(r) for r in live] == [_key(r) for r in sim]
    assert session.records == live
    assert {r.reason for r in sim} >= {"policy"} and len({r.applied for r in sim}) > 3
