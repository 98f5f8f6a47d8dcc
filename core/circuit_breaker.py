"""Circuit breaker for downstream service calls, as a pure state machine.

Why: when a downstream service (payment, inventory, ...) is down, every call still waits for its
timeout and then retries, so the executors pile up blocked slots and the retries keep the service
from recovering. The breaker fails fast instead:

- ``closed``: calls pass; ``failure_threshold`` consecutive failures open it (a success resets
  the count);
- ``open``: calls are refused without touching the service, until ``reset_timeout_s`` has passed
  since it opened;
- ``half_open``: up to ``half_open_max_calls`` trial calls at a time are let through;
  ``success_threshold`` successful trials close it, any failed trial opens it again (the timeout
  restarts from that failure).

Pure: the functions take a :class:`Breaker` and return a new one; the caller owns the state (one
per downstream service), supplies ``now_s`` from its clock, and must record a result for every call
it was allowed to make (a timed-out call is a failure). A trial whose result is never recorded keeps
its half-open slot.

Results are attributed to the state the breaker is in when they are recorded: a result recorded
while open (a call admitted before it opened, finishing late) is ignored, since the breaker is
already refusing calls and the outage is already known.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace

from core._checks import check_int


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def _time(now_s: float) -> float:
    t = float(now_s)
    if not math.isfinite(t):
        raise ValueError(f"now_s must be a finite time in seconds, got {now_s}")
    return t


@dataclass(frozen=True)
class BreakerConfig:
    """Thresholds of one breaker; validated so a misconfiguration fails at load time, not in the
    middle of an outage."""

    failure_threshold: int = 5
    reset_timeout_s: float = 30.0
    half_open_max_calls: int = 1
    success_threshold: int = 1

    def __post_init__(self) -> None:
        check_int(self.failure_threshold, "BreakerConfig.failure_threshold", 1)
        check_int(self.half_open_max_calls, "BreakerConfig.half_open_max_calls", 1)
        check_int(self.success_threshold, "BreakerConfig.success_threshold", 1)
        t = self.reset_timeout_s
        valid = not isinstance(t, bool) and isinstance(t, (int, float))
        if not (valid and t >= 0 and math.isfinite(t)):
            raise ValueError(f"BreakerConfig.reset_timeout_s must be a finite number >= 0, got {t!r}")


@dataclass(frozen=True)
class Breaker:
    """The breaker's state. ``opened_at_s`` is when it last opened (kept while half-open);
    ``half_open_in_flight`` counts admitted trial calls without a recorded result."""

    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    opened_at_s: float | None = None
    half_open_in_flight: int = 0
    half_open_successes: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", BreakerState(self.state))  # ValueError names a bad state
        check_int(self.consecutive_failures, "Breaker.consecutive_failures", 0)
        check_int(self.half_open_in_flight, "Breaker.half_open_in_flight", 0)
        check_int(self.half_open_successes, "Breaker.half_open_successes", 0)
        if self.state is not BreakerState.CLOSED:
            if self.opened_at_s is None or not math.isfinite(self.opened_at_s):
                raise ValueError(
                    f"Breaker.opened_at_s must be a finite time when state is "
                    f"{self.state.value!r}, got {self.opened_at_s}"
                )


_CLOSED = Breaker()


def allow_call(b: Breaker, now_s: float, cfg: BreakerConfig) -> tuple[bool, Breaker]:
    """Whether a call may go to the service now, and the breaker after the decision.

    Open turns half-open once ``reset_timeout_s`` has passed since ``opened_at_s``; the call that
    finds it so is the first trial. Half-open admits a call while fewer than
    ``half_open_max_calls`` trials are in flight.
    """
    now_s = _time(now_s)
    if b.state is BreakerState.CLOSED:
        return True, b
    if b.state is BreakerState.OPEN:
        assert b.opened_at_s is not None  # guaranteed by Breaker.__post_init__
        if now_s - b.opened_at_s < cfg.reset_timeout_s:
            return False, b
        b = replace(b, state=BreakerState.HALF_OPEN, half_open_in_flight=0, half_open_successes=0)
    if b.half_open_in_flight < cfg.half_open_max_calls:
        return True, replace(b, half_open_in_flight=b.half_open_in_flight + 1)
    return False, b


def record_result(b: Breaker, success: bool, now_s: float, cfg: BreakerConfig) -> Breaker:
    """The breaker after a call admitted by :func:`allow_call` finished (``success`` or not).

    Closed: a failure counts up and the ``failure_threshold``-th consecutive one opens the breaker
    (``opened_at_s = now_s``); a success resets the count. Half-open: the ``success_threshold``-th
    successful trial closes it, any failure reopens it at ``now_s``. Open: ignored (see module doc).
    """
    now_s = _time(now_s)
    if b.state is BreakerState.CLOSED:
        if success:
            return b if b.consecutive_failures == 0 else _CLOSED
        failures = b.consecutive_failures + 1
        if failures >= cfg.failure_threshold:
            return Breaker(state=BreakerState.OPEN, consecutive_failures=failures, opened_at_s=now_s)
        return replace(b, consecutive_failures=failures)
    if b.state is BreakerState.OPEN:
        return b
    # half-open
    if not success:
        return Breaker(state=BreakerState.OPEN, consecutive_failures=b.consecutive_failures + 1, opened_at_s=now_s)
    successes = b.half_open_successes + 1
    if successes >= cfg.success_threshold:
        return _CLOSED
    return replace(b, half_open_in_flight=max(0, b.half_open_in_flight - 1), half_open_successes=successes)
