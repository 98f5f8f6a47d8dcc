"""Run a policy through the scaling environment and summarise how it did.

The one evaluation loop: the CLI's ``simulate``, ``compare`` and ``calibrate`` use it, so every
policy, learned or rule-based, is judged on the same seeded arrivals through the same decision
function as the live tuner (:func:`control.tuner.decide`: the guard, and the fallback when the
guard's emergency rule fires or the policy fails).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from control.policies import Lookahead, Policy, PolicyContext
from core.domain import sli_status
from envs.scaling_env import ConcurrencyScalingEnv

LOOKAHEAD_INTERVALS = 3


@dataclass(frozen=True)
class IntervalRecord:
    time_s: float
    arrival_rate_per_s: float
    proposed: float
    applied: int
    target_concurrency: int
    serving_concurrency: int
    running: int
    backlog: int
    peak_backlog: int  # largest backlog seen at any tick of the interval
    backlog_high: int
    backlog_normal: int
    backlog_low: int
    retrying: int
    success_rate: float
    mean_processing_time_s: float
    p90_processing_time_s: float
    p99_processing_time_s: float
    utilisation: float
    provisioned_slot_s: float
    busy_slot_s: float  # slot-seconds spent running attempts: the work, which no schedule can go below
    reward: float
    sli_success_ok: bool
    sli_time_ok: bool
    sli_backlog_ok: bool
    sli_all_ok: bool
    emergency: bool
    guard_reasons: str
    controller: str  # whose value was applied: the policy, or the tuner's fallback
    reason: str  # the tuner's: policy | fallback:emergency | fallback:policy-error:...


@dataclass(frozen=True)
class RunSummary:
    """The numbers a run is judged by (keys of ``autotune simulate --json``)."""

    policy: str
    scenario: str
    seed: int
    intervals: int
    sli_attainment: float  # share of intervals meeting all three SLIs
    success_rate_attainment: float
    processing_time_attainment: float
    backlog_attainment: float
    success_rate: float  # over all tasks that ended
    mean_processing_time_s: float
    p90_processing_time_s: float
    p99_processing_time_s: float
    mean_backlog: float
    max_backlog: int
    cost_slot_hours: float
    busy_slot_hours: float  # the work done: a floor under the cost of any schedule doing it
    scaling_changes: int
    guard_overrides: int
    arrivals: int
    succeeded: int
    failed: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RolloutResult:
    summary: RunSummary
    intervals: list[IntervalRecord]


def lookahead(env: ConcurrencyScalingEnv, policy: Policy) -> Lookahead | None:
    """The realised arrivals ahead, for a clairvoyant policy (None for any other)."""
    snap = env.snapshot
    if not policy.needs_lookahead or snap is None:
        return None
    cfg = env.cfg
    tick_s = env.sim.tick_s
    n = int(math.ceil((cfg.cluster.warmup_s + LOOKAHEAD_INTERVALS * cfg.control.interval_s) / tick_s))
    t = int(round(snap.time_s / tick_s))
    return Lookahead(env.realised_arrivals[t + 1 : t + 1 + n].sum(axis=1), tick_s)


def policy_context(env: ConcurrencyScalingEnv, obs: np.ndarray, policy: Policy) -> PolicyContext:
    """What ``policy`` would be shown now (for benchmarks timing a policy alone)."""
    snap = env.snapshot
    assert snap is not None
    return PolicyContext(
        now_s=snap.time_s,
        current=env.sim.target_concurrency,
        snapshot=snap,
        previous=env.previous_snapshot,
        observation=obs,
        config=env.cfg,
        nominal_service_time_s=env.sim.nominal_service_time_s,
        lookahead=lookahead(env, policy),
    )


def run_policy(env: ConcurrencyScalingEnv, policy: Policy, seed: int) -> RolloutResult:
    """One full episode of ``policy`` on ``env`` with arrivals drawn from ``seed``."""
    env.reset(seed=seed)
    records: list[IntervalRecord] = []
    slis = env.cfg.slis
    changes = overrides = 0
    while True:
        _, reward, terminated, truncated, info = env.step_policy(policy, lookahead(env, policy))
        rec = info["record"]
        snap, dec = rec.snapshot, rec.decision
        status = sli_status(snap, slis)
        changes += dec.applied != dec.previous
        overrides += dec.overridden
        b = snap.backlog_by_priority
        records.append(
            IntervalRecord(
                time_s=snap.time_s,
                arrival_rate_per_s=snap.arrival_rate_per_s,
                proposed=math.nan if dec.policy_output is None else dec.policy_output,
                applied=dec.applied,
                target_concurrency=snap.target_concurrency,
                serving_concurrency=snap.serving_concurrency,
                running=snap.running,
                backlog=snap.backlog,
                peak_backlog=snap.max_backlog,
                backlog_high=b[0],
                backlog_normal=b[1],
                backlog_low=b[2],
                retrying=snap.retrying,
                success_rate=snap.success_rate,
                mean_processing_time_s=snap.mean_processing_time_s,
                p90_processing_time_s=snap.p90_processing_time_s,
                p99_processing_time_s=snap.p99_processing_time_s,
                utilisation=snap.utilisation,
                provisioned_slot_s=snap.provisioned_slot_s,
                busy_slot_s=snap.busy_slot_s,
                reward=float(reward),
                sli_success_ok=status.success_rate_ok,
                sli_time_ok=status.processing_time_ok,
                sli_backlog_ok=status.backlog_ok,
                sli_all_ok=status.all_ok,
                emergency=dec.emergency,
                guard_reasons=";".join(dec.guard_reasons),
                controller=dec.controller,
                reason=dec.reason,
            )
        )
        if terminated or truncated:
            break
    return RolloutResult(_summarise(env, policy, seed, records, changes, overrides), records)


def _share(records: list[IntervalRecord], attr: str) -> float:
    return sum(getattr(r, attr) for r in records) / len(records) if records else 0.0


def _summarise(
    env: ConcurrencyScalingEnv, policy: Policy, seed: int, records: list[IntervalRecord], changes: int, overrides: int
) -> RunSummary:
    cons = env.sim.conservation()
    ended = cons.succeeded + cons.failed
    mean_s, p90_s, p99_s = env.sim.run_latency()
    return RunSummary(
        policy=policy.name,
        scenario=env.scenario,
        seed=seed,
        intervals=len(records),
        sli_attainment=_share(records, "sli_all_ok"),
        success_rate_attainment=_share(records, "sli_success_ok"),
        processing_time_attainment=_share(records, "sli_time_ok"),
        backlog_attainment=_share(records, "sli_backlog_ok"),
        success_rate=cons.succeeded / ended if ended else 1.0,
        mean_processing_time_s=mean_s,
        p90_processing_time_s=p90_s,
        p99_processing_time_s=p99_s,
        mean_backlog=float(np.mean([r.backlog for r in records])) if records else 0.0,
        max_backlog=max((r.peak_backlog for r in records), default=0),
        cost_slot_hours=sum(r.provisioned_slot_s for r in records) / 3600.0,
        busy_slot_hours=sum(r.busy_slot_s for r in records) / 3600.0,
        scaling_changes=changes,
        guard_overrides=overrides,
        arrivals=cons.arrived,
        succeeded=cons.succeeded,
        failed=cons.failed,
    )
