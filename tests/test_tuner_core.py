"""The tuner's pure decision: modes, every fallback cause and its clearing, operator actions, bounds.
(That the simulator and the live loop decide through it alike: tests/test_one_decision_path.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.guard import GuardState
from control.policies import Policy
from control.tuner import Mode, PermissionDenied, TunerInput, TunerState, change_mode, decide, override
from models.registry import make_policy
from tests.conftest import make_snapshot, small_config

CFG = small_config()
HPA = make_policy("hpa", CFG)
OBS = np.full(15, 0.1, dtype=np.float32)


def const(value: float, name: str = "const") -> Policy:
    return Policy(name, lambda ctx, state: (value, state))


def raising() -> Policy:
    def decide_fn(ctx, state):
        raise RuntimeError("model exploded")

    return Policy("boom", decide_fn)


def inp(now_s: float = 1000.0, current: int = 100, snap=None, prev=None, obs=OBS, problem=None) -> TunerInput:
    snap = make_snapshot(time_s=now_s) if snap is None else snap
    return TunerInput(
        now_s=now_s,
        current=current,
        snapshot=snap,
        previous=prev,
        observation=obs,
        metrics_problem=problem,
        nominal_service_time_s=1.0,
        config=CFG,
    )


def start(mode: Mode = Mode.ACTIVE, policy: Policy | None = None) -> TunerState:
    return TunerState.initial(mode, policy, HPA)


def test_active_applies_the_guarded_policy_output():
    rec, state = decide(inp(), start(), const(120), HPA)
    assert (rec.reason, rec.controller, rec.applied, rec.fallback) == ("policy", "const", 120, False)
    assert rec.policy_output == 120 and rec.guard_applied == 120 and rec.observation == pytest.approx(list(OBS))
    assert state.guard_state.last_change_s == 1000.0
    # a scale-down right after a change is held by the guard's cooldown, and the record says so
    rec, _ = decide(inp(now_s=1015.0, current=120), state, const(90), HPA)
    assert rec.applied == 120 and "cooldown" in rec.guard_reasons and rec.reason == "policy"


def test_model_problem_falls_back_to_hpa_and_returns_when_it_clears():
    state = start()
    rec, state = decide(inp(), state, None, HPA, policy_problem="model.zip not found")
    assert rec.fallback and rec.controller == "hpa" and rec.reason == "fallback:model:model.zip not found"
    rec, state = decide(inp(now_s=1015.0, current=rec.applied), state, const(rec.applied), HPA)
    assert not rec.fallback and rec.reason == "policy"


def test_unreadable_metrics_hold_and_nan_metrics_use_the_hpa():
    nothing = TunerInput(
        now_s=1000.0,
        current=100,
        snapshot=None,
        previous=None,
        observation=None,
        metrics_problem="stale: autotune_backlog_tasks 42 s old",
        nominal_service_time_s=1.0,
        config=CFG,
    )
    rec, _ = decide(nothing, start(), const(300), HPA)
    assert rec.applied == 100 and rec.controller == "hold" and rec.fallback
    assert rec.reason == "fallback:metrics:stale: autotune_backlog_tasks 42 s old"
    nan_obs = OBS.copy()
    nan_obs[3] = np.nan
    rec, _ = decide(inp(obs=nan_obs, problem="NaN in the observation"), start(), const(300), HPA)
    assert rec.fallback and rec.controller == "hpa" and rec.reason.startswith("fallback:metrics:NaN")
    assert rec.policy_output is None  # the policy was not asked on a broken observation


def test_policy_error_falls_back_and_nan_output_is_held_by_the_guard():
    rec, _ = decide(inp(), start(), raising(), HPA)
    assert rec.fallback and rec.reason == "fallback:policy-error:RuntimeError: model exploded"
    rec, _ = decide(inp(), start(), const(math.nan), HPA)
    assert rec.applied == 100 and "invalid_proposal" in rec.guard_reasons and not rec.fallback
    rec, _ = decide(inp(), start(), const(1e9), HPA)
    assert rec.applied <= CFG.cluster.max_concurrency and "max_step" in rec.guard_reasons


def test_emergency_hands_over_to_the_hpa():
    prev = make_snapshot(time_s=985.0, backlog_by_priority=(50, 50, 50))
    breach = make_snapshot(time_s=1000.0, backlog_by_priority=(200, 200, 200), max_backlog=600)
    rec, _ = decide(inp(snap=breach, prev=prev), start(), const(50), HPA)
    assert rec.fallback and rec.reason == "fallback:emergency" and rec.emergency
    assert rec.applied >= 100 * CFG.guard.emergency_scale_up_factor  # rescued, never scaled down


def test_shadow_applies_the_controller_and_records_the_candidate():
    state = start(Mode.SHADOW)
    rec, state = decide(inp(), state, const(180), HPA)
    hpa_alone, _ = decide(inp(), start(), None, HPA, policy_problem="x")
    assert rec.mode == "shadow" and rec.controller == "hpa" and rec.applied == hpa_alone.applied
    assert rec.policy_output == 180 and rec.guard_applied == 180  # what the candidate would have done
    # the candidate's cooldowns are its own: the applied controller's guard state follows the applied value
    assert state.shadow_guard_state.last_change_s == 1000.0


def test_off_never_changes_concurrency_but_records_the_would_be_value():
    rec, _ = decide(inp(), start(Mode.OFF), const(150), HPA)
    assert rec.applied == rec.previous == 100 and rec.policy_output == 150 and rec.reason == "off"


def test_operator_role_for_mode_and_override():
    state = start()
    with pytest.raises(PermissionDenied, match="'mallory'.*operator"):
        change_mode(state, Mode.OFF, "mallory", frozenset({"submitter"}), 1.0, 100)
    with pytest.raises(PermissionDenied, match="operator"):
        override(state, 50, "mallory", frozenset(), 1.0, 100, CFG.cluster)
    state2, rec = change_mode(state, Mode.SHADOW, "olga", frozenset({"operator"}), 1.0, 100)
    assert state2.mode is Mode.SHADOW and rec.reason == "mode:active->shadow" and rec.who == "olga"
    with pytest.raises(ValueError, match="outside the cluster's bounds"):
        override(state, 10_000, "olga", frozenset({"operator"}), 1.0, 100, CFG.cluster)
    state3, rec = override(state, 40, "olga", frozenset({"operator"}), 7.0, 100, CFG.cluster)
    assert rec.applied == 40 and rec.reason == "override" and state3.guard_state.last_change_s == 7.0


@settings(max_examples=200, deadline=None)
@given(
    proposal=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**6), 10**6)),
    current=st.integers(4, 400),
    backlog=st.integers(0, 5000),
    mode=st.sampled_from(list(Mode)),
    last_change=st.floats(0, 2000),
)
def test_applied_value_never_leaves_the_bounds(proposal, current, backlog, mode, last_change):
    snap = make_snapshot(time_s=1000.0, backlog_by_priority=(backlog, 0, 0), target_concurrency=current)
    state = TunerState(mode=mode, guard_state=GuardState(last_change))
    rec, _ = decide(inp(snap=snap, current=current), state, const(float(proposal)), HPA)
    lo, hi = CFG.cluster.min_concurrency, CFG.cluster.max_concurrency
    assert lo <= rec.applied <= hi or (mode is Mode.OFF and rec.applied == current)
