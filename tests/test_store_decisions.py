"""The tuner's decisions and operator requests in the store, on SQLite and MariaDB."""

from __future__ import annotations

import math

import pytest

from control.tuner import DecisionRecord
from tests.test_store import mariadb, store  # noqa: F401 - fixtures


def rec(t: float, **kw) -> DecisionRecord:
    base = dict(
        time_s=t,
        mode="active",
        policy="ppo",
        controller="ppo",
        observation=[0.1] * 15,
        policy_output=120.0,
        guard_applied=110,
        guard_reasons=("max_step",),
        applied=110,
        previous=100,
        reason="policy",
        fallback=False,
        who="tuner",
        emergency=False,
        extra={"k": 1},
    )
    base.update(kw)
    return DecisionRecord(**base)


def test_decisions_round_trip_newest_first_per_cluster(store):
    a = [rec(1_790_000_000.0 + i) for i in range(5)]
    store.record_decisions(a, cluster="blue")
    store.record_decisions(
        [
            rec(
                1_790_000_100.0,
                reason="fallback:metrics:stale",
                fallback=True,
                policy_output=None,
                guard_applied=None,
                guard_reasons=(),
                observation=None,
            )
        ],
        cluster="green",
    )
    got = store.last_decisions(3, cluster="blue")
    assert [r.time_s for r in got] == [a[4].time_s, a[3].time_s, a[2].time_s]
    assert got[0] == a[4]
    (g,) = store.last_decisions(10, cluster="green")
    assert g.fallback and g.observation is None and g.policy_output is None


def test_nan_proposal_is_stored_as_null_with_its_reason(store):
    store.record_decisions([rec(5.0, policy_output=math.nan, guard_reasons=("invalid_proposal",), applied=100)])
    (r,) = store.last_decisions(1)
    assert r.policy_output is None and r.guard_reasons == ("invalid_proposal",)


def test_control_requests_lifecycle(store):
    rid = store.request_control("blue", "olga", ["operator"], "mode", "shadow", 10.0)
    other = store.request_control("green", "olga", ["operator"], "override", "12", 11.0)
    assert [r["id"] for r in store.pending_control("blue")] == [rid]
    store.finish_control(rid, "applied")
    assert store.pending_control("blue") == [] and store.control_request(rid)["status"] == "applied"
    store.finish_control(other, "refused", "outside the bounds")
    assert store.control_request(other)["detail"] == "outside the bounds"
    with pytest.raises(ValueError, match="'mode' or 'override'"):
        store.request_control("blue", "olga", ["operator"], "reboot", "now", 12.0)
