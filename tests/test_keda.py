"""KEDA's queue-length scaler feeding the HPA: metric, activation, polling, the HPA's
stabilisation, settings validation and a rollout within the bounds.

Defaults are kedacore/keda's (at 8b4f083c): pkg/scalers/rabbitmq_scaler.go
(``defaultRabbitMQQueueLength = 20``, ``isActive = messages > activationValue``, activation 0),
apis/keda/v1alpha1/withtriggers_types.go (``defaultPollingInterval = 30``),
pkg/scaling/executor/scale_executor.go (``defaultCooldownPeriod = 5 * 60``,
``defaultInitialCooldownPeriod = 0``); the HPA part is control.hpa with Kubernetes' defaults.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from control.keda import KEDASettings, keda_policy
from control.policies import PolicyContext
from envs.rollout import run_policy
from envs.scaling_env import ConcurrencyScalingEnv
from models.registry import make_policy
from tests.conftest import make_snapshot, small_config


def ctx(current, t, backlog=0, running=0):
    snap = make_snapshot(time_s=t, backlog_by_priority=(0, backlog, 0), running=running)
    return PolicyContext(t, current, snap, None, np.zeros(15, np.float32), small_config(), 1.0)


def run(policy, steps, state=None):
    """steps: (current, time_s, backlog, running); returns the proposals and the last state."""
    state = policy.initial_state if state is None else state
    out = []
    for current, t, backlog, running in steps:
        proposal, state = policy.decide(ctx(current, t, backlog, running), state)
        out.append(proposal)
    return out, state


def test_defaults_are_kedas():
    s = KEDASettings()
    assert (s.queue_length, s.activation_value, s.polling_interval_s, s.cooldown_period_s) == (20.0, 0.0, 30.0, 300.0)
    assert s.scale_down_stabilization_s == 300.0


def test_metric_is_queued_plus_in_flight_per_replica():
    """10 replicas (100 slots): 300 queued + 100 running = 400 messages / 20 per replica = 20
    replicas, within the HPA's scale-up limit (x2 per 15 s) -> 200 slots."""
    p = make_policy("keda-default", small_config())
    (proposal,), _ = run(p, [(100, 15.0, 300, 100)])
    assert proposal == 200


def test_polling_holds_the_metric_between_polls():
    """Polled at 15 s (400 messages -> 20 replicas); at 30 s the queue has grown to 1000 but the
    next poll is due at 45 s, so the HPA still sees 400 (20 replicas: hold); at 45 s it sees 1000
    -> 50 replicas, limited to x2 of 20 = 40."""
    p = make_policy("keda-default", small_config())
    out, st = run(p, [(100, 15.0, 300, 100), (200, 30.0, 900, 100), (200, 45.0, 900, 100)])
    assert out == [200, 200, 400]
    assert st.last_poll_s == 45.0 and st.polled_messages == 1000
    live = keda_policy(small_config(), KEDASettings(use_cached_metrics=False))
    out, _ = run(live, [(100, 15.0, 300, 100), (200, 30.0, 900, 100)])
    assert out == [200, 400]  # without the cache the HPA reads the queue every sync


def test_hpa_scale_down_stabilisation_holds_for_300_s():
    """Load falls from 400 to 40 messages after 15 s. The HPA sees the fall at the next poll (45 s;
    at 30 s it still sees 400 and recommends 20 replicas again); it then wants 2 replicas, but its
    300 s window holds the 20 recommended at 30 s until that leaves the window at 330 s."""
    p = make_policy("keda-default", small_config())
    steps = [(200, 15.0, 300, 100)] + [(200, 15.0 + 15 * k, 20, 20) for k in range(1, 22)]
    out, _ = run(p, steps)
    assert set(out[:21]) == {200.0}  # 15 s .. 315 s
    assert out[21] == 20  # 330 s: 30 + 300 is not after 330, the window holds only 2s: 2 replicas


def test_activation_and_cooldown_scale_to_min():
    """No messages: the trigger is inactive. Never active since creation (initialCooldownPeriod 0):
    at the second poll the target goes to the minimum (4 slots -> 1 replica = 10 slots), although
    the HPA's first-sync seed would hold it for 300 s."""
    p = make_policy("keda-default", small_config())
    out, st = run(p, [(100, 15.0, 0, 0), (100, 30.0, 0, 0), (100, 45.0, 0, 0)])
    assert out == [100, 100, 10] and st.last_active_s is None
    # active at 15 s, then idle; polls at 45, 75, ..., 315, 345 s. With the HPA's window longer
    # (600 s) only KEDA's cooldown can scale in: at the first poll strictly after 15 + 300 s.
    p = keda_policy(small_config(), KEDASettings(scale_down_stabilization_s=600))
    steps = [(100, 15.0, 100, 100)] + [(100, 15.0 + 15 * k, 0, 0) for k in range(1, 23)]
    out, st = run(p, steps)
    assert st.last_active_s == 15.0
    assert set(out[:22]) == {100.0}  # up to 330 s; the poll at 315 s is not after 15 + 300
    assert out[22] == 10  # 345 s: a poll after the cooldown, scale to min


def test_activation_value_gates_activity():
    p = keda_policy(small_config(), KEDASettings(activation_value=50))
    _, st = run(p, [(100, 15.0, 30, 20)])  # 50 messages: not above 50
    assert st.last_active_s is None
    _, st = run(p, [(100, 15.0, 31, 20)])
    assert st.last_active_s == 15.0


@pytest.mark.parametrize(
    "field, value",
    [
        ("queue_length", 0.0),
        ("activation_value", -1.0),
        ("polling_interval_s", 0.0),
        ("cooldown_period_s", -5.0),
        ("scale_down_stabilization_s", 4000.0),
        ("queue_length", float("inf")),
        ("queueLength", 5),
    ],
)
def test_bad_settings_fail_naming_the_field(field, value):
    with pytest.raises(ValidationError, match=field):
        KEDASettings(**{field: value})


@pytest.mark.parametrize("scenario", ["step", "worldcup"])
def test_rollout_stays_within_bounds(scenario):
    cfg = small_config(
        cluster={"min_concurrency": 8, "max_concurrency": 200},
        simulation={"scenario": scenario, "duration_s": 900.0, "peak_rate_per_s": 120.0},
    )
    res = run_policy(ConcurrencyScalingEnv(cfg), make_policy("keda", cfg), 0)
    assert all(8 <= r.applied <= 200 for r in res.intervals)
    assert res.summary.scaling_changes > 0
