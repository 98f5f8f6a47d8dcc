"""The shared retry policy: exponential backoff with jitter, for retryable errors only.

    wait_s = min(base_s * 2**attempt + jitter_u * jitter_s, cap_s)

``attempt`` is 0 for the first retry, 1 for the second, ...; ``jitter_u`` is a U(0,1) draw that the
caller supplies (so this module owns no random state and the simulator stays reproducible). With the
defaults (base 1 s, jitter 1 s, cap 30 s, 3 retries) the waits lie in [1, 2), [2, 3), [4, 5) s.

Why one module: the numba-jitted simulator (``envs/kernel.py``) compiles :func:`backoff_delay_s`
with ``numba.njit`` and the live executors call the very same function in plain Python, so what the
agent is trained on and what production does cannot drift apart. That is also why
:func:`backoff_delay_s` takes scalars only and never raises: validation lives in the Python-only
wrappers (:class:`RetryPolicy`, :func:`retry_delay_s`).

Jitter is there to de-synchronise retries: without it every task that failed in the same outage
retries at the same instant and knocks the recovering service over again.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from core._checks import check_int

# 2.0 ** 1024 overflows a float64 (Python raises OverflowError, numba returns inf). Past any
# realistic cap the exponent no longer matters, so it is clamped: both implementations then agree
# and neither raises. 2**1000 s is far beyond any cap a policy could sensibly hold.
_MAX_EXPONENT = 1000


class ErrorKind(str, enum.Enum):
    """How an attempt failed; decides whether a retry can help.

    Transient errors (connection reset, 503) and timeouts may succeed on a later attempt; permanent
    errors (validation failure, 4xx) will fail the same way again, so retrying only adds load.
    """

    TRANSIENT = "transient"
    TIMEOUT = "timeout"
    PERMANENT = "permanent"

    @property
    def retryable(self) -> bool:
        """True for the kinds a retry can fix: transient and timeout."""
        return self is not ErrorKind.PERMANENT


@dataclass(frozen=True)
class RetryPolicy:
    """A task type's retry policy; validated on construction so a bad config fails at load time.

    It is a frozen stdlib dataclass (not a pydantic model) so the config loader can embed it as a
    field and pydantic runs ``__post_init__``; the error messages are prefixed
    ``RetryPolicy.<field>`` so the config error names the field.
    """

    max_retries: int = 3
    backoff: Literal["exponential", "constant"] = "exponential"
    base_s: float = 1.0
    jitter_s: float = 1.0
    cap_s: float = 30.0

    def __post_init__(self) -> None:
        check_int(self.max_retries, "RetryPolicy.max_retries", 0)
        if self.backoff not in ("exponential", "constant"):
            raise ValueError(f"RetryPolicy.backoff must be 'exponential' or 'constant', got {self.backoff!r}")
        # `not x > 0` rather than `x <= 0` so NaN is rejected too.
        if not (self.base_s > 0 and math.isfinite(self.base_s)):
            raise ValueError(f"RetryPolicy.base_s must be a finite number > 0, got {self.base_s}")
        if not (self.jitter_s >= 0 and math.isfinite(self.jitter_s)):
            raise ValueError(f"RetryPolicy.jitter_s must be a finite number >= 0, got {self.jitter_s}")
        # cap_s = inf is allowed: it means "no cap".
        if not self.cap_s >= self.base_s:
            raise ValueError(f"RetryPolicy.cap_s ({self.cap_s}) must be >= RetryPolicy.base_s ({self.base_s})")


def backoff_delay_s(
    attempt: int, jitter_u: float, base_s: float, jitter_s: float, cap_s: float, exponential: bool
) -> float:
    """Delay in seconds before retry number ``attempt`` (0-based), capped at ``cap_s``.

    Scalar arithmetic only (no Python objects, no exceptions beyond arithmetic) so that
    ``numba.njit(backoff_delay_s)`` compiles it unchanged for the simulator. It does not validate
    its inputs; call :func:`retry_delay_s` from Python code.
    """
    if exponential:
        exponent = attempt if attempt < _MAX_EXPONENT else _MAX_EXPONENT
        growth = 2.0**exponent
    else:
        growth = 1.0
    delay_s = base_s * growth + jitter_u * jitter_s
    return delay_s if delay_s < cap_s else cap_s


def retry_delay_s(attempt: int, jitter_u: float, policy: RetryPolicy) -> float:
    """Validated :func:`backoff_delay_s` for the live executors.

    ``jitter_u`` must be a U(0,1) draw in [0, 1): a value outside it would silently stretch or
    shrink the jitter window, which is exactly the kind of drift from the simulator this module
    prevents.
    """
    attempt = check_int(attempt, "attempt", 0)
    if not 0.0 <= jitter_u < 1.0:  # also rejects NaN
        raise ValueError(f"jitter_u must be a U(0,1) draw in [0, 1), got {jitter_u}")
    return backoff_delay_s(
        attempt, float(jitter_u), policy.base_s, policy.jitter_s, policy.cap_s, policy.backoff == "exponential"
    )


def should_retry(attempt: int, kind: ErrorKind, policy: RetryPolicy) -> bool:
    """Whether a failure of ``kind`` gets another try, ``attempt`` being the retries already made.

    True iff the kind is retryable and fewer than ``policy.max_retries`` retries have been made,
    so a task runs at most ``1 + max_retries`` times.
    """
    attempt = check_int(attempt, "attempt", 0)
    kind = ErrorKind(kind)  # accepts "timeout" etc.; ValueError names an unknown kind
    return kind.retryable and attempt < policy.max_retries


def retry_schedule_s(policy: RetryPolicy, jitter_draws: Sequence[float]) -> list[float]:
    """The delays for attempts ``0 .. max_retries - 1``, one jitter draw each.

    Exactly ``policy.max_retries`` draws are required: a silent truncation (``zip``) or unused draws
    would hide a caller that sized its random numbers for a different policy.
    """
    draws = list(jitter_draws)
    if len(draws) != policy.max_retries:
        raise ValueError(f"jitter_draws must hold exactly max_retries={policy.max_retries} draws, got {len(draws)}")
    return [retry_delay_s(attempt, u, policy) for attempt, u in enumerate(draws)]
