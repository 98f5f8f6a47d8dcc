"""Forecast-driven scale-out with reactive scale-in: the ``predictive`` baseline.

In the manner of AWS EC2 Auto Scaling's predictive scaling (``ForecastAndScale`` mode): capacity is
launched ahead of the forecast load by a buffer that covers the instances' warm-up
(``SchedulingBufferTime``), and the group's capacity is the larger of what the forecast asks and
what the dynamic (reactive) policy asks. The forecast never removes capacity: it can only raise
the floor, so scale-in follows the observed load.

- Forecaster, on the observed arrival rate (tasks/s) of each interval: Holt's linear method (double
  exponential smoothing: a level and a trend per second, ``alpha``/``beta``), which follows a ramp
  with no lag in steady state; and, once a whole season of history exists (``season_s``; default
  one simulated day, ``86 400 / simulation.time_compression`` s), seasonal-naive: the rate one
  season before the forecast time (AWS forecasts from the daily and weekly pattern of the past
  days), used instead of Holt's from then on (Holt's trend overshoots every turn of a daily
  curve). A day that runs above yesterday is caught by the reactive capacity below.
- Lead: ``cluster.warmup_s`` plus one control interval: a slot asked for now serves after the
  warm-up, and the capacity must hold until the next decision. The forecast is the highest rate in
  ``[now + warmup, now + warmup + interval + extra_lead_s]`` (``extra_lead_s`` 0 by default: a
  longer horizon launches capacity for a rise earlier, as AWS's ``SchedulingBufferTime`` does).
- Capacity for a rate: ``ceil(rate x service time / target_utilisation)`` (Little's law); the
  reactive capacity adds the slots that drain the current backlog within one interval. Service
  time is the interval's measured time per attempt, else the nominal one.

The state is small and immutable: Holt's level and trend, and the interval rates of at most one
season plus the lead (a few hundred floats at the default compression).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from control.policies import Policy, PolicyContext
from core.config import AutotuneConfig

DAY_S = 86_400.0

RateSample = tuple[float, float, float]  # (end time_s of an interval, its duration_s, arrivals per second)


class PredictiveSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    alpha: float = Field(default=0.5, gt=0.0, le=1.0, description="Holt's level smoothing")
    beta: float = Field(default=0.3, gt=0.0, le=1.0, description="Holt's trend smoothing")
    target_utilisation: float = Field(default=0.7, gt=0.0, le=1.0, description="busy share of the slots aimed for")
    season_s: float | None = Field(
        default=None, gt=0.0, description="seasonal-naive period; None: one simulated day (86400 / time_compression)"
    )
    seasonal: bool = Field(default=True, description="use seasonal-naive once a season of history exists")
    extra_lead_s: float = Field(
        default=0.0, ge=0.0, le=3600.0, description="forecast horizon beyond the warm-up plus one interval"
    )


@dataclass(frozen=True)
class HoltState:
    level: float = 0.0
    trend_per_s: float = 0.0
    time_s: float | None = None  # of the last observation; None: none yet


@dataclass(frozen=True)
class PredictiveState:
    holt: HoltState = HoltState()
    history: tuple[RateSample, ...] = ()  # for seasonal-naive; empty when it is off


def holt_update(state: HoltState, time_s: float, value: float, alpha: float, beta: float) -> HoltState:
    """Holt's linear method with an uneven time step: trend in units per second."""
    if state.time_s is None:
        return HoltState(value, 0.0, time_s)
    dt = time_s - state.time_s
    if dt <= 0:
        raise ValueError(f"time_s ({time_s}) must be after the last observation ({state.time_s})")
    level = alpha * value + (1 - alpha) * (state.level + state.trend_per_s * dt)
    trend = beta * (level - state.level) / dt + (1 - beta) * state.trend_per_s
    return HoltState(level, trend, time_s)


def holt_forecast(state: HoltState, horizon_s: float) -> float:
    """Level plus trend x horizon, never below zero (a rate)."""
    return max(0.0, state.level + state.trend_per_s * horizon_s)


def seasonal_naive(history: Sequence[RateSample], at_s: float, season_s: float) -> float | None:
    """The rate of the interval that contained the time one season before ``at_s``, or None when
    the history does not reach back that far."""
    past_s = at_s - season_s
    for end_s, duration_s, rate in history:
        if end_s - duration_s < past_s <= end_s:
            return rate
    return None


def forecast_rate(
    state: PredictiveState,
    now_s: float,
    lead_s: float,
    interval_s: float,
    season_s: float | None,
    extra_lead_s: float = 0.0,
) -> float:
    """The highest forecast rate over ``[now + lead, now + lead + interval + extra_lead]``:
    seasonal-naive where the history reaches a season back, else Holt's. Holt's forecast is a line,
    so its ends suffice; seasonal-naive is read at least once per interval of the horizon."""
    span_s = interval_s + extra_lead_s
    holt = max(holt_forecast(state.holt, lead_s), holt_forecast(state.holt, lead_s + span_s))
    if season_s is None:
        return holt
    n = max(1, math.ceil(span_s / interval_s - 1e-9))
    seasonal = [
        r
        for k in range(n + 1)
        if (r := seasonal_naive(state.history, now_s + lead_s + span_s * k / n, season_s)) is not None
    ]
    return max(seasonal) if seasonal else holt


def capacity_for(rate_per_s: float, service_s: float, target_utilisation: float) -> int:
    return math.ceil(rate_per_s * service_s / target_utilisation)


def predictive_policy(
    cfg: AutotuneConfig, settings: PredictiveSettings | None = None, name: str = "predictive"
) -> Policy:
    settings = settings or PredictiveSettings()
    season_s = (settings.season_s or DAY_S / cfg.simulation.time_compression) if settings.seasonal else None
    lead_s = cfg.cluster.warmup_s + cfg.control.interval_s

    def decide(ctx: PolicyContext, state: PredictiveState) -> tuple[float, PredictiveState]:
        snap = ctx.snapshot
        now = ctx.now_s
        rate = snap.arrival_rate_per_s
        holt = holt_update(state.holt, now, rate, settings.alpha, settings.beta)
        history = state.history
        if season_s is not None:  # keep one season plus the lead: what a forecast can look back to
            keep_from = now - season_s - lead_s - 2 * snap.interval_s
            history = tuple(s for s in (*history, (now, snap.interval_s, rate)) if s[0] >= keep_from)
        state = PredictiveState(holt, history)

        service_s = snap.mean_service_time_s or ctx.nominal_service_time_s
        predicted = capacity_for(
            forecast_rate(state, now, cfg.cluster.warmup_s, snap.interval_s, season_s, settings.extra_lead_s),
            service_s,
            settings.target_utilisation,
        )
        busy_slots = snap.busy_slot_s / snap.interval_s
        reactive = math.ceil(busy_slots / settings.target_utilisation + snap.backlog * service_s / snap.interval_s)
        # the forecast only raises capacity; with it below the observed need, the reactive one rules
        return float(max(predicted, reactive)), state

    return Policy(
        name,
        decide,
        PredictiveState(),
        params={**settings.model_dump(), "season_s_resolved": season_s, "lead_s": lead_s},
    )
