"""The predictive policy: Holt's method on a ramp, the forecast leading a ramp by the warm-up,
scale-in from observed load only, seasonal-naive on a seasonal series, settings validation, a
bounded state and a rollout within the bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from control.policies import PolicyContext
from control.predictive import (
    HoltState,
    PredictiveSettings,
    PredictiveState,
    forecast_rate,
    holt_forecast,
    holt_update,
    predictive_policy,
)
from envs.rollout import run_policy
from envs.scaling_env import ConcurrencyScalingEnv
from models.registry import make_policy
from tests.conftest import make_snapshot, small_config

INTERVAL_S = 15.0


def ctx(t, rate, current=100, cfg=None, backlog=0):
    """An interval ending at ``t`` with ``rate`` arrivals/s of 1 s work, all served."""
    arrivals = round(rate * INTERVAL_S)
    snap = make_snapshot(
        time_s=t, arrivals=arrivals, attempts_started=arrivals, busy_slot_s=float(arrivals),
        backlog_by_priority=(0, backlog, 0),
    )  # fmt: skip
    return PolicyContext(t, current, snap, None, np.zeros(15, np.float32), cfg or small_config(), 1.0)


def feed(policy, rates, cfg=None):
    state, out = policy.initial_state, []
    for k, rate in enumerate(rates, start=1):
        proposal, state = policy.decide(ctx(k * INTERVAL_S, rate, cfg=cfg), state)
        out.append(proposal)
    return out, state


def test_holt_follows_a_ramp_without_lag():
    """Holt's linear method has no steady-state error on a linear trend: after a few steps the
    forecast h seconds ahead is the ramp's value there."""
    state = HoltState()
    for k in range(1, 41):
        t = k * INTERVAL_S
        state = holt_update(state, t, 2.0 + 0.1 * t, alpha=0.5, beta=0.3)
    t = 40 * INTERVAL_S
    assert state.trend_per_s == pytest.approx(0.1, rel=1e-3)
    assert holt_forecast(state, 25.0) == pytest.approx(2.0 + 0.1 * (t + 25.0), rel=1e-3)
    with pytest.raises(ValueError, match="after the last observation"):
        holt_update(state, t, 1.0, 0.5, 0.3)


def test_forecast_leads_a_ramp_by_the_warm_up():
    """Arrivals ramp at 0.1 tasks/s per second, 1 s of work each, target 70%: at t the reactive
    capacity is ceil(rate(t) / 0.7); the forecast asks for ceil(rate(t + warm-up 10 s + one
    interval 15 s) / 0.7), the capacity that must be serving when the slots asked for now are warm
    and until the next decision."""
    cfg = small_config()
    assert cfg.cluster.warmup_s == 10.0 and cfg.control.interval_s == INTERVAL_S
    ramp = [10.0 + 0.1 * k * INTERVAL_S for k in range(1, 41)]
    out, _ = feed(make_policy("predictive-default", cfg), ramp, cfg)
    t = 40 * INTERVAL_S
    reactive = math.ceil(ramp[-1] / 0.7)
    ahead = math.ceil((10.0 + 0.1 * (t + 25.0)) / 0.7)
    assert reactive == 100 and ahead == 104
    assert abs(out[-1] - ahead) <= 1 and out[-1] > reactive


def test_extra_lead_asks_for_the_ramp_further_ahead():
    """``extra_lead_s`` 30 widens the horizon to [t + 10, t + 55]: on the same ramp the forecast asks
    for ceil(rate(t + 55) / 0.7); seasonal-naive reads the season before every interval of it."""
    cfg = small_config()
    ramp = [10.0 + 0.1 * k * INTERVAL_S for k in range(1, 41)]
    out, state = feed(predictive_policy(cfg, PredictiveSettings(extra_lead_s=30.0)), ramp, cfg)
    t = 40 * INTERVAL_S
    ahead = math.ceil((10.0 + 0.1 * (t + 55.0)) / 0.7)
    assert ahead == 108 and abs(out[-1] - ahead) <= 1
    history = [(k * INTERVAL_S, INTERVAL_S, float(k)) for k in range(1, 41)]  # rate k in interval k
    seasonal = PredictiveState(HoltState(), tuple(history))
    # season 300 s: t + 10 .. t + 55 a season back is 310 .. 355, intervals 21 .. 24
    assert forecast_rate(seasonal, t, 10.0, INTERVAL_S, 300.0, extra_lead_s=30.0) == 24.0
    assert forecast_rate(seasonal, t, 10.0, INTERVAL_S, 300.0) == 22.0  # 310 .. 325: intervals 21, 22


def test_scale_in_follows_observed_load():
    """On a falling ramp the forecast is below the observed need, and the proposal is exactly the
    reactive capacity: the forecast never takes capacity away."""
    down = [90.0 - 0.1 * k * INTERVAL_S for k in range(1, 41)]
    out, _ = feed(make_policy("predictive-default", small_config()), down)
    assert out[-1] == math.ceil(down[-1] / 0.7)
    # a backlog adds the slots that drain it within one interval: 150 tasks x 1 s / 15 s = 10
    p = make_policy("predictive-default", small_config())
    proposal, _ = p.decide(ctx(15.0, 30.0, backlog=150), p.initial_state)
    assert proposal == math.ceil(30.0 / 0.7 + 10)


def seasonal_rate(t, period_s):
    return 100.0 + 50.0 * math.sin(2 * math.pi * t / period_s)


def test_a_seasonal_series_is_forecast_within_tolerance():
    """A daily sine (period 600 s here: time compression 144) seen for one and a half seasons:
    seasonal-naive forecasts the peak of [t + 10, t + 25] within 3 tasks/s (of 100 +- 50) at every
    step after the first season, which Holt alone does not manage."""
    cfg = small_config(simulation={"time_compression": 144.0})
    p = make_policy("predictive-default", cfg)
    assert p.params["season_s_resolved"] == 600.0
    holt_only = predictive_policy(cfg, PredictiveSettings(seasonal=False))
    state, holt_state = p.initial_state, holt_only.initial_state
    errors, holt_errors = [], []
    for k in range(1, 61):
        t = k * INTERVAL_S
        _, state = p.decide(ctx(t, seasonal_rate(t, 600.0), cfg=cfg), state)
        _, holt_state = holt_only.decide(ctx(t, seasonal_rate(t, 600.0), cfg=cfg), holt_state)
        if t > 600.0:
            truth = max(seasonal_rate(t + 10.0, 600.0), seasonal_rate(t + 25.0, 600.0))
            errors.append(abs(forecast_rate(state, t, 10.0, INTERVAL_S, 600.0) - truth))
            holt_errors.append(abs(forecast_rate(holt_state, t, 10.0, INTERVAL_S, None) - truth))
    assert max(errors) < 3.0
    assert max(holt_errors) > 5.0
    assert len(state.history) <= 600.0 / INTERVAL_S + 4  # one season plus the lead: a bounded state


@pytest.mark.parametrize(
    "field, value",
    [
        ("alpha", 0.0),
        ("beta", 1.5),
        ("target_utilisation", 0.0),
        ("season_s", -1.0),
        ("alpha", float("nan")),
        ("lead_s", 5.0),
    ],
)
def test_bad_settings_fail_naming_the_field(field, value):
    with pytest.raises(ValidationError, match=field):
        PredictiveSettings(**{field: value})


@pytest.mark.parametrize("scenario", ["step", "worldcup"])
def test_rollout_stays_within_bounds(scenario):
    cfg = small_config(
        cluster={"min_concurrency": 8, "max_concurrency": 200},
        simulation={"scenario": scenario, "duration_s": 900.0, "peak_rate_per_s": 120.0},
    )
    res = run_policy(ConcurrencyScalingEnv(cfg), make_policy("predictive", cfg), 0)
    assert all(8 <= r.applied <= 200 for r in res.intervals)
    assert res.summary.scaling_changes > 0 and res.summary.sli_attainment > 0.5
