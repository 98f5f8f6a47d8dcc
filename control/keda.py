"""KEDA's queue-length scaler feeding Kubernetes' HPA: the ``keda`` baseline.

KEDA (kedacore/keda) turns a queue into an external metric and lets an HPA scale on it. Modelled
on its RabbitMQ scaler in ``QueueLength`` mode (``pkg/scalers/rabbitmq_scaler.go``): the metric is
the queue's messages, ready *and* unacknowledged (tasks queued plus in flight), an ``AverageValue``
target of ``queueLength`` per replica (default 20; the Redis list scaler's ``listLength`` default
is 5, but it counts only the items still queued), and the trigger is active while the messages
exceed ``activationValue`` (default 0). The scale loop (``pkg/scaling/executor``) polls every
``pollingInterval`` (default 30 s); after ``cooldownPeriod`` (default 300 s) without an active
trigger it scales the target to its minimum (``scaleToZeroOrIdle``; scale-to-zero is off here, so
"zero" is the cluster's minimum concurrency), and otherwise the HPA decides.

The HPA is :func:`control.hpa.hpa_decide` with Kubernetes' default behaviour (tolerance 10%,
scale-down stabilisation 300 s, scale-up max(+4 pods, +100%) per 15 s), run every control
interval on the metric KEDA last polled: the metric changes only every ``pollingInterval``. That is
KEDA's ``useCachedMetrics: true``; with ``use_cached_metrics=False`` the HPA reads the queue at
every sync, as KEDA's metrics server does by default (the polling interval then paces only the
activation check).

Pods are replicas of ``cluster.slots_per_replica`` slots, as for ``hpa``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from control.hpa import HPAConfig, HPAState, hpa_decide
from control.policies import Policy, PolicyContext
from core.config import AutotuneConfig


class KEDASettings(BaseModel):
    """A ScaledObject with one RabbitMQ ``QueueLength`` trigger (defaults = KEDA's)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    queue_length: float = Field(default=20.0, gt=0.0, description="queueLength: messages per replica")
    activation_value: float = Field(default=0.0, ge=0.0, description="activationValue: active above this")
    polling_interval_s: float = Field(default=30.0, gt=0.0, description="pollingInterval")
    cooldown_period_s: float = Field(default=300.0, ge=0.0, description="cooldownPeriod before scaling to min")
    initial_cooldown_period_s: float = Field(default=0.0, ge=0.0, description="initialCooldownPeriod")
    use_cached_metrics: bool = Field(default=True, description="the HPA sees the metric of the last poll")
    scale_down_stabilization_s: float = Field(default=300.0, ge=0.0, le=3600.0, description="HPA behaviour")


@dataclass(frozen=True)
class KEDAState:
    hpa: HPAState = field(default_factory=HPAState)
    created_s: float | None = None  # the first decision: the ScaledObject's creation
    last_poll_s: float | None = None
    polled_messages: float = 0.0
    last_active_s: float | None = None


def queue_messages(ctx: PolicyContext) -> float:
    """Ready plus unacknowledged messages: tasks waiting (backlog) plus those running."""
    snap = ctx.snapshot
    return float(snap.backlog + snap.running)


def cooled_down(now_s: float, state: KEDAState, settings: KEDASettings) -> bool:
    """KEDA's scale-to-idle condition: no active trigger since the cooldown (or, never active, since
    creation plus the initial cooldown); Go's ``Before``, so strictly past."""
    if state.last_active_s is None:
        created = now_s if state.created_s is None else state.created_s
        return created + settings.initial_cooldown_period_s < now_s
    return state.last_active_s + settings.cooldown_period_s < now_s


def keda_policy(cfg: AutotuneConfig, settings: KEDASettings | None = None, name: str = "keda") -> Policy:
    settings = settings or KEDASettings()
    slots = cfg.cluster.slots_per_replica
    hpa = HPAConfig(
        metric="backlog",
        target=settings.queue_length,
        min_replicas=max(1, math.ceil(cfg.cluster.min_concurrency / slots)),
        max_replicas=max(1, math.ceil(cfg.cluster.max_concurrency / slots)),
        scale_down_stabilization_s=settings.scale_down_stabilization_s,
    )

    def decide(ctx: PolicyContext, state: KEDAState) -> tuple[float, KEDAState]:
        now = ctx.now_s
        created = now if state.created_s is None else state.created_s
        messages = queue_messages(ctx)
        last_poll, polled, last_active = state.last_poll_s, state.polled_messages, state.last_active_s
        active: bool | None = None
        if last_poll is None or now - last_poll >= settings.polling_interval_s:
            last_poll, polled = now, messages
            active = messages > settings.activation_value
            if active:
                last_active = now
        state = KEDAState(state.hpa, created, last_poll, polled, last_active)

        replicas = max(1, math.ceil(ctx.current / slots))
        metric = polled if settings.use_cached_metrics else messages
        desired, hpa_state = hpa_decide(now, replicas, metric, hpa, state.hpa)
        state = KEDAState(hpa_state, created, last_poll, polled, last_active)
        if active is False and cooled_down(now, state, settings):
            desired = hpa.min_replicas  # scaleToZeroOrIdle, "zero" being the cluster's minimum
        return float(desired * slots), state

    return Policy(name, decide, KEDAState(), params={**settings.model_dump(), "slots_per_replica": slots})
