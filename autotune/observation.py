"""Observation features: the one function that turns cluster snapshots into what a policy sees.

The simulator's environment and the live environment both call :func:`observation_features`, so a
policy trained offline sees the same numbers online.

| index | name              | definition                                                        | bounds    |
|-------|-------------------|-------------------------------------------------------------------|-----------|
| 0     | backlog_high      | log1p(queued high-priority tasks / backlog SLO)                   | [0, 10]   |
| 1     | backlog_normal    | log1p(queued normal-priority tasks / backlog SLO)                 | [0, 10]   |
| 2     | backlog_low       | log1p(queued low-priority tasks / backlog SLO)                    | [0, 10]   |
| 3     | retrying          | log1p(tasks waiting out a retry backoff / backlog SLO)            | [0, 10]   |
| 4     | load_ratio        | arrival rate x mean service time / serving slots (demand/supply) | [0, 10]   |
| 5     | failure_ratio     | (1 - success rate) / (1 - success-rate SLO)                       | [0, 10]   |
| 6     | mean_time_ratio   | mean processing time / processing-time SLO                        | [0, 10]   |
| 7     | p90_time_ratio    | P90 processing time / processing-time SLO                         | [0, 10]   |
| 8     | p99_time_ratio    | P99 processing time / processing-time SLO                         | [0, 10]   |
| 9     | concurrency       | target concurrency / maximum concurrency                          | [0, 1]    |
| 10    | warming           | slots still warming up / target concurrency                       | [0, 1]    |
| 11    | utilisation       | busy slot-seconds / serving slot-seconds                          | [0, 1]    |
| 12    | backlog_trend     | (backlog - previous backlog) / backlog SLO                        | [-10, 10] |
| 13    | load_trend        | change of load_ratio's demand over the interval, same scale       | [-10, 10] |

Values are clipped to their bounds, so a broken metric cannot push the policy off its input range.
"""

from __future__ import annotations

import math

import numpy as np

from autotune.config import SLIConfig
from autotune.domain import ClusterSnapshot

FEATURE_NAMES: tuple[str, ...] = (
    "backlog_high",
    "backlog_normal",
    "backlog_low",
    "retrying",
    "load_ratio",
    "failure_ratio",
    "mean_time_ratio",
    "p90_time_ratio",
    "p99_time_ratio",
    "concurrency",
    "warming",
    "utilisation",
    "backlog_trend",
    "load_trend",
)
N_FEATURES = len(FEATURE_NAMES)
FEATURE_LOW = np.array([0.0] * 9 + [0.0, 0.0, 0.0, -10.0, -10.0], dtype=np.float32)
FEATURE_HIGH = np.array([10.0] * 9 + [1.0, 1.0, 1.0, 10.0, 10.0], dtype=np.float32)
_LOW = FEATURE_LOW.tolist()
_HIGH = FEATURE_HIGH.tolist()


def _demand_slots(snap: ClusterSnapshot, service_time_s: float) -> float:
    """Slots the arrivals of the interval would keep busy (Little's law)."""
    return snap.arrival_rate_per_s * service_time_s


def observation_features(
    snap: ClusterSnapshot,
    prev: ClusterSnapshot | None,
    slis: SLIConfig,
    max_concurrency: int,
    nominal_service_time_s: float,
) -> np.ndarray:
    """Feature vector (float32, length :data:`N_FEATURES`) for the interval ending at ``snap``.

    ``nominal_service_time_s`` stands in for the measured service time in an interval where no
    attempt started (the cluster was idle or saturated with nothing new).
    """
    service_s = snap.mean_service_time_s if snap.attempts_started else nominal_service_time_s
    bmax = slis.backlog_max
    serving = max(snap.serving_concurrency, 1)
    demand = _demand_slots(snap, service_s)
    prev_backlog = prev.backlog if prev is not None else snap.backlog
    prev_demand = _demand_slots(prev, service_s) if prev is not None else demand
    t_slo = slis.mean_processing_time_s_max
    b = snap.backlog_by_priority
    raw = (
        math.log1p(b[0] / bmax),
        math.log1p(b[1] / bmax),
        math.log1p(b[2] / bmax),
        math.log1p(snap.retrying / bmax),
        demand / serving,
        (1.0 - snap.success_rate) / (1.0 - slis.success_rate_min) if slis.success_rate_min < 1 else 0.0,
        snap.mean_processing_time_s / t_slo,
        snap.p90_processing_time_s / t_slo,
        snap.p99_processing_time_s / t_slo,
        snap.target_concurrency / max_concurrency,
        snap.warming_concurrency / max(snap.target_concurrency, 1),
        snap.utilisation,
        (snap.backlog - prev_backlog) / bmax,
        (demand - prev_demand) / serving,
    )
    return np.array(
        [min(max(x, lo), hi) if x == x else 0.0 for x, lo, hi in zip(raw, _LOW, _HIGH)],
        dtype=np.float32,
    )
