"""The concurrency guard: hand-worked cases and a property test that bounds always hold."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from control.guard import GuardContext, GuardState, guard, scale_concurrency
from core.config import ClusterConfig, GuardSettings

CLUSTER = ClusterConfig(min_concurrency=4, max_concurrency=400)
SETTINGS = GuardSettings()


def ctx(current: int, now_s: float = 1000.0, violated: bool = False, growing: bool = False) -> GuardContext:
    return GuardContext(now_s=now_s, current=current, sli_violated=violated, backlog_growing=growing)


def test_scale_concurrency_moves_at_least_one_slot():
    assert scale_concurrency(2, 1.2) == 3  # round(2.4) == 2 would be stuck
    assert scale_concurrency(2, 0.8) == 1
    assert scale_concurrency(100, 1.2) == 120
    assert scale_concurrency(100, 0.8) == 80
    assert scale_concurrency(100, 1.0) == 100


def test_in_bounds_proposal_passes_unchanged():
    d = guard(ctx(100), 120, GuardState(), SETTINGS, CLUSTER)
    assert d.applied == 120 and d.reasons == () and not d.overridden
    assert d.state.last_change_s == 1000.0


def test_bounds():
    d = guard(ctx(398), 420, GuardState(), SETTINGS, CLUSTER)
    assert d.applied == 400 and d.reasons == ("max_bound",)
    d = guard(ctx(5), 2, GuardState(), SETTINGS, CLUSTER)
    assert d.applied == 4 and d.reasons == ("min_bound",)


def test_max_step_limits_up_and_down():
    d = guard(ctx(100), 350, GuardState(), SETTINGS, CLUSTER)
    assert d.applied == 200 and d.reasons == ("max_step",)  # at most +100%
    d = guard(ctx(100), 10, GuardState(), SETTINGS, CLUSTER)
    assert d.applied == 50 and d.reasons == ("max_step",)  # at most -50%
    d = guard(ctx(2 + 4), 20, GuardState(), SETTINGS, CLUSTER)
    assert d.applied == 12  # +100% of 6 is 12, above the min_step of 4


def test_scale_down_cooldown_after_a_change():
    state = GuardState(last_change_s=980.0)  # 20 s ago, cooldown is 60 s
    d = guard(ctx(100), 80, state, SETTINGS, CLUSTER)
    assert d.applied == 100 and d.reasons == ("cooldown",)
    assert d.state == state  # nothing changed, so the cooldown clock is not reset
    d = guard(ctx(100, now_s=1041.0), 80, state, SETTINGS, CLUSTER)
    assert d.applied == 80 and d.reasons == ()
    # scale-up is not held by default
    d = guard(ctx(100), 120, state, SETTINGS, CLUSTER)
    assert d.applied == 120


def test_emergency_never_scales_down_and_rescues_fast():
    d = guard(ctx(100, violated=True, growing=True), 80, GuardState(), SETTINGS, CLUSTER)
    assert d.emergency
    assert d.applied == 200
    assert d.reasons == ("emergency_hold", "emergency_scale_up")
    # a violated SLI with a shrinking backlog is not an emergency: the proposal stands
    d = guard(ctx(100, violated=True, growing=False), 80, GuardState(), SETTINGS, CLUSTER)
    assert not d.emergency and d.applied == 80
    # emergency ignores the cooldown but not the bounds
    d = guard(ctx(300, violated=True, growing=True), 300, GuardState(last_change_s=999.0), SETTINGS, CLUSTER)
    assert d.applied == 400 and d.reasons[-1] == "max_bound"


def test_emergency_can_be_disabled():
    s = GuardSettings(emergency=False)
    d = guard(ctx(100, violated=True, growing=True), 80, GuardState(), s, CLUSTER)
    assert d.applied == 80 and not d.emergency


def test_invalid_proposals_hold_current():
    for bad in (math.nan, math.inf, -math.inf, "12", None):
        d = guard(ctx(100), bad, GuardState(), SETTINGS, CLUSTER)  # type: ignore[arg-type]
        assert d.applied == 100 and d.reasons[0] == "invalid_proposal"


@settings(max_examples=500, deadline=None)
@given(
    current=st.integers(1, 1000),
    proposed=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**6), 10**6)),
    violated=st.booleans(),
    growing=st.booleans(),
    since_s=st.floats(0, 1000),
    lo=st.integers(1, 50),
    span=st.integers(0, 500),
)
def test_guard_output_always_within_bounds(current, proposed, violated, growing, since_s, lo, span):
    cluster = ClusterConfig(min_concurrency=lo, max_concurrency=lo + span)
    d = guard(
        ctx(current, violated=violated, growing=growing),
        proposed,
        GuardState(last_change_s=1000.0 - since_s),
        SETTINGS,
        cluster,
    )
    assert isinstance(d.applied, int)
    assert cluster.min_concurrency <= d.applied <= cluster.max_concurrency
    if violated and growing and current <= cluster.max_concurrency:
        assert d.applied >= min(current, cluster.max_concurrency)  # never a scale-down in an emergency
