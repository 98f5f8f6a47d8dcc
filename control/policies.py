"""Baseline controllers. Each is a pure function ``decide(ctx, state) -> (proposal, state)``.

A proposal is a target concurrency; the concurrency guard bounds it before it acts. The same
interface serves the researcher's own policy (``module:callable`` returning a :class:`Policy`, or a
bare ``decide`` function).

The five rules that ``autotune calibrate`` tunes alike (the same search, the same budget, the same
training scenarios) come by two names: the plain name runs the calibrated settings
(``models/calibration.yaml``, when it was made for the same cluster bounds; else the defaults), and
``<name>-default`` the anchor's defaults (below). ``autotune policies`` prints, after this list, the
knobs searched and the settings chosen.

- ``static`` / ``static-default``: hold one concurrency: the calibrated level / the task type's
  configured concurrency;
- ``hpa`` / ``hpa-default``: Kubernetes' HPA (:mod:`control.hpa`), replicas of
  ``cluster.slots_per_replica``; defaults: utilisation, target 70%, 300 s scale-down
  stabilisation, scale-up max(+100%, +4 pods) per 15 s;
- ``kpa`` / ``kpa-default``: Knative's pod autoscaler (:mod:`control.kpa`); defaults: stable 60 s /
  panic 6 s windows, panic at 200%, target 70% of a replica's slots, scale rates x1000 up / /2 down;
- ``keda`` / ``keda-default``: KEDA's RabbitMQ queue-length scaler feeding the HPA
  (:mod:`control.keda`); defaults: 20 queued or running tasks per replica, polled every 30 s, the
  HPA's default behaviour;
- ``predictive`` / ``predictive-default``: forecast-driven scale-out with reactive scale-in, after
  AWS predictive scaling (:mod:`control.predictive`); defaults: Holt's linear method (alpha 0.5,
  beta 0.3), seasonal-naive after a day of history, led by the warm-up plus one interval, target
  70% utilisation;

and the rest, uncalibrated:

- ``hpa-backlog``: HPA on average backlog per replica (target 50);
- ``hpa-reference``: the reference deployment: backlog per replica, min 2, max 10 replicas, target 50;
- ``threshold``: the reference system's rule: x1.2 when an SLI breaks, x0.8 when idle, else hold;
- ``random``: a uniformly random scaling factor each interval (seeded);
- ``oracle``: clairvoyant, sizes capacity for the realised arrivals ahead; a yardstick for cost;

Learned policies (``ppo``, a model by path) and the names users pick policies by are one layer up,
in :mod:`models.registry`, where model files are read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from control.guard import scale_concurrency
from control.hpa import HPAConfig, HPAState, hpa_decide
from core.config import AutotuneConfig
from core.domain import ClusterSnapshot, sli_status


@dataclass(frozen=True)
class Lookahead:
    """Realised arrivals ahead of now, for clairvoyant policies only."""

    arrivals_per_tick: np.ndarray  # total arrivals in each tick from now on
    tick_s: float


@dataclass(frozen=True)
class PolicyContext:
    """Everything a policy may look at when it decides."""

    now_s: float
    current: int  # target concurrency in force
    snapshot: ClusterSnapshot  # the interval just ended
    previous: ClusterSnapshot | None
    observation: np.ndarray  # the feature vector (core.observation)
    config: AutotuneConfig
    nominal_service_time_s: float
    lookahead: Lookahead | None = None


DecideFn = Callable[[PolicyContext, Any], tuple[float, Any]]


@dataclass(frozen=True)
class Policy:
    name: str
    decide: DecideFn
    initial_state: Any = None
    needs_lookahead: bool = False
    params: dict[str, Any] = field(default_factory=dict)


# -- static -----------------------------------------------------------------------------------
def static_policy(level: int, name: str = "static") -> Policy:
    if level < 1:
        raise ValueError(f"static level must be >= 1, got {level}")
    return Policy(name, lambda ctx, state: (float(level), state), params={"level": level})


# -- HPA --------------------------------------------------------------------------------------
def hpa_policy(cfg: AutotuneConfig, hpa: HPAConfig, name: str = "hpa") -> Policy:
    """Kubernetes' HPA driving replicas of ``slots_per_replica`` slots each."""
    slots = cfg.cluster.slots_per_replica

    def decide(ctx: PolicyContext, state: HPAState) -> tuple[float, HPAState]:
        replicas = max(1, math.ceil(ctx.current / slots))
        snap = ctx.snapshot
        metric = snap.utilisation if hpa.metric == "utilization" else float(snap.backlog)
        desired, state = hpa_decide(ctx.now_s, replicas, metric, hpa, state)
        return float(desired * slots), state

    return Policy(name, decide, HPAState(), params=asdict(hpa))


def default_hpa_config(cfg: AutotuneConfig, metric: str = "utilization", target: float | None = None) -> HPAConfig:
    slots = cfg.cluster.slots_per_replica
    return HPAConfig(
        metric=metric,  # type: ignore[arg-type]
        target=target if target is not None else (0.7 if metric == "utilization" else 50.0),
        # ceil for both: the guard clamps the slots to the cluster's bounds, and min <= max holds
        min_replicas=max(1, math.ceil(cfg.cluster.min_concurrency / slots)),
        max_replicas=max(1, math.ceil(cfg.cluster.max_concurrency / slots)),
    )


REFERENCE_HPA = HPAConfig(metric="backlog", target=50.0, min_replicas=2, max_replicas=10)


# -- threshold rule ---------------------------------------------------------------------------
def threshold_policy(
    scale_up: float = 1.2, scale_down: float = 0.8, idle_backlog_share: float = 0.2, idle_utilisation: float = 0.5
) -> Policy:
    """The reference system's rule: scale up while any SLI is broken, down when clearly idle."""

    def decide(ctx: PolicyContext, state: Any) -> tuple[float, Any]:
        snap = ctx.snapshot
        slis = ctx.config.slis
        status = sli_status(snap, slis)
        if not status.all_ok:
            return float(scale_concurrency(ctx.current, scale_up)), state
        if snap.backlog <= idle_backlog_share * slis.backlog_max and snap.utilisation < idle_utilisation:
            return float(scale_concurrency(ctx.current, scale_down)), state
        return float(ctx.current), state

    return Policy("threshold", decide, params={"scale_up": scale_up, "scale_down": scale_down})


# -- random -----------------------------------------------------------------------------------
def random_policy(factors: tuple[float, ...], seed: int = 0) -> Policy:
    """A random factor per interval; the state is the generator (seeded, so runs repeat)."""

    def decide(ctx: PolicyContext, state: np.random.Generator) -> tuple[float, np.random.Generator]:
        factor = factors[int(state.integers(len(factors)))]
        return float(scale_concurrency(ctx.current, factor)), state

    return Policy("random", decide, np.random.default_rng(seed), params={"seed": seed})


# -- clairvoyant oracle -----------------------------------------------------------------------
def oracle_policy(target_utilisation: float = 0.85, smoothing_s: float = 5.0, extra_intervals: float = 2.0) -> Policy:
    """Size capacity for the busiest stretch of the realised arrivals ahead.

    It looks ``warmup + extra_intervals x interval`` ahead (long enough to ramp through the guard's
    step limits), takes the peak of the arrival rate smoothed over ``smoothing_s``, and asks for the
    slots that keep utilisation at ``target_utilisation`` plus those that drain the current backlog
    within one interval. It knows the future, not the optimum: a yardstick, not a proven bound.
    """

    def decide(ctx: PolicyContext, state: Any) -> tuple[float, Any]:
        la = ctx.lookahead
        if la is None:
            raise ValueError("the oracle needs the realised arrivals ahead (lookahead)")
        cfg = ctx.config
        horizon_s = cfg.cluster.warmup_s + extra_intervals * cfg.control.interval_s
        n = max(1, int(round(horizon_s / la.tick_s)))
        ahead = la.arrivals_per_tick[:n].astype(np.float64)
        if ahead.size == 0:
            return float(ctx.current), state
        w = max(1, int(round(smoothing_s / la.tick_s)))
        if ahead.size >= w:
            smoothed = np.convolve(ahead, np.ones(w) / w, mode="valid")
        else:
            smoothed = np.array([ahead.mean()])
        peak_rate = float(smoothed.max()) / la.tick_s
        service_s = ctx.nominal_service_time_s
        needed = peak_rate * service_s / target_utilisation
        needed += ctx.snapshot.backlog * service_s / cfg.control.interval_s
        return float(math.ceil(needed)), state

    return Policy(
        "oracle",
        decide,
        needs_lookahead=True,
        params={"target_utilisation": target_utilisation, "smoothing_s": smoothing_s},
    )
