"""Circuit breaker state machine: the full cycle, refusals, resets, and only allowed transitions."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.circuit_breaker import (
    Breaker,
    BreakerConfig,
    BreakerState,
    allow_call,
    record_result,
)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
CFG = BreakerConfig(failure_threshold=3, reset_timeout_s=30.0, half_open_max_calls=1, success_threshold=1)


def fail_n(b: Breaker, n: int, now_s: float, cfg: BreakerConfig = CFG) -> Breaker:
    for _ in range(n):
        allowed, b = allow_call(b, now_s, cfg)
        assert allowed
        b = record_result(b, False, now_s, cfg)
    return b


def test_defaults() -> None:
    assert BreakerConfig() == BreakerConfig(5, 30.0, 1, 1)
    assert Breaker() == Breaker(CLOSED, 0, None, 0, 0)


def test_full_cycle_closed_open_half_open_closed() -> None:
    b = Breaker()
    b = fail_n(b, 2, now_s=0.0)
    assert b.state is CLOSED and b.consecutive_failures == 2
    b = fail_n(b, 1, now_s=1.0)  # third consecutive failure trips it
    assert b.state is OPEN and b.opened_at_s == 1.0

    allowed, b = allow_call(b, 30.9, CFG)  # 29.9 s after opening: still open
    assert not allowed and b.state is OPEN

    allowed, b = allow_call(b, 31.0, CFG)  # reset timeout has passed: first trial call
    assert allowed and b.state is HALF_OPEN and b.half_open_in_flight == 1

    b = record_result(b, True, 31.5, CFG)
    assert b == Breaker()  # closed, counters reset


def test_half_open_failure_reopens() -> None:
    b = fail_n(Breaker(), 3, now_s=0.0)
    allowed, b = allow_call(b, 30.0, CFG)
    assert allowed and b.state is HALF_OPEN
    b = record_result(b, False, 32.0, CFG)
    assert b.state is OPEN and b.opened_at_s == 32.0  # the timeout restarts from the failed trial
    assert b.half_open_in_flight == 0 and b.half_open_successes == 0
    assert allow_call(b, 61.0, CFG)[0] is False
    assert allow_call(b, 62.0, CFG)[0] is True


def test_calls_refused_while_open() -> None:
    b = fail_n(Breaker(), 3, now_s=100.0)
    for t in (100.0, 110.0, 129.999):
        allowed, after = allow_call(b, t, CFG)
        assert not allowed and after == b
    # time going backwards (clock skew) never opens the gate early
    assert allow_call(b, 50.0, CFG)[0] is False


def test_success_resets_failure_count() -> None:
    b = fail_n(Breaker(), 2, now_s=0.0)
    b = record_result(b, True, 1.0, CFG)
    assert b.state is CLOSED and b.consecutive_failures == 0
    b = fail_n(b, 2, now_s=2.0)  # 2 more failures: not 4 consecutive, so still closed
    assert b.state is CLOSED and b.consecutive_failures == 2


def test_half_open_admits_at_most_max_calls_in_flight() -> None:
    cfg = BreakerConfig(failure_threshold=1, reset_timeout_s=10.0, half_open_max_calls=2, success_threshold=2)
    b = fail_n(Breaker(), 1, now_s=0.0, cfg=cfg)
    ok1, b = allow_call(b, 10.0, cfg)
    ok2, b = allow_call(b, 10.0, cfg)
    ok3, b3 = allow_call(b, 10.0, cfg)
    assert (ok1, ok2, ok3) == (True, True, False)
    assert b3 == b and b.half_open_in_flight == 2

    b = record_result(b, True, 11.0, cfg)  # 1 of 2 successes: still half-open, a slot frees up
    assert b.state is HALF_OPEN and b.half_open_successes == 1 and b.half_open_in_flight == 1
    ok4, b = allow_call(b, 11.0, cfg)
    assert ok4 and b.half_open_in_flight == 2
    b = record_result(b, True, 12.0, cfg)
    assert b == Breaker()


def test_sequential_trials_when_success_threshold_exceeds_max_calls() -> None:
    cfg = BreakerConfig(failure_threshold=1, reset_timeout_s=5.0, half_open_max_calls=1, success_threshold=3)
    b = fail_n(Breaker(), 1, now_s=0.0, cfg=cfg)
    for i in range(3):
        ok, b = allow_call(b, 5.0 + i, cfg)
        assert ok and b.state is HALF_OPEN
        b = record_result(b, True, 5.5 + i, cfg)
    assert b.state is CLOSED


def test_result_recorded_while_open_is_ignored() -> None:
    b = fail_n(Breaker(), 3, now_s=0.0)
    assert record_result(b, False, 5.0, CFG) == b
    assert record_result(b, True, 5.0, CFG) == b


def test_zero_reset_timeout_goes_straight_to_half_open() -> None:
    cfg = BreakerConfig(failure_threshold=1, reset_timeout_s=0.0)
    b = fail_n(Breaker(), 1, now_s=3.0, cfg=cfg)
    ok, b = allow_call(b, 3.0, cfg)
    assert ok and b.state is HALF_OPEN


def test_inputs_not_mutated() -> None:
    b = Breaker()
    before = Breaker()
    allow_call(b, 0.0, CFG)
    record_result(b, False, 0.0, CFG)
    assert b == before
    with pytest.raises(AttributeError):
        b.state = OPEN  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"failure_threshold": 0}, "BreakerConfig.failure_threshold"),
        ({"failure_threshold": 2.5}, "BreakerConfig.failure_threshold"),
        ({"reset_timeout_s": -1.0}, "BreakerConfig.reset_timeout_s"),
        ({"reset_timeout_s": math.nan}, "BreakerConfig.reset_timeout_s"),
        ({"reset_timeout_s": math.inf}, "BreakerConfig.reset_timeout_s"),
        ({"half_open_max_calls": 0}, "BreakerConfig.half_open_max_calls"),
        ({"success_threshold": 0}, "BreakerConfig.success_threshold"),
        ({"success_threshold": True}, "BreakerConfig.success_threshold"),
    ],
)
def test_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        BreakerConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"state": "ajar"}, "ajar"),
        ({"state": OPEN}, "Breaker.opened_at_s"),
        ({"state": HALF_OPEN, "opened_at_s": math.nan}, "Breaker.opened_at_s"),
        ({"consecutive_failures": -1}, "Breaker.consecutive_failures"),
        ({"half_open_in_flight": -1}, "Breaker.half_open_in_flight"),
    ],
)
def test_breaker_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Breaker(**kwargs)


def test_state_string_is_coerced() -> None:
    assert Breaker(state="open", opened_at_s=0.0).state is OPEN  # type: ignore[arg-type]


@pytest.mark.parametrize("t", [math.nan, math.inf])
def test_bad_time_rejected(t: float) -> None:
    with pytest.raises(ValueError, match="now_s"):
        allow_call(Breaker(), t, CFG)
    with pytest.raises(ValueError, match="now_s"):
        record_result(Breaker(), True, t, CFG)


# --- property: only allowed transitions ---------------------------------------------------------

# (from, to) pairs each operation may produce
ALLOWED_BY_ALLOW_CALL = {(CLOSED, CLOSED), (OPEN, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, HALF_OPEN)}
ALLOWED_BY_RECORD = {
    (CLOSED, CLOSED),
    (CLOSED, OPEN),
    (OPEN, OPEN),
    (HALF_OPEN, HALF_OPEN),
    (HALF_OPEN, CLOSED),
    (HALF_OPEN, OPEN),
}

configs = st.builds(
    BreakerConfig,
    failure_threshold=st.integers(1, 3),
    reset_timeout_s=st.floats(0.0, 20.0),
    half_open_max_calls=st.integers(1, 3),
    success_threshold=st.integers(1, 2),
)
# ("call", dt) asks permission dt seconds after the previous event; ("done", ok, dt) records a call
# result. Results are recorded in any interleaving, even with no call outstanding (late or duplicate
# reports happen in a live system); the breaker must still only make allowed transitions.
events = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.floats(0.0, 12.0)),
        st.tuples(st.just("done"), st.sampled_from([True, True, False]), st.floats(0.0, 12.0)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(configs, events)
def test_only_allowed_transitions(cfg: BreakerConfig, evs: list[tuple]) -> None:
    b = Breaker()
    now_s = 0.0
    for ev in evs:
        now_s += ev[-1]
        before = b
        if ev[0] == "call":
            allowed, b = allow_call(b, now_s, cfg)
            assert (before.state, b.state) in ALLOWED_BY_ALLOW_CALL
            if before.state is OPEN:
                elapsed = now_s - before.opened_at_s
                assert allowed == (elapsed >= cfg.reset_timeout_s)
                assert (b.state is HALF_OPEN) == allowed
            if before.state is CLOSED:
                assert allowed and b == before
            if not allowed:
                assert b == before  # a refusal changes nothing
        else:
            b = record_result(b, ev[1], now_s, cfg)
            assert (before.state, b.state) in ALLOWED_BY_RECORD
            if (before.state, b.state) == (CLOSED, OPEN):
                assert not ev[1] and before.consecutive_failures + 1 == cfg.failure_threshold
            if (before.state, b.state) == (HALF_OPEN, OPEN):
                assert not ev[1]
            if (before.state, b.state) == (HALF_OPEN, CLOSED):
                assert ev[1] and before.half_open_successes + 1 == cfg.success_threshold
            if b.state is OPEN and before.state is not OPEN:
                assert b.opened_at_s == now_s

        # invariants of every reachable state
        if b.state is CLOSED:
            assert b.consecutive_failures < cfg.failure_threshold
            assert b.opened_at_s is None and b.half_open_in_flight == b.half_open_successes == 0
        elif b.state is OPEN:
            assert b.opened_at_s is not None and b.opened_at_s <= now_s
            assert b.half_open_in_flight == b.half_open_successes == 0
        else:
            assert 0 <= b.half_open_in_flight <= cfg.half_open_max_calls
            assert b.half_open_successes < cfg.success_threshold
