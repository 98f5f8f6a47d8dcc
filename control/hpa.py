"""Kubernetes' Horizontal Pod Autoscaler (autoscaling/v2) decision algorithm, as pure functions.

This is the ``hpa`` baseline the RL policy is compared against, so it has to be the real thing and
not "something HPA-like": a baseline that is weaker than what a cluster operator actually runs would
flatter the learned policy. It is a reimplementation (no code copied) of
``pkg/controller/podautoscaler`` in kubernetes/kubernetes:

==================================  =====================================================
here                                Kubernetes
==================================  =====================================================
:func:`replica_calculation`         ``ReplicaCalculator.GetResourceReplicas`` (utilization),
                                    ``GetExternalPerPodMetricReplicas`` /
                                    ``GetObjectPerPodMetricReplicas`` (backlog: AverageValue)
:func:`stabilize_recommendation`    ``stabilizeRecommendationWithBehaviors``
:func:`replicas_change_in_period`   ``getReplicasChangePerPeriod``
:func:`scale_up_limit`              ``calculateScaleUpLimitWithScalingRules``
:func:`scale_down_limit`            ``calculateScaleDownLimitWithBehaviors``
:func:`apply_behavior_rate`         ``convertDesiredReplicasWithBehaviorRate``
:func:`hpa_decide`                  ``reconcileAutoscaler``,
                                    ``normalizeDesiredReplicasWithBehaviors``,
                                    ``recordInitialRecommendation``, ``storeScaleEvent``
==================================  =====================================================

One sync (:func:`hpa_decide`; Kubernetes runs one every 15 s) does, in this order:

1. On the very first sync, seed the recommendation history with the current replica count
   (``recordInitialRecommendation``). This is why a freshly created HPA does not scale down for
   the first 300 s even when the load is zero.
2. ``current == 0``: scaling is disabled (Kubernetes treats a target scaled to zero by hand as
   "autoscaling off" whenever minReplicas != 0, and minReplicas >= 1 here): return 0, record
   nothing.
3. ``current > max`` -> ``max``; ``current < min`` -> ``min``. These bypass the metric, the
   stabilization window and the rate limits, exactly as in Kubernetes (the scale event is still
   recorded, so it counts against the rate limits of the following syncs).
4. A non-finite metric keeps the current replicas and records nothing: Kubernetes would fail the
   metric fetch, return an error from the sync and leave the target alone.
5. Replica calculation (tolerance band, then ``ceil``) -> the *prenormalized* recommendation.
6. Stabilization: clamp ``current`` between the lowest recommendation of the scale-up window and
   the highest of the scale-down window (both windows include this sync's recommendation).
7. Rate limits (scaling policies, selectPolicy ``Max``) and the min/max clamp.
8. Record the prenormalized recommendation and, if the result differs from ``current``, the scale
   event ``(now_s, desired - current)``.

Simplifications (what is *not* modelled, and why it does not matter here):

- Pod readiness, missing metrics, CPU initialisation period and pending/failed/deleted pods
  (``groupPods`` and the rebalancing that follows): every replica is ready and reports a metric.
- Kubernetes computes CPU utilization as a whole percent (``int32(total * 100 / requests)``) and
  compares it with an integer target percent; metric quantities are milli-units. Here utilization
  and backlog are exact floats, so results can differ from Kubernetes only when a value sits within
  a rounding step of a tolerance or ``ceil`` boundary.
- One metric per HPA (Kubernetes takes the max over several metrics).
- Only the default policy shapes are configurable: scale-up = ``Pods`` + ``Percent`` policies
  sharing one period, scale-down = one ``Percent`` policy, both with selectPolicy ``Max``;
  ``Min``/``Disabled`` select policies and a scale-down ``Pods`` policy are not offered.
- One symmetric tolerance (the cluster-wide ``--horizontal-pod-autoscaler-tolerance``), not the
  per-direction ``behavior.scale{Up,Down}.tolerance`` of the HPAConfigurableTolerance feature.
- History pruning: Kubernetes keeps every recommendation/event slot and recycles outdated ones
  (``markScaleEventsOutdated``); its recycling is per direction, so an old scale-up event can be
  overwritten while a longer scale-down period would still have counted it. Here an entry is
  dropped only when it is older than every window/period that could count it, so the limits are
  computed from the complete relevant history (identical to Kubernetes with the default behavior,
  where both periods are 15 s).
- Kubernetes' validation caps windows at 3600 s and periods at 1800 s; those caps are not enforced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from core._checks import check_int

METRICS = ("utilization", "backlog")

Recommendation = tuple[float, int]  # (time_s, recommended replicas before normalisation)
ScaleEvent = tuple[float, int]  # (time_s, replica change: + for scale-up, - for scale-down)


def _check_finite(value: float, name: str, *, positive: bool) -> None:
    """Reject NaN/inf and negatives (or zero, when ``positive``). ``not x > 0`` rather than
    ``x <= 0`` so NaN is rejected too."""
    ok = value > 0 if positive else value >= 0
    if not (ok and math.isfinite(value)):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")


@dataclass(frozen=True)
class HPAConfig:
    """One HPA: its metric target, replica bounds and ``behavior`` (defaults = Kubernetes').

    ``utilization``: the mean busy fraction of the replicas' slots, target in (0, 1] (a resource
    metric with a Utilization target, like CPU). ``backlog``: an AverageValue metric (external or
    object metric with a per-pod target): ``target`` is the backlog per replica to aim for and the
    metric value passed to :func:`hpa_decide` is the *total* backlog.

    Validated on construction so a bad config fails at load time; messages are prefixed
    ``HPAConfig.<field>`` so the config error names the field.
    """

    metric: Literal["utilization", "backlog"]
    target: float
    min_replicas: int = 1
    max_replicas: int = 10
    tolerance: float = 0.1
    scale_up_stabilization_s: float = 0.0
    scale_down_stabilization_s: float = 300.0
    scale_up_pods: int = 4
    scale_up_percent: float = 100.0
    scale_up_period_s: float = 15.0
    scale_down_percent: float = 100.0
    scale_down_period_s: float = 15.0

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"HPAConfig.metric must be 'utilization' or 'backlog', got {self.metric!r}")
        _check_finite(self.target, "HPAConfig.target", positive=True)
        if self.metric == "utilization" and self.target > 1.0:
            raise ValueError(
                f"HPAConfig.target must be a fraction in (0, 1] for the utilization metric, "
                f"got {self.target} (a percentage?)"
            )
        check_int(self.min_replicas, "HPAConfig.min_replicas", 1)
        check_int(self.max_replicas, "HPAConfig.max_replicas", 1)
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"HPAConfig.min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})"
            )
        _check_finite(self.tolerance, "HPAConfig.tolerance", positive=False)
        _check_finite(self.scale_up_stabilization_s, "HPAConfig.scale_up_stabilization_s", positive=False)
        _check_finite(self.scale_down_stabilization_s, "HPAConfig.scale_down_stabilization_s", positive=False)
        # Kubernetes' validation: a scaling policy's value must be > 0 (percentages may exceed 100).
        check_int(self.scale_up_pods, "HPAConfig.scale_up_pods", 1)
        _check_finite(self.scale_up_percent, "HPAConfig.scale_up_percent", positive=True)
        _check_finite(self.scale_up_period_s, "HPAConfig.scale_up_period_s", positive=True)
        _check_finite(self.scale_down_percent, "HPAConfig.scale_down_percent", positive=True)
        _check_finite(self.scale_down_period_s, "HPAConfig.scale_down_period_s", positive=True)


@dataclass(frozen=True)
class HPAState:
    """What the HPA controller remembers between syncs, as immutable history.

    ``recommendations``: ``(time_s, prenormalized recommendation)`` per sync, for the
    stabilization windows. ``scale_events``: ``(time_s, replica change)`` per applied scale, for
    the rate-limit periods. :func:`hpa_decide` prunes entries that no window or period can count
    any more, so the state stays small (a handful of entries with the defaults).
    """

    recommendations: tuple[Recommendation, ...] = ()
    scale_events: tuple[ScaleEvent, ...] = ()


# -- replica calculator ---------------------------------------------------------------------------
def replica_calculation(
    metric: str, current_replicas: int, metric_value: float, target: float, tolerance: float = 0.1
) -> int:
    """Kubernetes' replica calculator: the replicas that would bring the metric to its target.

    ``utilization``: ``metric_value`` is the mean utilization (a fraction; > 1 is allowed).
    ``usage_ratio = value / target``; inside the tolerance band keep ``current_replicas``, else
    ``ceil(usage_ratio * current_replicas)`` (``GetResourceReplicas`` with every pod ready).

    ``backlog``: ``metric_value`` is the TOTAL metric across replicas and ``target`` the per-replica
    average to aim for. ``usage_ratio = total / (target * current)``; inside the tolerance band keep
    ``current_replicas``, else ``ceil(total / target)`` (``GetExternalPerPodMetricReplicas``).

    The tolerance band (``|1 - usage_ratio| <= tolerance``) is what stops the HPA flapping on
    metric noise. Edge cases, following Kubernetes' "do nothing when in doubt":

    - ``current_replicas == 0`` returns 0. Kubernetes never computes replicas for a target at zero
      (the controller treats it as autoscaling disabled, and the resource calculator errors out
      with no pods), so there is nothing to scale from.
    - NaN/inf ``metric_value`` returns ``current_replicas``: Kubernetes would fail the metric
      fetch and not scale.

    A negative metric value, a non-positive target or a negative tolerance is a caller bug and
    raises ``ValueError``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be 'utilization' or 'backlog', got {metric!r}")
    current = check_int(current_replicas, "current_replicas", 0)
    _check_finite(target, "target", positive=True)
    _check_finite(tolerance, "tolerance", positive=False)
    value = float(metric_value)
    if not math.isfinite(value):
        return current
    if value < 0:
        raise ValueError(f"metric_value must be >= 0, got {value}")
    if current == 0:
        return 0
    if metric == "utilization":
        usage_ratio = value / target
        if abs(1.0 - usage_ratio) <= tolerance:
            return current
        return math.ceil(usage_ratio * current)
    usage_ratio = value / (target * current)
    if abs(1.0 - usage_ratio) <= tolerance:
        return current
    return math.ceil(value / target)


# -- stabilization --------------------------------------------------------------------------------
def stabilize_recommendation(
    now_s: float,
    current_replicas: int,
    desired_replicas: int,
    recommendations: Sequence[Recommendation],
    scale_up_window_s: float,
    scale_down_window_s: float,
) -> int:
    """``current_replicas`` moved no further than every recommendation in the windows agrees.

    Scale up only to the *lowest* recommendation of the last ``scale_up_window_s`` and scale down
    only to the *highest* of the last ``scale_down_window_s`` (both include ``desired_replicas``,
    this sync's recommendation), so one noisy sample cannot shrink the deployment. With the
    defaults (0 s / 300 s) scale-ups are immediate and a scale-down waits until the load has been
    low for five minutes. A recommendation counts if it is strictly newer than ``now - window``
    (Go's ``timestamp.After(cutoff)``).
    """
    up_cutoff_s = now_s - scale_up_window_s
    down_cutoff_s = now_s - scale_down_window_s
    up_recommendation = min([desired_replicas] + [rec for t_s, rec in recommendations if t_s > up_cutoff_s])
    down_recommendation = max([desired_replicas] + [rec for t_s, rec in recommendations if t_s > down_cutoff_s])
    return min(max(current_replicas, up_recommendation), down_recommendation)


# -- rate limits ----------------------------------------------------------------------------------
def replicas_change_in_period(now_s: float, period_s: float, scale_events: Sequence[ScaleEvent]) -> int:
    """Net replicas added (+) or removed (-) by scale events strictly newer than
    ``now - period``: what the replica count was at the start of the period is
    ``current - change``, and policies are measured from there, not from ``current``."""
    cutoff_s = now_s - period_s
    return sum(change for t_s, change in scale_events if t_s > cutoff_s)


def scale_up_limit(now_s: float, current_replicas: int, cfg: HPAConfig, scale_events: Sequence[ScaleEvent]) -> int:
    """The most replicas the scale-up policies allow now: selectPolicy ``Max`` of
    ``Pods`` (start + pods) and ``Percent`` (``ceil(start * (1 + percent/100))``, rounded up so a
    small deployment can always grow), where start is the count at the start of the period.

    With the defaults this is max(+4, x2) per 15 s. It can be below ``current_replicas`` after a
    burst of scale-ups; the caller then holds at ``current`` rather than scaling down.
    """
    start = current_replicas - replicas_change_in_period(now_s, cfg.scale_up_period_s, scale_events)
    by_pods = start + cfg.scale_up_pods
    by_percent = math.ceil(start * (1 + cfg.scale_up_percent / 100))
    return max(by_pods, by_percent)


def scale_down_limit(now_s: float, current_replicas: int, cfg: HPAConfig, scale_events: Sequence[ScaleEvent]) -> int:
    """The fewest replicas the scale-down ``Percent`` policy allows now:
    ``start * (1 - percent/100)`` truncated toward zero (Go's ``int32()``), where start is the
    count at the start of the period. With the default 100% per 15 s this is 0: the scale-down
    pace is set by the stabilization window, not by the rate limit."""
    start = current_replicas - replicas_change_in_period(now_s, cfg.scale_down_period_s, scale_events)
    return int(start * (1 - cfg.scale_down_percent / 100))


def apply_behavior_rate(
    now_s: float, current_replicas: int, desired_replicas: int, cfg: HPAConfig, scale_events: Sequence[ScaleEvent]
) -> int:
    """``desired_replicas`` bounded by the rate limits and by [min_replicas, max_replicas].

    A limit that points the wrong way (a scale-up limit below ``current`` after recent scale-ups,
    or a scale-down limit above it after recent scale-downs) holds at ``current``: the HPA waits
    for the old events to leave the period rather than reversing direction. As in Kubernetes, the
    min/max clamp is applied in the direction of travel, so ``desired == current`` is returned as
    is (:func:`hpa_decide` only gets here with ``min <= current <= max``).
    """
    if desired_replicas > current_replicas:
        limit = max(scale_up_limit(now_s, current_replicas, cfg, scale_events), current_replicas)
        return min(desired_replicas, cfg.max_replicas, limit)
    if desired_replicas < current_replicas:
        limit = min(scale_down_limit(now_s, current_replicas, cfg, scale_events), current_replicas)
        return max(desired_replicas, cfg.min_replicas, limit)
    return desired_replicas


# -- one sync -------------------------------------------------------------------------------------
def _prune(
    now_s: float, cfg: HPAConfig, recommendations: tuple[Recommendation, ...], scale_events: tuple[ScaleEvent, ...]
) -> HPAState:
    """Drop history that no window or period can count again (time only moves forward).

    The newest recommendation is always kept: an empty history means "first sync" (seed it with
    the current replicas), and a long pause between syncs must not be mistaken for that.
    """
    window_s = max(cfg.scale_up_stabilization_s, cfg.scale_down_stabilization_s)
    kept_recs = tuple(r for r in recommendations if r[0] > now_s - window_s)
    if not kept_recs and recommendations:
        kept_recs = (max(recommendations, key=lambda r: r[0]),)
    period_s = max(cfg.scale_up_period_s, cfg.scale_down_period_s)
    kept_events = tuple(e for e in scale_events if e[0] > now_s - period_s)
    return HPAState(kept_recs, kept_events)


def _check_now(now_s: float, state: HPAState) -> float:
    """A finite time not earlier than anything already recorded: a clock running backwards would
    make old history count again."""
    now = float(now_s)
    if not math.isfinite(now):
        raise ValueError(f"now_s must be finite, got {now_s}")
    latest_s = max((t_s for t_s, _ in (*state.recommendations, *state.scale_events)), default=-math.inf)
    if now < latest_s:
        raise ValueError(f"now_s ({now}) is earlier than the latest recorded time ({latest_s})")
    return now


def hpa_decide(
    now_s: float, current_replicas: int, metric_value: float, cfg: HPAConfig, state: HPAState
) -> tuple[int, HPAState]:
    """One HPA sync (Kubernetes runs this every 15 s): replica calculation, stabilization, rate
    limits, min/max clamp. Returns ``(desired replicas, new state)``.

    Pure: no clocks, no I/O, no mutation. The caller applies the returned replicas and passes the
    new state to the next sync. The new state records this sync's prenormalized recommendation
    and, if desired != current, the scale event at ``now_s``. See the module docstring for the
    order of the steps and the edge cases (``current_replicas == 0`` returns 0: scaling disabled;
    a NaN/inf metric keeps ``current_replicas``).
    """
    now = _check_now(now_s, state)
    current = check_int(current_replicas, "current_replicas", 0)
    value = float(metric_value)
    if math.isfinite(value) and value < 0:  # non-finite values are handled below: no scaling
        raise ValueError(f"metric_value must be >= 0, got {value}")

    # recordInitialRecommendation: the first sync remembers the replicas it found.
    recommendations = tuple(state.recommendations) or ((now, current),)
    scale_events = tuple(state.scale_events)

    if current == 0:
        return 0, _prune(now, cfg, recommendations, scale_events)
    if current > cfg.max_replicas:
        desired = cfg.max_replicas
    elif current < cfg.min_replicas:
        desired = cfg.min_replicas
    elif not math.isfinite(value):
        return current, _prune(now, cfg, recommendations, scale_events)
    else:
        proposal = replica_calculation(cfg.metric, current, value, cfg.target, cfg.tolerance)
        stabilized = stabilize_recommendation(
            now, current, proposal, recommendations, cfg.scale_up_stabilization_s, cfg.scale_down_stabilization_s
        )
        desired = apply_behavior_rate(now, current, stabilized, cfg, scale_events)
        recommendations = (*recommendations, (now, proposal))

    if desired != current:
        scale_events = (*scale_events, (now, desired - current))
    return desired, _prune(now, cfg, recommendations, scale_events)
