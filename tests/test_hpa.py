"""The Kubernetes HPA reimplementation: cases ported from Kubernetes' own tests, hand-worked
behavior scenarios, config validation and a property test of the bounds and the scale-up rate.

Ported cases name the Go test they come from (kubernetes/kubernetes,
pkg/controller/podautoscaler/replica_calculator_test.go and horizontal_test.go) and assert the
same expected replica count after translating the inputs (per-pod levels and requests into a mean
utilization, per-pod custom-metric levels into a total).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.hpa import (
    HPAConfig,
    HPAState,
    apply_behavior_rate,
    hpa_decide,
    replica_calculation,
    replicas_change_in_period,
    stabilize_recommendation,
)

NOW_S = 10_000.0  # an arbitrary "now" for the table-driven cases


def mean_utilization(levels: list[float], requests: list[float]) -> float:
    """Kubernetes' resource utilization: total usage over total requests of the pods reporting.

    The Go tests give per-container levels and requests (milli-CPU, two identical containers per
    pod), so the container count cancels out.
    """
    return sum(levels) / sum(requests)


# --- replica calculator: replica_calculator_test.go ------------------------------------------

RESOURCE_CASES = [
    # (Go test, current replicas, per-pod levels, per-pod requests, target fraction, expected)
    ("TestReplicaCalcScaleUp", 3, [300, 500, 700], [1000] * 3, 0.30, 5),
    ("TestReplicaCalcScaleDown", 5, [100, 300, 500, 250, 250], [1000] * 5, 0.50, 3),
    # utilization 102% of a 100% target: inside the 10% band
    ("TestReplicaCalcTolerance", 3, [1010, 1030, 1020], [900, 1000, 1100], 1.00, 3),
    # TestReplicaCalcComputedToleranceAlgImplementation: 1500m used of 3000m requested (50%) on
    # 10 pods with jittered requests; the Go test derives target = int32((1/(2*0.9) + .01) * 100)
    # = 56% -> ratio 0.893, just outside the band -> ceil(8.93) = 9 ...
    (
        "TestReplicaCalcComputedToleranceAlgImplementation",
        10,
        [150] * 10,
        [400, 200, 310, 290, 302, 298, 301, 299, 300, 300],
        0.56,
        9,
    ),
    # ... and its second half, target int32((1/(2*0.9) + .004) * 100) = 55% -> ratio 0.909,
    # just inside the band -> no change
    (
        "TestReplicaCalcComputedToleranceAlgImplementation/unscaling",
        10,
        [150] * 10,
        [400, 200, 310, 290, 302, 298, 301, 299, 300, 300],
        0.55,
        10,
    ),
]


@pytest.mark.parametrize(
    ("go_test", "current", "levels", "requests", "target", "expected"),
    RESOURCE_CASES,
    ids=[c[0] for c in RESOURCE_CASES],
)
def test_kubernetes_resource_utilization_cases(go_test, current, levels, requests, target, expected):
    utilization = mean_utilization(levels, requests)
    assert replica_calculation("utilization", current, utilization, target) == expected


AVERAGE_VALUE_CASES = [
    # (Go test, current replicas, total metric (milli-units), per-pod target, expected)
    # externalPerPodMetric: GetExternalPerPodMetricReplicas, the backlog semantics exactly
    ("TestReplicaCalcScaleUpPerPodCMExternal", 3, 8600, 2150, 4),
    ("TestReplicaCalcScaleDownPerPodCMExternal", 5, 8600, 2867, 3),
    ("TestReplicaCalcTolerancePerPodCMExternal", 3, 8600, 2900, 3),
    # objectPerPodMetric: GetObjectPerPodMetricReplicas, the same formula for an object metric
    ("TestReplicaCalcScaleUpCMPerPodObject", 3, 20000, 5000, 4),
    ("TestReplicaCalcScaleDownPerPodCMObject", 5, 6000, 2000, 3),
    ("TestReplicaCalcTolerancePerPodCMObject", 4, 20166, 5000, 4),
    # podMetric (GetMetricReplicas, an AverageValue pods metric): per-pod levels summed into the
    # total; ceil(avg/target * pods) == ceil(total/target) when every pod is ready
    ("TestReplicaCalcScaleUpCM", 3, 20000 + 10000 + 30000, 15000, 4),
    ("TestReplicaCalcScaleDownCM", 5, 5 * 12000, 20000, 3),
    ("TestReplicaCalcToleranceCM", 3, 20000 + 21000 + 21000, 20000, 3),
]


@pytest.mark.parametrize(
    ("go_test", "current", "total", "target", "expected"), AVERAGE_VALUE_CASES, ids=[c[0] for c in AVERAGE_VALUE_CASES]
)
def test_kubernetes_average_value_cases(go_test, current, total, target, expected):
    assert replica_calculation("backlog", current, float(total), float(target)) == expected


def test_replica_calculation_tolerance_band_edges():
    # |1 - ratio| <= 0.1 keeps the count; just beyond it scales
    assert replica_calculation("utilization", 10, 0.76, 0.7) == 10  # ratio 1.086
    assert replica_calculation("utilization", 10, 0.78, 0.7) == 12  # ratio 1.114 -> ceil(11.14)
    assert replica_calculation("utilization", 10, 0.64, 0.7) == 10  # ratio 0.914
    assert replica_calculation("utilization", 10, 0.60, 0.7) == 9  # ratio 0.857 -> ceil(8.57)
    assert replica_calculation("backlog", 4, 210.0, 50.0) == 4  # 210/200 = 1.05
    assert replica_calculation("backlog", 4, 230.0, 50.0) == 5  # 1.15 -> ceil(4.6)
    assert replica_calculation("utilization", 10, 0.78, 0.7, tolerance=0.2) == 10


def test_replica_calculation_edge_cases():
    # zero utilization / backlog asks for zero replicas; the controller clamps to min
    assert replica_calculation("utilization", 4, 0.0, 0.7) == 0
    assert replica_calculation("backlog", 4, 0.0, 50.0) == 0
    # utilization above 100% is possible (usage over request) and is not capped
    assert replica_calculation("utilization", 2, 1.5, 0.5) == 6
    # current 0: Kubernetes never computes replicas for a target scaled to zero
    assert replica_calculation("utilization", 0, 0.9, 0.5) == 0
    assert replica_calculation("backlog", 0, 500.0, 50.0) == 0
    # non-finite metric: the fetch would fail, nothing changes
    for bad in (math.nan, math.inf, -math.inf):
        assert replica_calculation("utilization", 3, bad, 0.5) == 3
        assert replica_calculation("backlog", 3, bad, 50.0) == 3
    with pytest.raises(ValueError, match="metric_value"):
        replica_calculation("backlog", 3, -1.0, 50.0)
    with pytest.raises(ValueError, match="target"):
        replica_calculation("backlog", 3, 1.0, 0.0)
    with pytest.raises(ValueError, match="metric"):
        replica_calculation("cpu", 3, 1.0, 0.5)
    with pytest.raises(ValueError, match="current_replicas"):
        replica_calculation("utilization", -1, 0.5, 0.5)


# --- stabilization: horizontal_test.go TestNormalizeDesiredReplicasWithBehavior ---------------

STABILIZATION_CASES = [
    # (case name in the Go table, history as (age_s, rec), current, desired, up_s, down_s, expected)
    ("empty recommendations for scaling down", [], 100, 5, 0, 0, 5),
    ("simple scale down stabilization", [(120, 4), (60, 5)], 100, 3, 0, 180, 5),
    ("simple scale up stabilization", [(120, 4), (60, 5)], 1, 7, 300, 0, 4),
    ("no scale down stabilization", [(120, 1), (60, 2)], 100, 3, 300, 0, 3),
    ("no scale up stabilization", [(120, 4), (60, 5)], 1, 3, 0, 300, 3),
    (
        "scale down stabilization, reuse one of obsolete recommendation element",
        [(600, 10), (60, 4), (120, 5), (540, 9)],
        100,
        3,
        0,
        180,
        5,
    ),
    (
        "scale up stabilization, reuse one of obsolete recommendation element",
        [(6000, 10), (60, 6), (120, 5), (180, 9)],
        1,
        100,
        300,
        0,
        5,
    ),
    (
        "scale up and down stabilization, do not scale up when prenormalized rec goes down",
        [(6000, 2), (180, 3)],
        2,
        1,
        300,
        300,
        2,
    ),
    (
        "scale up and down stabilization, do not scale down when prenormalized rec goes up",
        [(6000, 2), (180, 1)],
        2,
        3,
        300,
        300,
        2,
    ),
]


@pytest.mark.parametrize(
    ("name", "history", "current", "desired", "up_s", "down_s", "expected"),
    STABILIZATION_CASES,
    ids=[c[0] for c in STABILIZATION_CASES],
)
def test_kubernetes_stabilization_cases(name, history, current, desired, up_s, down_s, expected):
    recommendations = [(NOW_S - age_s, rec) for age_s, rec in history]
    got = stabilize_recommendation(NOW_S, current, desired, recommendations, up_s, down_s)
    assert got == expected


def test_stabilization_window_boundary_is_exclusive():
    # Go's timestamp.After(cutoff): a recommendation exactly window_s old no longer counts
    assert stabilize_recommendation(NOW_S, 10, 2, [(NOW_S - 300, 10)], 0, 300) == 2
    assert stabilize_recommendation(NOW_S, 10, 2, [(NOW_S - 299.9, 10)], 0, 300) == 10


# --- rate limits: horizontal_test.go TestScalingWithRules ------------------------------------


def uniform_events(changes: list[int], period_s: float, sign: int) -> list[tuple[float, int]]:
    """generateEventsUniformDistribution: events centred in equal segments of the last
    ``period_s``; ``sign`` +1 for scale-up events, -1 for scale-down events."""
    segment_s = period_s / len(changes)
    return [
        (NOW_S - (period_s - segment_s * (i + 1) + segment_s / 2), sign * change) for i, change in enumerate(changes)
    ]


def rules(**overrides) -> HPAConfig:
    """A config for the rate-limit cases. Go's generateScalingRules can omit a policy; here a
    missing Pods policy is ``scale_up_pods=1`` and a missing Percent policy is 1%, both checked
    to be dominated by the other policy in every case that uses them (selectPolicy Max)."""
    base = {"metric": "backlog", "target": 1.0, "min_replicas": 1, "max_replicas": 1000}
    return HPAConfig(**{**base, **overrides})


SCALING_RULES_CASES = [
    # (case name in the Go table, config, scale events, current, prenormalized desired, expected)
    ("prenormalized desired replicas within range", rules(min_replicas=3, max_replicas=8), [], 5, 7, 7),
    ("prenormalized desired replicas < minReplicas", rules(min_replicas=2, max_replicas=8), [], 3, 1, 2),
    ("maxReplicas is the limit because maxReplicas < scaleUpLimit", rules(max_replicas=10), [], 20, 1000, 10),
    (
        "desired replica count is more than the maximum replica count",
        rules(min_replicas=100, max_replicas=150),
        [],
        100,
        1000,
        150,
    ),
    (
        "scaleUpLimit is the limit because scaleUpLimit < maxReplicas with user policies",
        rules(max_replicas=2000, scale_up_pods=1, scale_up_percent=1, scale_up_period_s=60),
        [],
        3,
        1000,
        4,
    ),
    ("scaleUp with default behavior", rules(), [], 10, 50, 20),
    (
        "scaleUp with pods policy larger than percent policy",
        rules(scale_up_pods=100, scale_up_percent=100, scale_up_period_s=60),
        [],
        10,
        500,
        110,
    ),
    (
        "scaleUp with percent policy larger than pods policy",
        rules(scale_up_pods=2, scale_up_percent=100, scale_up_period_s=60),
        [],
        10,
        500,
        20,
    ),
    (
        "scaleUp with pod policy limitation",
        rules(scale_up_pods=30, scale_up_percent=1, scale_up_period_s=60),
        [],
        10,
        50,
        40,
    ),
    (
        "scaleUp with percent policy limitation",
        rules(scale_up_pods=1, scale_up_percent=200, scale_up_period_s=60),
        [],
        10,
        50,
        30,
    ),
    (
        "scaleUp with spec MaxReplicas limitation with large pod policy and events",
        rules(max_replicas=200, scale_up_pods=300, scale_up_percent=1, scale_up_period_s=60),
        uniform_events([1, 5, 9], 120, +1),
        100,
        500,
        200,
    ),
    (
        ("scaleUp with currentReplicas limitation with rate.PeriodSeconds with a lot of recent scale up events"),
        rules(scale_up_pods=5, scale_up_percent=1, scale_up_period_s=120),
        uniform_events([1, 5, 9], 120, +1),
        100,
        500,
        100,
    ),
    (
        "scaleUp with pod policy and previous scale up events",
        rules(scale_up_pods=150, scale_up_percent=1, scale_up_period_s=120),
        uniform_events([1, 5, 9], 120, +1),
        100,
        500,
        235,
    ),
    (
        "scaleUp with percent policy and previous scale up events",
        rules(scale_up_pods=1, scale_up_percent=200, scale_up_period_s=120),
        uniform_events([1, 5, 9], 120, +1),
        100,
        500,
        255,
    ),
    (
        "scaleUp with percent policy and previous scale up and down events",
        rules(scale_up_pods=1, scale_up_percent=300, scale_up_period_s=300),
        uniform_events([4], 120, +1) + uniform_events([2], 120, -1),
        6,
        24,
        16,
    ),
    ("scaleDown with percent policy limitation", rules(scale_down_percent=50, scale_down_period_s=60), [], 10, 5, 5),
    (
        "scaleDown with spec MinReplicas limitation with large percent policy",
        rules(min_replicas=5, scale_down_percent=100, scale_down_period_s=60),
        [],
        10,
        2,
        5,
    ),
    ("scaleDown with default policy and previous events", rules(), uniform_events([1, 5, 9], 120, -1), 10, 5, 5),
    (
        "scaleDown with spec MinReplicas limitation with large percent policy and previous events",
        rules(min_replicas=5, scale_down_percent=100, scale_down_period_s=120),
        uniform_events([1, 5, 9], 120, -1),
        100,
        2,
        5,
    ),
    (
        "scaleDown with percent policy limitation and previous events",
        rules(scale_down_percent=50, scale_down_period_s=120),
        uniform_events([2, 4, 6], 120, -1),
        100,
        0,
        56,
    ),
    (
        "scaleDown with percent policy and previous scale up and down events",
        rules(scale_down_percent=50, scale_down_period_s=180),
        uniform_events([2], 120, +1) + uniform_events([4], 120, -1),
        10,
        1,
        6,
    ),
    (
        "scaleDown with previous events preventing further scale down",
        rules(scale_down_percent=10, scale_down_period_s=120),
        uniform_events([10, 10, 10], 120, -1),
        100,
        0,
        100,
    ),
    (
        "scaleDown with with previous events still allowing more scale down",
        rules(scale_down_percent=1000, scale_down_period_s=120),
        uniform_events([10, 10, 10], 120, -1),
        10,
        5,
        5,
    ),
]


@pytest.mark.parametrize(
    ("name", "cfg", "events", "current", "desired", "expected"),
    SCALING_RULES_CASES,
    ids=[c[0] for c in SCALING_RULES_CASES],
)
def test_kubernetes_scaling_rules_cases(name, cfg, events, current, desired, expected):
    assert apply_behavior_rate(NOW_S, current, desired, cfg, events) == expected


def test_replicas_change_in_period_counts_events_strictly_inside():
    events = [(NOW_S - 15.0, 4), (NOW_S - 14.9, 2), (NOW_S - 1.0, -1)]
    assert replicas_change_in_period(NOW_S, 15.0, events) == 1  # the event at -15 s is out
    assert replicas_change_in_period(NOW_S, 60.0, events) == 5


# --- behaviors through hpa_decide (hand-worked) ----------------------------------------------

UTIL = HPAConfig(metric="utilization", target=0.5, max_replicas=100)


def run(
    cfg: HPAConfig, steps: list[tuple[float, float]], current: int, state: HPAState | None = None
) -> tuple[list[int], HPAState]:
    """Closed loop: each sync's desired replicas become the next sync's current replicas."""
    state = state or HPAState()
    out = []
    for now_s, metric in steps:
        current, state = hpa_decide(now_s, current, metric, cfg, state)
        out.append(current)
    return out, state


def test_scale_up_is_limited_to_max_of_4_pods_and_100_percent_per_15_s():
    # 1 replica at 500% utilization wants 10: +4 pods beats +100% -> 5
    assert hpa_decide(0.0, 1, 5.0, UTIL, HPAState())[0] == 5
    # 10 replicas want 100: +100% beats +4 pods -> 20; then the period's budget is spent
    replicas, _ = run(UTIL, [(0.0, 5.0), (5.0, 5.0), (14.9, 5.0), (15.0, 5.0), (30.0, 5.0)], 10)
    assert replicas == [20, 20, 20, 40, 80]


def test_scale_up_budget_is_measured_from_the_start_of_the_period():
    cfg = replace(UTIL, scale_up_period_s=60.0)
    # 2 -> 6 (+4 beats x2). At 20 s and 59 s the period still started at 2 replicas, so the cap
    # stays max(2 + 4, 2 * 2) = 6; at 60 s the +4 event has left the period: max(6 + 4, 12) = 12
    replicas, state = run(cfg, [(0.0, 5.0), (20.0, 5.0), (59.0, 5.0), (60.0, 5.0)], 2)
    assert replicas == [6, 6, 6, 12]
    assert state.scale_events == ((60.0, 6),)  # the event at 0 s can no longer count: pruned


def test_scale_down_is_held_by_the_300_s_stabilization_window():
    cfg = HPAConfig(metric="backlog", target=10.0, max_replicas=20)
    # 10 replicas at target, then the backlog drops to 20 (wants 2), with one bump at 150 s
    # (60 -> wants 6). The replicas stay at the highest recommendation of the last 300 s.
    steps = [(0.0, 100.0)] + [(t, 60.0 if t == 150.0 else 20.0) for t in range(15, 481, 15)]
    replicas, _ = run(cfg, [(float(t), m) for t, m in steps], 10)
    by_time = dict(zip([t for t, _ in steps], replicas, strict=True))
    assert all(by_time[t] == 10 for t in range(0, 300, 15))  # the 10s from t=0 still count
    assert by_time[300] == 6  # 10 @ t=0 left the window; 6 @ t=150 is the max left
    assert by_time[435] == 6
    assert by_time[450] == 2  # 6 @ t=150 left the window too
    assert by_time[480] == 2


def test_first_sync_seeds_the_history_so_a_new_hpa_does_not_scale_down_at_once():
    cfg = HPAConfig(metric="utilization", target=0.5)
    desired, state = hpa_decide(0.0, 8, 0.0, cfg, HPAState())
    assert desired == 8
    assert state.recommendations == ((0.0, 8), (0.0, 0))  # seed (current) + this sync's proposal
    assert hpa_decide(300.0, 8, 0.0, cfg, state)[0] == 1  # window over: down to min_replicas


def test_scale_down_window_zero_scales_down_at_once_to_min():
    cfg = HPAConfig(metric="utilization", target=0.5, min_replicas=2, scale_down_stabilization_s=0)
    assert hpa_decide(0.0, 6, 0.0, cfg, HPAState())[0] == 2


def test_clamp_to_min_and_max():
    cfg = HPAConfig(metric="utilization", target=0.5, min_replicas=2, max_replicas=10)
    # the proposal (32) is capped by max_replicas below the rate limit (16)
    assert hpa_decide(0.0, 8, 2.0, cfg, HPAState())[0] == 10
    # current outside [min, max] goes straight to the bound, whatever the metric (even NaN),
    # and the move is recorded as a scale event
    desired, state = hpa_decide(0.0, 15, math.nan, cfg, HPAState())
    assert (desired, state.scale_events) == (10, ((0.0, -5),))
    desired, state = hpa_decide(0.0, 1, 0.0, cfg, HPAState())
    assert (desired, state.scale_events) == (2, ((0.0, 1),))


def test_tolerance_band_through_hpa_decide():
    cfg = HPAConfig(metric="utilization", target=0.7, max_replicas=20, scale_down_stabilization_s=0)
    assert hpa_decide(0.0, 10, 0.75, cfg, HPAState())[0] == 10  # ratio 1.07
    assert hpa_decide(0.0, 10, 0.66, cfg, HPAState())[0] == 10  # ratio 0.94
    assert hpa_decide(0.0, 10, 0.78, cfg, HPAState())[0] == 12  # ratio 1.11
    assert hpa_decide(0.0, 10, 0.55, cfg, HPAState())[0] == 8  # ratio 0.786 -> ceil(7.86)


def test_zero_replicas_and_bad_metrics_do_nothing():
    desired, state = hpa_decide(0.0, 0, 5.0, UTIL, HPAState())
    assert desired == 0 and state.scale_events == ()
    _, state = run(UTIL, [(0.0, 0.5)], 4)
    for bad in (math.nan, math.inf, -math.inf):
        desired, new_state = hpa_decide(15.0, 4, bad, UTIL, state)
        assert desired == 4
        assert new_state.scale_events == state.scale_events
        assert new_state.recommendations == state.recommendations  # nothing recorded
    with pytest.raises(ValueError, match="metric_value"):
        hpa_decide(15.0, 4, -0.5, UTIL, state)
    with pytest.raises(ValueError, match="current_replicas"):
        hpa_decide(15.0, -1, 0.5, UTIL, state)


def test_hpa_decide_is_pure_and_rejects_time_going_backwards():
    _, state = run(UTIL, [(0.0, 2.0), (15.0, 2.0)], 2)
    first = hpa_decide(30.0, 8, 0.1, UTIL, state)
    assert hpa_decide(30.0, 8, 0.1, UTIL, state) == first  # same inputs, same outputs
    with pytest.raises(ValueError, match="now_s"):
        hpa_decide(10.0, 8, 0.1, UTIL, state)
    with pytest.raises(ValueError, match="now_s"):
        hpa_decide(math.nan, 8, 0.1, UTIL, state)


def test_state_is_pruned_and_stays_small():
    cfg = HPAConfig(metric="backlog", target=10.0, max_replicas=50)
    steps = [(15.0 * i, 100.0 + 400.0 * (i % 7 == 0)) for i in range(2000)]
    _, state = run(cfg, steps, 5)
    # 300 s window / 15 s syncs -> at most 20 recommendations; events at most one 15 s period old
    assert len(state.recommendations) <= 21
    assert len(state.scale_events) <= 1
    assert all(t_s > steps[-1][0] - 300 for t_s, _ in state.recommendations)


def test_long_pause_does_not_reseed_the_history():
    # Only the very first sync seeds the history with the current replicas. A sync that records
    # no recommendation (here: current above max) after a long pause prunes everything old, but
    # keeps the newest entry as a marker (it can no longer count), so the sync after it is not
    # mistaken for a first sync and its scale-down is not held for another 300 s.
    cfg = HPAConfig(metric="utilization", target=0.5, max_replicas=10)
    _, state = run(cfg, [(0.0, 0.5)], 4)
    desired, state = hpa_decide(1000.0, 12, 0.5, cfg, state)
    assert desired == 10
    assert state.recommendations == ((0.0, 4),)
    assert hpa_decide(1015.0, 10, 0.1, cfg, state)[0] == 2  # ceil(0.2 * 10)


# --- config validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"metric": "cpu"}, "metric"),
        ({"target": 0.0}, "target"),
        ({"target": -1.0}, "target"),
        ({"target": math.nan}, "target"),
        ({"target": 70.0}, "target"),  # a percentage for the utilization metric
        ({"min_replicas": 0}, "min_replicas"),
        ({"min_replicas": 2.5}, "min_replicas"),
        ({"max_replicas": 0}, "max_replicas"),
        ({"tolerance": -0.1}, "tolerance"),
        ({"tolerance": math.inf}, "tolerance"),
        ({"scale_up_stabilization_s": -1.0}, "scale_up_stabilization_s"),
        ({"scale_down_stabilization_s": -1.0}, "scale_down_stabilization_s"),
        ({"scale_up_pods": 0}, "scale_up_pods"),
        ({"scale_up_percent": 0.0}, "scale_up_percent"),
        ({"scale_up_period_s": 0.0}, "scale_up_period_s"),
        ({"scale_down_percent": -5.0}, "scale_down_percent"),
        ({"scale_down_period_s": 0.0}, "scale_down_period_s"),
    ],
)
def test_config_validation_names_the_field(overrides, field):
    kwargs = {"metric": "utilization", "target": 0.7, **overrides}
    with pytest.raises(ValueError, match=rf"HPAConfig\.{field}\b"):
        HPAConfig(**kwargs)


def test_config_min_above_max_message():
    with pytest.raises(ValueError) as err:
        HPAConfig(metric="backlog", target=50.0, min_replicas=5, max_replicas=3)
    assert str(err.value) == "HPAConfig.min_replicas (5) must be <= max_replicas (3)"


def test_config_accepts_kubernetes_defaults_and_large_backlog_targets():
    cfg = HPAConfig(metric="backlog", target=500.0)
    assert (cfg.scale_up_stabilization_s, cfg.scale_down_stabilization_s) == (0.0, 300.0)
    assert (cfg.scale_up_pods, cfg.scale_up_percent, cfg.scale_up_period_s) == (4, 100.0, 15.0)
    assert (cfg.scale_down_percent, cfg.scale_down_period_s) == (100.0, 15.0)
    assert HPAConfig(metric="utilization", target=1.0).target == 1.0


# --- property: bounds and the scale-up rate --------------------------------------------------


@st.composite
def scenarios(draw):
    metric = draw(st.sampled_from(["utilization", "backlog"]))
    min_r = draw(st.integers(1, 5))
    max_r = draw(st.integers(min_r, 40))
    cfg = HPAConfig(
        metric=metric,
        target=draw(st.floats(0.1, 1.0)) if metric == "utilization" else draw(st.floats(1, 100)),
        min_replicas=min_r,
        max_replicas=max_r,
        scale_up_pods=draw(st.integers(1, 6)),
        scale_up_percent=draw(st.sampled_from([10.0, 50.0, 100.0, 200.0])),
        scale_up_period_s=draw(st.sampled_from([15.0, 30.0, 60.0])),
        scale_up_stabilization_s=draw(st.sampled_from([0.0, 0.0, 30.0])),
        scale_down_stabilization_s=draw(st.sampled_from([0.0, 60.0, 300.0])),
    )
    top = 3.0 if metric == "utilization" else 2000.0
    metric_values = st.one_of(st.floats(0.0, top), st.just(math.nan))
    steps = draw(
        st.lists(
            st.tuples(st.sampled_from([1.0, 5.0, 7.5, 14.999, 15.0, 15.001, 40.0]), metric_values),
            min_size=1,
            max_size=40,
        )
    )
    return cfg, draw(st.integers(min_r, max_r)), steps


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_property_bounds_and_scale_up_rate(scenario):
    cfg, current, steps = scenario
    state = HPAState()
    now_s = 0.0
    history = [(-math.inf, current)]  # (time, replicas in force from then on)
    for dt_s, metric in steps:
        now_s += dt_s
        desired, state = hpa_decide(now_s, current, metric, cfg, state)
        assert cfg.min_replicas <= desired <= cfg.max_replicas
        if desired > current:
            # replicas in force at the start of the period (events at exactly now - period are
            # outside it): the scale-up budget is measured from there
            start = [r for t_s, r in history if t_s <= now_s - cfg.scale_up_period_s][-1]
            cap = max(start + cfg.scale_up_pods, math.ceil(start * (1 + cfg.scale_up_percent / 100)))
            assert desired <= cap
        history.append((now_s, desired))
        current = desired
