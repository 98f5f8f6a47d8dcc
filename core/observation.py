"""Observation features: the one function that turns cluster snapshots into what a policy sees.

The simulator's environment and the live environment both call :func:`observation_features`, so a
policy trained offline sees the same numbers online.

See :data:`OBSERVATION_TABLE` (also in ``ConcurrencyScalingEnv``'s docstring).

Values are clipped to their bounds, so a broken metric cannot push the policy off its input range.
"""

from __future__ import annotations

import math

import numpy as np

from core.config import SLIConfig
from core.domain import ClusterSnapshot

# The Gymnasium id of the scaling environment. Its version is the observation's (and the action's):
# a model records the id it was trained on, and one recorded with another id is refused. Changing
# the features or their definitions means a new version here and a line in the Version History of
# ``envs.scaling_env.ConcurrencyScalingEnv`` (tests/test_env.py pins the pair).
ENV_ID = "ConcurrencyScaling-v1"

OBSERVATION_TABLE = """\
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
| 14    | demand            | arrival rate x mean service time / maximum concurrency            | [0, 10]   |
"""

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
    "demand",
)
N_FEATURES = len(FEATURE_NAMES)
FEATURE_LOW = np.array([0.0] * 9 + [0.0, 0.0, 0.0, -10.0, -10.0, 0.0], dtype=np.float32)
FEATURE_HIGH = np.array([10.0] * 9 + [1.0, 1.0, 1.0, 10.0, 10.0, 10.0], dtype=np.float32)


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
    # written out long-hand: this runs on every simulated step, tens of thousands of times a second
    started = snap.attempts_started
    service_s = snap.busy_slot_s / started if started else nominal_service_time_s
    bmax = slis.backlog_max
    serving = snap.serving_concurrency if snap.serving_concurrency > 0 else 1
    demand = snap.arrivals / snap.interval_s * service_s  # slots the arrivals keep busy (Little's law)
    b0, b1, b2 = snap.backlog_by_priority
    backlog = b0 + b1 + b2 + snap.retrying
    if prev is None:
        prev_backlog, prev_demand = backlog, demand
    else:
        pb = prev.backlog_by_priority
        prev_backlog = pb[0] + pb[1] + pb[2] + prev.retrying
        prev_demand = prev.arrivals / prev.interval_s * service_s
    t_slo = slis.mean_processing_time_s_max
    fail_budget = 1.0 - slis.success_rate_min
    target = snap.target_concurrency
    raw = (
        math.log1p(b0 / bmax),
        math.log1p(b1 / bmax),
        math.log1p(b2 / bmax),
        math.log1p(snap.retrying / bmax),
        demand / serving,
        (1.0 - snap.success_rate) / fail_budget if fail_budget > 0 else 0.0,
        snap.mean_processing_time_s / t_slo,
        snap.p90_processing_time_s / t_slo,
        snap.p99_processing_time_s / t_slo,
        target / max_concurrency,
        snap.warming_concurrency / target if target > 0 else 0.0,
        snap.utilisation,
        (backlog - prev_backlog) / bmax,
        (demand - prev_demand) / serving,
        demand / max_concurrency,
    )
    obs = np.array(raw, dtype=np.float32)
    # fmax/fmin also turn a NaN (a broken metric) into the lower bound
    np.fmax(obs, FEATURE_LOW, out=obs)
    return np.fmin(obs, FEATURE_HIGH, out=obs)
