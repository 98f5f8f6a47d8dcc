"""The shared retry policy: exponential backoff with jitter, for retryable errors only.

wait = min(base_s * 2**attempt + U(0,1) * jitter_s, cap_s), attempt 0 for the first retry, so by
default the waits lie in [1, 2), [2, 3), [4, 5) s, and at most ``max_retries`` (3) retries happen.
The simulator compiles :func:`backoff_delay_s` with numba, the live executors call it as it is: one
definition for both.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Literal


class ErrorKind(str, enum.Enum):
    TRANSIENT = "transient"
    TIMEOUT = "timeout"
    PERMANENT = "permanent"

    @property
    def retryable(self) -> bool:
        return self is not ErrorKind.PERMANENT


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    backoff: Literal["exponential", "constant"] = "exponential"
    base_s: float = 1.0
    jitter_s: float = 1.0
    cap_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"RetryPolicy.max_retries must be >= 0, got {self.max_retries}")
        if self.backoff not in ("exponential", "constant"):
            raise ValueError(f"RetryPolicy.backoff must be 'exponential' or 'constant', got {self.backoff!r}")
        if not self.base_s > 0:
            raise ValueError(f"RetryPolicy.base_s must be > 0, got {self.base_s}")
        if not self.jitter_s >= 0:
            raise ValueError(f"RetryPolicy.jitter_s must be >= 0, got {self.jitter_s}")
        if not self.cap_s >= self.base_s:
            raise ValueError(f"RetryPolicy.cap_s ({self.cap_s}) must be >= base_s ({self.base_s})")


def backoff_delay_s(attempt: int, jitter_u: float, base_s: float, jitter_s: float, cap_s: float,
                    exponential: bool) -> float:
    """Delay before retry number ``attempt`` (0-based). Scalar arithmetic only, so numba compiles it."""
    growth = 2.0 ** attempt if exponential else 1.0
    delay = base_s * growth + jitter_u * jitter_s
    return delay if delay < cap_s else cap_s


def retry_delay_s(attempt: int, jitter_u: float, policy: RetryPolicy) -> float:
    if not 0.0 <= jitter_u < 1.0 or math.isnan(jitter_u):
        raise ValueError(f"jitter_u must be a U(0,1) draw in [0, 1), got {jitter_u}")
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    return backoff_delay_s(attempt, jitter_u, policy.base_s, policy.jitter_s, policy.cap_s,
                           policy.backoff == "exponential")


def should_retry(attempt: int, kind: ErrorKind, policy: RetryPolicy) -> bool:
    """``attempt`` = retries already made."""
    return kind.retryable and attempt < policy.max_retries


def retry_schedule_s(policy: RetryPolicy, jitter_draws) -> list[float]:
    return [retry_delay_s(i, u, policy) for i, u in zip(range(policy.max_retries), jitter_draws)]
