"""Knative's pod autoscaler (KPA), as pure functions: the ``kpa`` baseline.

A reimplementation (no code copied) of ``pkg/autoscaler/scaling/autoscaler.go`` (``Scale``) in
knative/serving, with its defaults from ``pkg/autoscaler/config/config.go`` (``defaultConfig``) and
the window averaging of ``pkg/autoscaler/aggregation`` (``TimedFloat64Buckets.WindowAverage``).

==================================  =====================================================
here                                Knative
==================================  =====================================================
:func:`window_average`              ``TimedFloat64Buckets.WindowAverage`` (stable, panic)
:func:`kpa_scale`                   ``autoscaler.Scale``
:func:`initial_panic_state`         ``newAutoscaler`` (start in panic above one pod)
:func:`kpa_policy`                  the PodAutoscaler: ``MakeDecider``, ``ResolveMetricTarget``,
                                    min/max scale bounds
==================================  =====================================================

One decision (:func:`kpa_scale`), in Knative's order:

1. ``ready = max(1, ready pods)``; ``max_up = ceil(max_scale_up_rate x ready)``,
   ``max_down = floor(ready / max_scale_down_rate)``.
2. ``stable_pods = ceil(stable / target)``, ``panic_pods = ceil(panic / target)``, both clamped to
   ``[max_down, max_up]``; ``target = container concurrency x target utilisation``.
3. Over the panic threshold when ``panic_pods (unclamped) / ready >= panic_threshold``: enter panic
   mode, or extend it (the panic time moves to now). Leave it only when not over the threshold
   *and* a whole stable window has passed since the panic time.
4. In panic mode the desired count is ``max(stable_pods, panic_pods)``, but never below the most
   pods asked for during this panic: no scale-down in panic.

Mapping to this project (as :func:`control.policies.hpa_policy` maps the HPA): a pod is a replica of
``cluster.slots_per_replica`` slots, so its container concurrency (Knative's hard limit) is that
many slots, and the target per pod is ``slots x 0.7``. The observed concurrency of an interval is
what Knative's queue-proxy counts as in flight: the mean number of running tasks
(``busy_slot_s / interval_s``) plus the tasks waiting (the backlog at the interval's end, as
requests queue in the queue-proxy). Ready pods are the *serving* slots (warming ones are not
ready). Windows are in seconds of ``ctx.now_s``; each interval is one sample spanning the interval.

Simplifications:

- Knative samples every second and decides every 2 s; here one sample and one decision per control
  interval. The panic window (10% of 60 s = 6 s) is shorter than a 15 s interval, so the panic
  value is the newest interval's value: the finest the policy can see.
- Scale-to-zero is off: the result is clamped to the cluster's bounds (``min-scale``/``max-scale``),
  and the activator, burst capacity, ``scale-down-delay`` and ``activation-scale`` are not modelled.
- Concurrency metric only (not RPS); linear window averaging (Knative's default, not the
  ``weightedExponential`` annotation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from control.policies import Policy, PolicyContext
from core.config import AutotuneConfig

TARGET_MIN = 0.01  # autoscaling.TargetMin

Sample = tuple[float, float, float]  # (end time_s, duration_s, observed concurrency)


class KPASettings(BaseModel):
    """Knative's ``config-autoscaler`` keys (defaults = Knative's), with its validation bounds."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    stable_window_s: float = Field(default=60.0, ge=6.0, le=3600.0, description="stable-window")
    panic_window_percentage: float = Field(default=10.0, ge=1.0, le=100.0, description="panic-window-percentage")
    panic_threshold_percentage: float = Field(
        default=200.0, ge=110.0, le=1000.0, description="panic-threshold-percentage"
    )
    target_utilisation: float = Field(
        default=0.7, gt=0.0, le=1.0, description="container-concurrency-target-percentage, as a fraction"
    )
    container_concurrency: int | None = Field(
        default=None, ge=1, description="per-pod concurrency; None: the replica's slots (cluster.slots_per_replica)"
    )
    max_scale_up_rate: float = Field(default=1000.0, gt=1.0, description="max-scale-up-rate")
    max_scale_down_rate: float = Field(default=2.0, gt=1.0, description="max-scale-down-rate")

    @property
    def panic_window_s(self) -> float:
        return self.stable_window_s * self.panic_window_percentage / 100.0

    @property
    def panic_threshold(self) -> float:
        return self.panic_threshold_percentage / 100.0


@dataclass(frozen=True)
class PanicState:
    """Knative's ``panicTime`` (None: not panicking) and ``maxPanicPods``."""

    panic_time_s: float | None = None
    max_panic_pods: int = 0


@dataclass(frozen=True)
class KPAState:
    """The samples inside the stable window and the panic state (None before the first decision)."""

    samples: tuple[Sample, ...] = ()
    panic: PanicState | None = None


def window_average(samples: Sequence[Sample], now_s: float, window_s: float) -> float:
    """Time-weighted mean of the samples over ``(now - window, now]``, over the part of the window
    the history covers (Knative divides by the buckets written since the first, at most the
    window's); 0 when nothing falls in the window."""
    start_s = now_s - window_s
    total = weight = 0.0
    for end_s, duration_s, value in samples:
        overlap = min(end_s, now_s) - max(end_s - duration_s, start_s)
        if overlap > 0:
            total += overlap * value
            weight += overlap
    return total / weight if weight > 0 else 0.0


def initial_panic_state(now_s: float, ready_pods: int) -> PanicState:
    """A new Knative autoscaler starts in panic mode above one ready pod, remembering that count,
    so a restart with no metric history does not scale down at once."""
    if ready_pods > 1:
        return PanicState(now_s, ready_pods)
    return PanicState(None, ready_pods)


def kpa_scale(
    now_s: float,
    ready_pods: int,
    observed_stable: float,
    observed_panic: float,
    target_value: float,
    settings: KPASettings,
    state: PanicState,
) -> tuple[int, PanicState]:
    """One ``Scale``: desired pods from the stable and panic averages. Returns (desired, new state)."""
    ready = max(1.0, float(ready_pods))
    max_up = math.ceil(settings.max_scale_up_rate * ready)
    max_down = math.floor(ready / settings.max_scale_down_rate)  # the revision is reachable

    stable_pods = math.ceil(observed_stable / target_value)
    panic_pods = math.ceil(observed_panic / target_value)
    desired_stable = int(min(max(stable_pods, max_down), max_up))
    desired_panic = int(min(max(panic_pods, max_down), max_up))

    over_threshold = panic_pods / ready >= settings.panic_threshold
    panic_time_s, max_panic_pods = state.panic_time_s, state.max_panic_pods
    if over_threshold:
        panic_time_s = now_s  # begin panicking, or extend the panic
    elif panic_time_s is not None and panic_time_s + settings.stable_window_s < now_s:
        panic_time_s, max_panic_pods = None, 0  # the surge has made its way into the stable metric

    desired = desired_stable
    if panic_time_s is not None:
        desired = max(desired, desired_panic)
        max_panic_pods = max(max_panic_pods, desired)
        desired = max_panic_pods  # no scale-down while panicking
    return desired, PanicState(panic_time_s, max_panic_pods)


def observed_concurrency(ctx: PolicyContext) -> float:
    """Tasks in flight over the interval: mean running plus those waiting at its end."""
    snap = ctx.snapshot
    return snap.busy_slot_s / snap.interval_s + snap.backlog


def kpa_policy(cfg: AutotuneConfig, settings: KPASettings | None = None, name: str = "kpa") -> Policy:
    """Knative's KPA driving pods of ``slots_per_replica`` slots, within the cluster's bounds."""
    settings = settings or KPASettings()
    slots = cfg.cluster.slots_per_replica
    container_concurrency = settings.container_concurrency or slots
    target_value = max(TARGET_MIN, container_concurrency * settings.target_utilisation)
    min_pods = max(1, math.ceil(cfg.cluster.min_concurrency / slots))
    max_pods = max(1, math.ceil(cfg.cluster.max_concurrency / slots))

    def decide(ctx: PolicyContext, state: KPAState) -> tuple[float, KPAState]:
        now = ctx.now_s
        sample = (now, ctx.snapshot.interval_s, observed_concurrency(ctx))
        samples = tuple(s for s in (*state.samples, sample) if s[0] > now - settings.stable_window_s)
        ready = math.ceil(ctx.snapshot.serving_concurrency / slots)
        panic = state.panic if state.panic is not None else initial_panic_state(now, ready)
        desired, panic = kpa_scale(
            now,
            ready,
            window_average(samples, now, settings.stable_window_s),
            window_average(samples, now, settings.panic_window_s),
            target_value,
            settings,
            panic,
        )
        desired = min(max(desired, min_pods), max_pods)
        return float(desired * slots), KPAState(samples, panic)

    return Policy(
        name,
        decide,
        KPAState(),
        params={**settings.model_dump(), "target_per_pod": target_value, "min_pods": min_pods, "max_pods": max_pods},
    )
