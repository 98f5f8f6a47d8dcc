"""Dynamic priority: hand-worked values, the naive formula's failure cases, ordering, properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.priority import (
    PRIORITY_CLASSES,
    PriorityWeights,
    priority_class,
    priority_score,
    resource_fit,
    urgency,
)

NOW = 1_000.0


def score(**overrides: object) -> float:
    args: dict[str, object] = dict(
        deadline_s=NOW + 60.0,
        now_s=NOW,
        cpu_required=1.0,
        memory_mb_required=256.0,
        cpu_free=4.0,
        memory_mb_free=1024.0,
        historical_success_rate=0.9,
    )
    args.update(overrides)
    return priority_score(**args)  # type: ignore[arg-type]


# --- urgency ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slack_s", "expected"),
    [
        (60.0, 0.5),
        (0.0, 1.0),  # at the deadline
        (-1.0, 1.0),  # naive 1/(1 + d - now) divides by zero here
        (-0.5, 1.0),  # naive gives 2.0 (> 1)
        (-10.0, 1.0),  # naive gives -1/9 (< 0): overdue would rank below on-time tasks
        (-86_400.0, 1.0),
        (120.0, 1.0 / 3.0),
        (300.0, 1.0 / 6.0),
        (30.0, 2.0 / 3.0),
    ],
)
def test_urgency_hand_worked(slack_s: float, expected: float) -> None:
    assert urgency(NOW + slack_s, NOW) == pytest.approx(expected)


def test_urgency_horizon_scales_seconds() -> None:
    assert urgency(NOW + 600.0, NOW, horizon_s=600.0) == pytest.approx(0.5)
    assert urgency(NOW + 60.0, NOW, horizon_s=1.0) == pytest.approx(1.0 / 61.0)


def test_urgency_without_deadline_is_zero() -> None:
    assert urgency(None, NOW) == 0.0
    assert urgency(math.inf, NOW) == 0.0
    assert urgency(-math.inf, NOW) == 1.0


def test_urgency_continuous_at_deadline() -> None:
    eps = 1e-9
    assert urgency(NOW + eps, NOW) == pytest.approx(1.0, abs=1e-9)
    assert urgency(NOW - eps, NOW) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"deadline_s": math.nan, "now_s": NOW}, "deadline_s"),
        ({"deadline_s": NOW, "now_s": math.nan}, "now_s"),
        ({"deadline_s": NOW, "now_s": math.inf}, "now_s"),
        ({"deadline_s": NOW, "now_s": NOW, "horizon_s": math.nan}, "horizon_s"),
        ({"deadline_s": NOW, "now_s": NOW, "horizon_s": 0.0}, "horizon_s"),
        ({"deadline_s": NOW, "now_s": NOW, "horizon_s": -5.0}, "horizon_s"),
    ],
)
def test_urgency_rejects_bad_input(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        urgency(**kwargs)


# --- resource fit -------------------------------------------------------------------------------


def test_resource_fit_hand_worked() -> None:
    # cpu 1/4 = 0.25, memory 256/1024 = 0.25 -> 0.75
    assert resource_fit(1.0, 256.0, 4.0, 1024.0) == pytest.approx(0.75)
    # the scarcer resource decides: memory 512/1024 = 0.5 -> 0.5
    assert resource_fit(1.0, 512.0, 4.0, 1024.0) == pytest.approx(0.5)
    # exactly fills the cpu -> no headroom left
    assert resource_fit(4.0, 1.0, 4.0, 1024.0) == 0.0


def test_resource_fit_does_not_fit_or_nothing_free() -> None:
    assert resource_fit(8.0, 1.0, 4.0, 1024.0) == 0.0  # needs more cpu than free
    assert resource_fit(1.0, 1.0, 0.0, 1024.0) == 0.0  # no cpu free
    assert resource_fit(1.0, 1.0, 4.0, 0.0) == 0.0  # no memory free
    assert resource_fit(1.0, 1.0, -2.0, 1024.0) == 0.0  # overcommitted


def test_resource_fit_zero_requirement_never_limits() -> None:
    assert resource_fit(0.0, 256.0, 0.0, 1024.0) == pytest.approx(0.75)
    assert resource_fit(0.0, 0.0, 0.0, 0.0) == 1.0
    assert resource_fit(1.0, 1.0, math.inf, math.inf) == 1.0


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((math.nan, 1.0, 4.0, 1024.0), "cpu_required"),
        ((1.0, math.nan, 4.0, 1024.0), "memory_mb_required"),
        ((1.0, 1.0, math.nan, 1024.0), "cpu_free"),
        ((1.0, 1.0, 4.0, math.nan), "memory_mb_free"),
        ((-1.0, 1.0, 4.0, 1024.0), "cpu_required"),
        ((1.0, -1.0, 4.0, 1024.0), "memory_mb_required"),
        ((math.inf, 1.0, 4.0, 1024.0), "cpu_required"),
    ],
)
def test_resource_fit_rejects_bad_input(args: tuple, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        resource_fit(*args)


# --- score and classes --------------------------------------------------------------------------


def test_score_hand_worked() -> None:
    # urgency 0.5, fit 0.75, success 0.9 -> 0.25 + 0.225 + 0.18
    assert score() == pytest.approx(0.655)
    # overdue, everything fits perfectly, always succeeded -> 1
    assert score(
        deadline_s=NOW - 5, cpu_required=0.0, memory_mb_required=0.0, historical_success_rate=1.0
    ) == pytest.approx(1.0)
    # no deadline, does not fit, always failed -> 0
    assert score(deadline_s=None, cpu_required=99.0, historical_success_rate=0.0) == 0.0


def test_overdue_outranks_due_in_an_hour() -> None:
    overdue = score(deadline_s=NOW - 30.0)
    in_an_hour = score(deadline_s=NOW + 3600.0)
    assert overdue > in_an_hour
    # and the naive formula's singular point is fine
    assert score(deadline_s=NOW - 1.0) == overdue


def test_success_rate_clipped_but_nan_rejected() -> None:
    assert score(historical_success_rate=1.5) == score(historical_success_rate=1.0)
    assert score(historical_success_rate=-0.2) == score(historical_success_rate=0.0)
    with pytest.raises(ValueError, match="historical_success_rate"):
        score(historical_success_rate=math.nan)


def test_custom_weights() -> None:
    only_urgency = PriorityWeights(urgency=1.0, resource=0.0, success=0.0)
    assert score(weights=only_urgency) == pytest.approx(0.5)


def test_score_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        priority_score(NOW, NOW, 1.0, 1.0, 1.0, 1.0, 1.0)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"urgency": -0.1, "resource": 0.6, "success": 0.5}, "PriorityWeights.urgency"),
        ({"urgency": 0.5, "resource": math.nan, "success": 0.5}, "PriorityWeights.resource"),
        ({"urgency": 0.5, "resource": 0.3, "success": 0.3}, "sum to 1"),
    ],
)
def test_weights_validation(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        PriorityWeights(**kwargs)


def test_weights_tolerate_rounding() -> None:
    PriorityWeights(urgency=0.1 + 0.2, resource=0.5, success=0.2)  # 0.30000000000000004


@pytest.mark.parametrize(
    ("s", "cls"),
    [(1.0, 0), (0.66, 0), (0.659, 1), (0.5, 1), (0.33, 1), (0.329, 2), (0.0, 2)],
)
def test_priority_class(s: float, cls: int) -> None:
    assert priority_class(s) == cls


def test_priority_class_names() -> None:
    assert PRIORITY_CLASSES[priority_class(0.9)] == "high"
    assert PRIORITY_CLASSES[priority_class(0.5)] == "normal"
    assert PRIORITY_CLASSES[priority_class(0.1)] == "low"


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((math.nan,), "score"),
        ((1.2,), "score"),
        ((0.5, 0.2, 0.4), "low_below"),
        ((0.5, math.nan), "high_at"),
    ],
)
def test_priority_class_rejects_bad_input(args: tuple, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        priority_class(*args)


# --- properties ---------------------------------------------------------------------------------

slack = st.floats(min_value=-1e5, max_value=1e5, allow_nan=False)
amount = st.floats(min_value=0.0, max_value=1e4, allow_nan=False)
free = st.floats(min_value=-10.0, max_value=1e4, allow_nan=False)
rate = st.floats(min_value=-0.5, max_value=1.5, allow_nan=False)
deadline = st.one_of(st.none(), slack)


@st.composite
def weights(draw: st.DrawFn) -> PriorityWeights:
    a = draw(st.floats(min_value=0.0, max_value=1.0))
    b = draw(st.floats(min_value=0.0, max_value=1.0 - a))
    return PriorityWeights(urgency=a, resource=b, success=1.0 - a - b)


@settings(max_examples=200, deadline=None)
@given(deadline, amount, amount, free, free, rate, weights())
def test_score_in_unit_interval(d, cpu, mem, cpu_free, mem_free, r, w) -> None:
    s = priority_score(
        deadline_s=None if d is None else NOW + d,
        now_s=NOW,
        cpu_required=cpu,
        memory_mb_required=mem,
        cpu_free=cpu_free,
        memory_mb_free=mem_free,
        historical_success_rate=r,
        weights=w,
    )
    assert 0.0 <= s <= 1.0
    assert priority_class(s) in (0, 1, 2)


@settings(max_examples=200, deadline=None)
@given(slack, slack)
def test_urgency_monotone_and_bounded(a, b) -> None:
    lo, hi = sorted((a, b))
    assert 0.0 < urgency(NOW + hi, NOW) <= urgency(NOW + lo, NOW) <= 1.0


@settings(max_examples=200, deadline=None)
@given(slack, slack, amount, amount, free, free, free, free, rate, rate, weights())
def test_score_monotone_in_each_component(d1, d2, cpu, mem, cf1, cf2, mf1, mf2, r1, r2, w) -> None:
    """An earlier deadline, more free resources, or a better record never lowers the score."""
    base = dict(now_s=NOW, cpu_required=cpu, memory_mb_required=mem, weights=w)
    early, late = sorted((d1, d2))
    cf_lo, cf_hi = sorted((cf1, cf2))
    mf_lo, mf_hi = sorted((mf1, mf2))
    r_lo, r_hi = sorted((r1, r2))

    def s(d, cf, mf, r) -> float:
        return priority_score(deadline_s=NOW + d, cpu_free=cf, memory_mb_free=mf, historical_success_rate=r, **base)

    # urgency: earlier deadline
    assert s(early, cf_lo, mf_lo, r_lo) >= s(late, cf_lo, mf_lo, r_lo)
    # resource: more cpu free, more memory free
    assert s(late, cf_hi, mf_lo, r_lo) >= s(late, cf_lo, mf_lo, r_lo)
    assert s(late, cf_lo, mf_hi, r_lo) >= s(late, cf_lo, mf_lo, r_lo)
    # success: better history
    assert s(late, cf_lo, mf_lo, r_hi) >= s(late, cf_lo, mf_lo, r_lo)
    # and no deadline is never more urgent than any deadline
    assert priority_score(
        deadline_s=None, cpu_free=cf_lo, memory_mb_free=mf_lo, historical_success_rate=r_lo, **base
    ) <= s(late, cf_lo, mf_lo, r_lo)
