"""Dynamic task priority: how urgent a task is, how well it fits, and how likely it is to succeed.

    score = 0.5 * urgency + 0.3 * resource_fit + 0.2 * historical_success      (each in [0, 1])

Why not the naive ``urgency = 1 / (1 + deadline - now)``: at ``deadline - now = -1`` it divides by
zero, between -1 and 0 it exceeds 1, and below -1 it turns negative, so an overdue task would rank
*below* every task that is still on time, exactly backwards. It also depends on the time unit. Here
urgency is measured against a horizon in seconds and saturates at the deadline:

    urgency = 1 / (1 + max(0, deadline_s - now_s) / horizon_s)

With the default 60 s horizon a task due in 60 s has urgency 0.5, one due in 5 min 1/6, one due now
or overdue 1.0. It is continuous, non-increasing in the slack, and in (0, 1] for any finite
deadline; a task without a deadline (``None``) has urgency 0.

Class 0 is the most urgent, matching the simulator's priority classes (served strictly in order)
and ``priority_mix`` in the config (high, normal, low).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PRIORITY_CLASSES = ("high", "normal", "low")


def _number(name: str, value: float, *, allow_inf: bool = False) -> float:
    """``value`` as a float; NaN (and, unless allowed, +-inf) raises ValueError naming ``name``.

    NaN must never reach a comparison here: every comparison with NaN is False, so it would silently
    land in whichever branch the code reaches last instead of failing."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(x):
        raise ValueError(f"{name} must not be NaN")
    if not allow_inf and math.isinf(x):
        raise ValueError(f"{name} must be finite, got {x}")
    return x


def _clip01(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


@dataclass(frozen=True)
class PriorityWeights:
    """Weights of the score's components; non-negative and summing to 1, so the score is in [0, 1]
    and the class thresholds keep their meaning whatever the weights."""

    urgency: float = 0.5
    resource: float = 0.3
    success: float = 0.2

    def __post_init__(self) -> None:
        for field in ("urgency", "resource", "success"):
            value = _number(f"PriorityWeights.{field}", getattr(self, field))
            if value < 0:
                raise ValueError(f"PriorityWeights.{field} must be >= 0, got {value}")
        total = self.urgency + self.resource + self.success
        if abs(total - 1.0) > 1e-9:
            raise ValueError(
                f"PriorityWeights must sum to 1, got urgency={self.urgency}"
                f" + resource={self.resource} + success={self.success} = {total}"
            )


def urgency(deadline_s: float | None, now_s: float, horizon_s: float = 60.0) -> float:
    """Urgency in [0, 1]: ``1 / (1 + max(0, deadline_s - now_s) / horizon_s)``.

    1.0 at or past the deadline (an overdue task is the most urgent, never less), 0.5 when the slack
    equals ``horizon_s``, towards 0 as the deadline recedes; 0.0 for no deadline (``None`` or +inf).
    Times are in seconds on the same clock; ``now_s`` is passed in, never read.
    """
    now_s = _number("now_s", now_s)
    horizon_s = _number("horizon_s", horizon_s)
    if horizon_s <= 0:
        raise ValueError(f"horizon_s must be > 0, got {horizon_s}")
    if deadline_s is None:
        return 0.0
    deadline_s = _number("deadline_s", deadline_s, allow_inf=True)
    slack_s = max(0.0, deadline_s - now_s)
    return 1.0 / (1.0 + slack_s / horizon_s)  # slack inf -> 0.0


def resource_fit(cpu_required: float, memory_mb_required: float, cpu_free: float, memory_mb_free: float) -> float:
    """How comfortably the task fits the free resources, in [0, 1].

    ``1 - max(cpu_required / cpu_free, memory_mb_required / memory_mb_free)`` clipped to [0, 1]: a
    task that needs little of what is free scores near 1, one that takes the last of a resource or
    does not fit scores 0 (running it now would block, or starve the tasks behind it). A resource
    with nothing free (``<= 0``, negative meaning overcommitted) gives 0 if the task needs any of
    it; a requirement of 0 never limits the fit (the task needs none of that resource).
    """
    cpu_required = _number("cpu_required", cpu_required)
    memory_mb_required = _number("memory_mb_required", memory_mb_required)
    cpu_free = _number("cpu_free", cpu_free, allow_inf=True)
    memory_mb_free = _number("memory_mb_free", memory_mb_free, allow_inf=True)
    if cpu_required < 0:
        raise ValueError(f"cpu_required must be >= 0, got {cpu_required}")
    if memory_mb_required < 0:
        raise ValueError(f"memory_mb_required must be >= 0, got {memory_mb_required}")

    worst = 0.0
    for required, free in ((cpu_required, cpu_free), (memory_mb_required, memory_mb_free)):
        if required == 0.0:
            continue
        if free <= 0.0:
            return 0.0
        worst = max(worst, required / free)
    return _clip01(1.0 - worst)


def priority_score(
    *,
    deadline_s: float | None,
    now_s: float,
    cpu_required: float,
    memory_mb_required: float,
    cpu_free: float,
    memory_mb_free: float,
    historical_success_rate: float,
    weights: PriorityWeights = PriorityWeights(),
    horizon_s: float = 60.0,
) -> float:
    """Weighted priority score in [0, 1]; higher runs first.

    Keyword-only so that the many float arguments cannot be swapped by position.
    ``historical_success_rate`` is clipped to [0, 1] (a rate estimate may overshoot slightly); NaN
    in any argument raises ValueError naming it.
    """
    u = urgency(deadline_s, now_s, horizon_s)
    r = resource_fit(cpu_required, memory_mb_required, cpu_free, memory_mb_free)
    s = _clip01(_number("historical_success_rate", historical_success_rate, allow_inf=True))
    # weights sum to 1 only within 1e-9: clip so the score never leaves [0, 1] by rounding
    return _clip01(weights.urgency * u + weights.resource * r + weights.success * s)


def priority_class(score: float, high_at: float = 0.66, low_below: float = 0.33) -> int:
    """Map a score to a class index into :data:`PRIORITY_CLASSES`: 0 = high, 1 = normal, 2 = low.

    ``score >= high_at`` is high, ``score < low_below`` is low, anything between is normal.
    """
    score = _number("score", score)
    high_at = _number("high_at", high_at)
    low_below = _number("low_below", low_below)
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"score must be in [0, 1], got {score}")
    if not 0.0 <= low_below <= high_at <= 1.0:
        raise ValueError(
            f"thresholds must satisfy 0 <= low_below <= high_at <= 1, got low_below={low_below}, high_at={high_at}"
        )
    if score >= high_at:
        return 0
    if score < low_below:
        return 2
    return 1
