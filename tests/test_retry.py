"""The shared retry policy: hand-computed delays, the retry limit, validation, and numba parity."""

from __future__ import annotations

import itertools
import math

import numba
import numpy as np
import pytest

from core.retry import (
    ErrorKind,
    RetryPolicy,
    backoff_delay_s,
    retry_delay_s,
    retry_schedule_s,
    should_retry,
)

DEFAULT = RetryPolicy()


# --- delays -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "u", "expected_s"),
    [
        (0, 0.0, 1.0),  # 1 * 2**0 + 0
        (1, 0.0, 2.0),  # 1 * 2**1 + 0
        (2, 0.0, 4.0),  # 1 * 2**2 + 0
        (0, 0.999, 1.999),  # 1 + 0.999 * 1
        (1, 0.999, 2.999),
        (2, 0.999, 4.999),
        (3, 0.5, 8.5),
        (4, 0.5, 16.5),
        (5, 0.0, 30.0),  # 32 capped at 30
        (5, 0.999, 30.0),
        (40, 0.5, 30.0),
    ],
)
def test_default_exponential_delays(attempt: int, u: float, expected_s: float) -> None:
    assert retry_delay_s(attempt, u, DEFAULT) == pytest.approx(expected_s, abs=1e-12)


def test_default_waits_lie_in_documented_windows() -> None:
    for attempt, (lo, hi) in enumerate([(1, 2), (2, 3), (4, 5)]):
        for u in (0.0, 0.25, 0.5, 0.999999):
            assert lo <= retry_delay_s(attempt, u, DEFAULT) < hi


def test_cap_applies_to_jitter_too() -> None:
    # 16 + 0.9 * 20 = 34 > 30: the jitter does not escape the cap
    policy = RetryPolicy(jitter_s=20.0)
    assert retry_delay_s(4, 0.9, policy) == 30.0


def test_constant_backoff() -> None:
    policy = RetryPolicy(backoff="constant", base_s=2.0, jitter_s=0.5, cap_s=10.0)
    assert [retry_delay_s(a, 0.0, policy) for a in range(4)] == [2.0, 2.0, 2.0, 2.0]
    assert retry_delay_s(7, 0.5, policy) == pytest.approx(2.25)


def test_constant_backoff_is_capped() -> None:
    policy = RetryPolicy(backoff="constant", base_s=2.0, jitter_s=5.0, cap_s=3.0)
    assert retry_delay_s(0, 0.9, policy) == 3.0


def test_zero_jitter_is_deterministic() -> None:
    policy = RetryPolicy(jitter_s=0.0)
    assert retry_delay_s(2, 0.0, policy) == retry_delay_s(2, 0.999, policy) == 4.0


def test_huge_attempt_does_not_overflow() -> None:
    # 2.0 ** 5000 raises OverflowError in Python; the exponent is clamped so the cap applies
    assert retry_delay_s(5000, 0.5, DEFAULT) == 30.0
    assert retry_delay_s(5000, 0.5, RetryPolicy(cap_s=math.inf)) == pytest.approx(2.0**1000)


def test_schedule() -> None:
    assert retry_schedule_s(DEFAULT, [0.0, 0.5, 0.25]) == pytest.approx([1.0, 2.5, 4.25])
    assert retry_schedule_s(RetryPolicy(max_retries=0), []) == []
    assert retry_schedule_s(DEFAULT, np.array([0.0, 0.0, 0.0])) == [1.0, 2.0, 4.0]


def test_schedule_needs_one_draw_per_retry() -> None:
    with pytest.raises(ValueError, match="jitter_draws.*max_retries=3.*got 2"):
        retry_schedule_s(DEFAULT, [0.1, 0.2])
    with pytest.raises(ValueError, match="jitter_draws.*got 4"):
        retry_schedule_s(DEFAULT, [0.1, 0.2, 0.3, 0.4])


def test_numpy_integer_attempt_accepted() -> None:
    assert retry_delay_s(np.int64(2), np.float64(0.0), DEFAULT) == 4.0


@pytest.mark.parametrize("u", [-0.1, 1.0, 1.5, math.nan, math.inf])
def test_jitter_draw_must_be_unit_interval(u: float) -> None:
    with pytest.raises(ValueError, match="jitter_u"):
        retry_delay_s(0, u, DEFAULT)


@pytest.mark.parametrize("attempt", [-1, 1.5, True, "2"])
def test_attempt_must_be_non_negative_int(attempt: object) -> None:
    with pytest.raises(ValueError, match="attempt"):
        retry_delay_s(attempt, 0.0, DEFAULT)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attempt"):
        should_retry(attempt, ErrorKind.TRANSIENT, DEFAULT)  # type: ignore[arg-type]


# --- should_retry -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "retryable"),
    [(ErrorKind.TRANSIENT, True), (ErrorKind.TIMEOUT, True), (ErrorKind.PERMANENT, False)],
)
def test_should_retry_by_kind(kind: ErrorKind, retryable: bool) -> None:
    assert kind.retryable is retryable
    assert should_retry(0, kind, DEFAULT) is retryable


def test_three_retry_limit() -> None:
    # attempt = retries already made: retries 0, 1, 2 are allowed, the 4th retry is not
    assert [should_retry(a, ErrorKind.TRANSIENT, DEFAULT) for a in range(5)] == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert [should_retry(a, ErrorKind.TIMEOUT, DEFAULT) for a in range(5)] == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_no_retries_policy() -> None:
    assert not should_retry(0, ErrorKind.TRANSIENT, RetryPolicy(max_retries=0))


def test_should_retry_accepts_kind_value_and_rejects_unknown() -> None:
    assert should_retry(0, "timeout", DEFAULT)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'flaky'"):
        should_retry(0, "flaky", DEFAULT)  # type: ignore[arg-type]


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_retries": -1}, "RetryPolicy.max_retries must be >= 0"),
        ({"max_retries": 2.5}, "RetryPolicy.max_retries"),
        ({"backoff": "linear"}, "RetryPolicy.backoff"),
        ({"base_s": 0.0}, "RetryPolicy.base_s"),
        ({"base_s": -1.0}, "RetryPolicy.base_s"),
        ({"base_s": math.nan}, "RetryPolicy.base_s"),
        ({"base_s": math.inf, "cap_s": math.inf}, "RetryPolicy.base_s"),
        ({"jitter_s": -0.1}, "RetryPolicy.jitter_s"),
        ({"jitter_s": math.nan}, "RetryPolicy.jitter_s"),
        ({"cap_s": 0.5}, r"RetryPolicy.cap_s \(0.5\) must be >= RetryPolicy.base_s \(1.0\)"),
        ({"cap_s": math.nan}, "RetryPolicy.cap_s"),
    ],
)
def test_policy_validation_names_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**kwargs)


def test_policy_is_frozen_and_defaults_match_spec() -> None:
    assert RetryPolicy(3, "exponential", 1.0, 1.0, 30.0) == DEFAULT
    with pytest.raises(AttributeError):
        DEFAULT.max_retries = 5  # type: ignore[misc]


# --- numba parity -------------------------------------------------------------------------------


def test_numba_compiled_matches_python() -> None:
    """The simulator compiles the very same function; both must give bit-identical delays."""
    jitted = numba.njit(backoff_delay_s)
    attempts = [0, 1, 2, 3, 4, 5, 10, 63, 64, 1000, 5000]
    draws = [0.0, 1e-9, 0.25, 0.5, 0.999, 0.9999999999]
    params = [  # base_s, jitter_s, cap_s
        (1.0, 1.0, 30.0),
        (0.1, 0.0, 5.0),
        (0.5, 2.0, 0.5),
        (2.0, 0.3, math.inf),
    ]
    for attempt, u, (base_s, jitter_s, cap_s), exponential in itertools.product(attempts, draws, params, (True, False)):
        expected = backoff_delay_s(attempt, u, base_s, jitter_s, cap_s, exponential)
        got = jitted(attempt, u, base_s, jitter_s, cap_s, exponential)
        assert got == expected, (attempt, u, base_s, jitter_s, cap_s, exponential, got, expected)
