"""Knative's pod autoscaler: cases ported from knative/serving's own tests, window averaging,
the policy's mapping to slots, settings validation and a rollout within the bounds.

Ported cases name the Go test they come from (knative/serving, pkg/autoscaler/scaling/
autoscaler_test.go, at 98e5ef90) and assert the same desired pod count. Those tests build the
autoscaler with ``newTestAutoscaler``: MaxScaleUpRate 10, MaxScaleDownRate 10, PanicThreshold 2
(200%), StableWindow 60 s, and give the stable and panic concurrencies directly.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from control.kpa import KPASettings, KPAState, PanicState, initial_panic_state, kpa_scale, window_average
from control.policies import PolicyContext
from envs.rollout import run_policy
from envs.scaling_env import ConcurrencyScalingEnv
from models.registry import make_policy
from tests.conftest import make_snapshot, small_config

GO_TEST = KPASettings(max_scale_up_rate=10, max_scale_down_rate=10)  # newTestAutoscalerWithScalingMetric
T0 = 1_000.0


def scale(now, ready, stable, panic, target, state=None, settings=GO_TEST):
    return kpa_scale(now, ready, stable, panic, target, settings, state or PanicState())


def test_defaults_are_knatives():
    """pkg/autoscaler/config/config.go defaultConfig: stable-window 60s, panic-window-percentage 10,
    panic-threshold-percentage 200, container-concurrency-target-percentage 0.7,
    max-scale-up-rate 1000, max-scale-down-rate 2."""
    s = KPASettings()
    assert (s.stable_window_s, s.panic_window_s, s.panic_threshold) == (60.0, 6.0, 2.0)
    assert (s.target_utilisation, s.max_scale_up_rate, s.max_scale_down_rate) == (0.7, 1000.0, 2.0)


@pytest.mark.parametrize(
    "go_test, target, ready, stable, panic, expected",
    [
        ("TestAutoscalerStableModeIncreaseWithConcurrencyDefault", 10, 1, 50, 10, 5),
        ("TestAutoscalerStableModeIncreaseWithConcurrencyDefault (2nd)", 10, 1, 100, 10, 10),
        ("TestAutoscalerStableModeDecrease", 10, 8, 100, 100, 10),
        ("TestAutoscalerStableModeDecrease (2nd)", 10, 8, 50, 50, 5),
        ("TestAutoscalerScale/AutoscalerStableModeNoChange", 10, 1, 50, 50, 5),
        ("TestAutoscalerScale/AutoscalerStableModeNoChangeAlreadyScaled", 10, 5, 50, 50, 5),
        # panic 100 / target 10 = 10 pods on 1 ready: over 200%, the panic value takes precedence
        ("TestAutoscalerScale/AutoscalerPanicModeDoublePodCount", 10, 1, 50, 100, 10),
        # need 100 pods, but at most x10 of the ready pods per decision ...
        ("TestAutoscalerRateLimitScaleUp", 10, 1, 1000, 1001, 10),
        ("TestAutoscalerRateLimitScaleUp (2nd)", 10, 10, 1000, 1001, 100),
        # ... and at most /10 down
        ("TestAutoscalerRateLimitScaleDown", 10, 100, 1, 1, 10),
        ("TestAutoscalerRateLimitScaleDown (2nd)", 10, 10, 1, 1, 1),
        # no ready pods count as one: x10 of 1
        ("TestAutoscalerUseOnePodAsMinimumIfEndpointsNotFound", 10, 0, 1000, 888, 10),
    ],
)
def test_knative_single_decision_cases(go_test, target, ready, stable, panic, expected):
    assert scale(T0, ready, stable, panic, target)[0] == expected, go_test


def test_knative_small_rates():
    """TestAutoscalerScale/AutoscalerStableModeIncreaseWithSmallScaleUpRate: MaxScaleUpRate 1.1 on 2
    pods still allows ceil(2.2) = 3; .../DecreaseWithSmallScaleDownRate: floor(100 / 1.1) = 90."""
    up = GO_TEST.model_copy(update={"max_scale_up_rate": 1.1})
    assert scale(T0, 2, 3, 3.1, 1, settings=up)[0] == 3
    down = GO_TEST.model_copy(update={"max_scale_down_rate": 1.1})
    assert scale(T0, 100, 1, 1, 10, settings=down)[0] == 90


def test_knative_panic_uses_the_larger_of_stable_and_panic():
    """TestAutoscalerScale/AutoscalerPanicStableLargerThanPanic and ...LessThanPanic: panicking
    since 5 s ago with maxPanicPods 5 on 5 ready pods, target 1."""
    panicking = PanicState(T0 - 5, 5)
    assert scale(T0, 5, 50, 30, 1, panicking)[0] == 50
    assert scale(T0, 5, 20, 30, 1, panicking)[0] == 30


def test_knative_unpanic_after_slow_increase():
    """TestAutoscalerUnpanicAfterSlowIncrease: 10 -> 25 pods enters panic; half a window later the
    panic time has not moved (41 / 40 pods is under 200%); a window and a tick (2 s) after the
    panic began it ends and the stable value rules."""
    desired, st = scale(T0, 10, 11, 25, 1)
    assert desired == 25 and st.panic_time_s == T0
    desired, st = scale(T0 + 30, 40, 30, 41, 1, st)
    assert desired == 41 and st.panic_time_s == T0
    desired, st = scale(T0 + 62, 55, 50, 56, 1, st)
    assert desired == 50 and st.panic_time_s is None and st.max_panic_pods == 0


def test_knative_extend_panic_window():
    """TestAutoscalerExtendPanicWindow: still over 200% (80 / 40) half a window later: the panic
    time moves to now."""
    _, st = scale(T0, 10, 11, 25, 1)
    desired, st = scale(T0 + 30, 40, 30, 80, 1, st)
    assert desired == 80 and st.panic_time_s == T0 + 30


def test_knative_no_scale_down_in_panic_then_scale_down_after_the_window():
    """TestAutoscalerPanicThenUnPanicScaleDown: target 10; 100 -> 1000 concurrency panics to 100
    pods; traffic drops to 1 but 30 s later the count holds at 100 (no scale-down in panic); 61 s
    after the last panic trigger it falls to 1 (floor(10 / 10))."""
    desired, st = scale(T0 - 1, 1, 100, 100, 10)
    assert desired == 10
    desired, st = scale(T0, 10, 100, 1000, 10, st)
    assert desired == 100 and st.panic_time_s == T0
    desired, st = scale(T0 + 30, 10, 1, 1, 10, st)
    assert desired == 100 and st.panic_time_s == T0
    desired, st = scale(T0 + 61, 10, 1, 1, 10, st)
    assert desired == 1 and st.panic_time_s is None


def test_knative_panic_mode_exponential_track_and_stabilize():
    """TestAutoscalerPanicModeExponentialTrackAndStabilize: traffic x6 per step, target 1: the
    count tracks 6 -> 36 -> 216 -> 1296 and stays there."""
    desired, st = scale(T0, 1, 6, 6, 1)
    assert desired == 6
    for ready, load in ((6, 36), (36, 216), (216, 1296), (1296, 1296)):
        desired, st = scale(T0 + 1, ready, load, load, 1, st)
        assert desired == load


def test_knative_start_in_panic_mode():
    """TestStartInPanicMode: created at 0 or 1 ready pods: not panicking, maxPanicPods = count; at 2:
    panicking with maxPanicPods 2."""
    for ready in (0, 1):
        assert initial_panic_state(T0, ready) == PanicState(None, ready)
    assert initial_panic_state(T0, 2) == PanicState(T0, 2)


def test_panic_exit_is_strictly_after_a_stable_window():
    """``panicTime.Add(StableWindow).Before(now)``: exactly 60 s after the trigger still panics."""
    st = PanicState(T0, 20)
    assert scale(T0 + 60, 20, 1, 1, 10, st)[1].panic_time_s == T0
    assert scale(T0 + 60.5, 20, 1, 1, 10, st)[1].panic_time_s is None


def test_window_average_is_time_weighted_over_the_covered_part():
    samples = [(15.0, 15.0, 10.0), (30.0, 15.0, 20.0), (45.0, 15.0, 30.0), (60.0, 15.0, 40.0), (75.0, 15.0, 100.0)]
    assert window_average(samples, 75.0, 60.0) == pytest.approx((20 + 30 + 40 + 100) / 4)  # the newest four
    assert window_average(samples, 75.0, 6.0) == 100.0  # the panic window sees the newest interval
    assert window_average(samples[:2], 30.0, 60.0) == 15.0  # history shorter than the window
    assert window_average(samples, 200.0, 60.0) == 0.0  # nothing for a whole window
    assert window_average(samples, 67.5, 15.0) == pytest.approx((7.5 * 40 + 7.5 * 100) / 15)


def ctx(snap, current):
    return PolicyContext(snap.time_s, current, snap, None, np.zeros(15, np.float32), small_config(), 1.0)


def test_policy_maps_pods_to_slots_and_averages_the_stable_window():
    """10 slots per pod, target 0.7 x 10 = 7 in flight per pod. 4 ready pods (40 slots): 35 running
    on average and no backlog -> ceil(35 / 7) = 5 pods = 50 slots. The next intervals average with it."""
    p = make_policy("kpa-default", small_config())
    st = p.initial_state
    # first decision on 4 ready pods: a new autoscaler starts in panic, remembering 4 pods
    s1 = make_snapshot(time_s=15.0, busy_slot_s=35 * 15.0, serving_concurrency=40, target_concurrency=40)
    proposal, st = p.decide(ctx(s1, 40), st)
    assert proposal == 50 and st.panic.max_panic_pods == 5
    # load drops to 7 in flight: stable = (35 + 7) / 2 = 21 -> 3 pods, but panic mode holds 5
    s2 = make_snapshot(time_s=30.0, busy_slot_s=7 * 15.0, serving_concurrency=50, target_concurrency=50)
    proposal, st = p.decide(ctx(s2, 50), st)
    assert proposal == 50
    # a full stable window after the start, panic ends; the window holds 7 in flight only -> 1 pod,
    # rate-limited to floor(5 / 2) = 2 pods, then the cluster's minimum (4 slots: 1 pod) is below it
    for t in (45.0, 60.0, 75.0, 90.0):
        s = make_snapshot(time_s=t, busy_slot_s=7 * 15.0, serving_concurrency=50, target_concurrency=50)
        proposal, st = p.decide(ctx(s, 50), st)
    assert st.panic.panic_time_s is None and proposal == 20
    assert len(st.samples) == 4  # only the stable window is kept


def test_policy_counts_the_backlog_as_in_flight_and_panics():
    """Backlog 200 on 1 ready pod: 200 + 5 in flight -> ceil(205 / 7) = 30 pods, over 200% of 1:
    panic; the max scale-up rate (x1000) does not bind, the cluster's 400 slots = 40 pods would."""
    p = make_policy("kpa-default", small_config())
    s = make_snapshot(busy_slot_s=5 * 15.0, backlog_by_priority=(0, 200, 0), serving_concurrency=10)
    proposal, st = p.decide(ctx(s, 10), p.initial_state)
    assert proposal == 300 and st.panic.panic_time_s == s.time_s


@pytest.mark.parametrize(
    "field, value",
    [
        ("stable_window_s", 5.0),  # WindowMin 6 s
        ("stable_window_s", 3601.0),  # WindowMax 1 h
        ("panic_window_percentage", 0.5),
        ("panic_threshold_percentage", 100.0),  # PanicThresholdPercentageMin 110
        ("target_utilisation", 1.5),
        ("max_scale_up_rate", 1.0),  # must be > 1
        ("max_scale_down_rate", 0.5),
        ("container_concurrency", 0),
        ("stable_window_s", float("nan")),
        ("no_such_setting", 1),
    ],
)
def test_bad_settings_fail_naming_the_field(field, value):
    with pytest.raises(ValidationError, match=field):
        KPASettings(**{field: value})


def test_state_is_immutable_and_decide_is_pure():
    p = make_policy("kpa-default", small_config())
    s = make_snapshot(busy_slot_s=35 * 15.0, serving_concurrency=40)
    a = p.decide(ctx(s, 40), KPAState())
    b = p.decide(ctx(s, 40), KPAState())
    assert a == b


@pytest.mark.parametrize("scenario", ["flash-sale", "worldcup"])
def test_rollout_stays_within_bounds(scenario):
    cfg = small_config(
        cluster={"min_concurrency": 8, "max_concurrency": 200},
        simulation={"scenario": scenario, "duration_s": 900.0, "peak_rate_per_s": 120.0},
    )
    res = run_policy(ConcurrencyScalingEnv(cfg), make_policy("kpa", cfg), 0)
    assert all(8 <= r.applied <= 200 for r in res.intervals)
    assert res.summary.scaling_changes > 0 and res.summary.sli_attainment > 0.5
