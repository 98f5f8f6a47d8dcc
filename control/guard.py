"""The concurrency guard: every decision of every policy passes through here before it acts.

A pure function of (context, proposal, state). In order:

1. a proposal that is not a finite number holds the current concurrency (``invalid_proposal``);
2. the emergency rule: while an SLI is violated and the backlog grows, never scale down
   (``emergency_hold``) and raise the proposal to ``current x emergency_scale_up_factor``
   (``emergency_scale_up``), ignoring cooldowns: the agent still chooses, the guard rescues;
3. cooldowns: no scale-down within ``scale_down_cooldown_s`` of the last change, no scale-up within
   ``scale_up_cooldown_s`` (``cooldown``);
4. step limits: at most +``max_scale_up_fraction`` / -``max_scale_down_fraction`` of the current
   value per decision, though a change of ``min_step`` slots is always allowed (``max_step``);
5. bounds: ``[min_concurrency, max_concurrency]`` (``min_bound`` / ``max_bound``).

It returns the applied value and the reasons it differs from the proposal.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from core.config import ClusterConfig, GuardSettings, SLIConfig
from core.domain import ClusterSnapshot, sli_status


class GuardContext(NamedTuple):
    """What the guard needs to know about the cluster right now."""

    now_s: float
    current: int  # target concurrency in force
    sli_violated: bool
    backlog_growing: bool


def guard_context(
    now_s: float, current: int, snap: ClusterSnapshot, prev: ClusterSnapshot | None, slis: SLIConfig
) -> GuardContext:
    """The guard's view of an interval: an SLI is violated, the backlog grew since the previous one.
    The simulator's environment and the live tuner both build it here."""
    return GuardContext(
        now_s, current, not sli_status(snap, slis).all_ok, prev is not None and snap.backlog > prev.backlog
    )


class GuardState(NamedTuple):
    last_change_s: float = -math.inf


class GuardDecision(NamedTuple):
    proposed: float
    applied: int
    reasons: tuple[str, ...]
    emergency: bool
    state: GuardState

    @property
    def overridden(self) -> bool:
        return bool(self.reasons)


def scale_concurrency(current: int, factor: float) -> int:
    """Apply a scaling factor to a concurrency: any factor other than 1 moves it by at least one slot.

    ``round(2 x 1.2) == 2`` would otherwise leave a small cluster stuck, however loudly the policy asks.
    """
    if not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"scaling factor must be a finite number > 0, got {factor}")
    target = round(current * factor)
    if factor > 1:
        return max(target, current + 1)
    if factor < 1:
        return max(min(target, current - 1), 0)
    return current


def guard(
    ctx: GuardContext,
    proposed: float,
    state: GuardState,
    settings: GuardSettings,
    cluster: ClusterConfig,
) -> GuardDecision:
    """Bound ``proposed`` (a target concurrency) and say why it was changed."""
    current = ctx.current
    reasons: list[str] = []
    if not isinstance(proposed, (int, float)) or not math.isfinite(proposed):
        return GuardDecision(proposed, _clamp(current, cluster, reasons), ("invalid_proposal", *reasons), False, state)

    value = int(math.ceil(proposed)) if proposed > current else int(math.floor(proposed))
    emergency = settings.emergency and ctx.sli_violated and ctx.backlog_growing
    if emergency:
        rescue = math.ceil(current * settings.emergency_scale_up_factor)
        if value < current:
            reasons.append("emergency_hold")
        if value < rescue:
            value = rescue
            reasons.append("emergency_scale_up")
    else:
        since = ctx.now_s - state.last_change_s
        if (value < current and since < settings.scale_down_cooldown_s) or (
            value > current and since < settings.scale_up_cooldown_s
        ):
            value = current
            reasons.append("cooldown")

    down_limit, up_limit = step_limits(current, settings)
    if value > up_limit:
        value = up_limit
        reasons.append("max_step")
    elif value < down_limit:
        value = down_limit
        reasons.append("max_step")

    value = _clamp(value, cluster, reasons)
    new_state = GuardState(ctx.now_s) if value != current else state
    return GuardDecision(proposed, value, tuple(reasons), emergency, new_state)


def step_limits(current: int, settings: GuardSettings) -> tuple[int, int]:
    """The least and most one decision may move ``current`` to (before the cluster's bounds):
    -``max_scale_down_fraction`` / +``max_scale_up_fraction``, though ``min_step`` slots always."""
    up = max(current + settings.min_step, math.floor(current * (1 + settings.max_scale_up_fraction)))
    down = min(current - settings.min_step, math.ceil(current * (1 - settings.max_scale_down_fraction)))
    return down, up


def _clamp(value: int, cluster: ClusterConfig, reasons: list[str]) -> int:
    if value < cluster.min_concurrency:
        reasons.append("min_bound")
        return cluster.min_concurrency
    if value > cluster.max_concurrency:
        reasons.append("max_bound")
        return cluster.max_concurrency
    return value
