"""Reward functions, by name. Each is a pure function of two consecutive snapshots.

``sli_cost`` (default)
    ``1`` when all three SLIs hold in the interval, minus ``0.25 x`` how far each is exceeded
    (relative excess, each capped at 4), minus ``cost_weight x`` provisioned slots as a share of the
    cluster's maximum (``cost_weight = 0.5``). Range about [-3.5, 1]. Meeting the SLIs dominates; among
    ways of meeting them, the cheaper earns more.

``reference``
    The reference system's reward: ``success_diff x 100 + queue_diff x 0.1``, where ``success_diff``
    is the change in success rate since the previous interval and ``queue_diff`` the fall in backlog.
    Kept for comparison: it rewards change rather than level, and has no cost term.
"""

from __future__ import annotations

from collections.abc import Callable

from core.config import REWARD_NAMES, AutotuneConfig
from core.domain import ClusterSnapshot

RewardFn = Callable[[ClusterSnapshot, "ClusterSnapshot | None", AutotuneConfig], float]

COST_WEIGHT = 0.5
EXCESS_WEIGHT = 0.25
EXCESS_CAP = 4.0


def sli_cost_reward(snap: ClusterSnapshot, prev: ClusterSnapshot | None, cfg: AutotuneConfig) -> float:
    slis = cfg.slis
    fail_budget = 1.0 - slis.success_rate_min
    fail_excess = ((1.0 - snap.success_rate) / fail_budget - 1.0) if fail_budget > 0 else 0.0
    time_excess = snap.mean_processing_time_s / slis.mean_processing_time_s_max - 1.0
    backlog_excess = snap.backlog / slis.backlog_max - 1.0
    excess = 0.0
    for e in (fail_excess, time_excess, backlog_excess):
        if e > 0:
            excess += e if e < EXCESS_CAP else EXCESS_CAP
    met = 1.0 if excess == 0.0 else 0.0
    cost = snap.provisioned_slot_s / (snap.interval_s * cfg.cluster.max_concurrency)
    return met - EXCESS_WEIGHT * excess - COST_WEIGHT * cost


def reference_reward(snap: ClusterSnapshot, prev: ClusterSnapshot | None, cfg: AutotuneConfig) -> float:
    if prev is None:
        return 0.0
    success_diff = snap.success_rate - prev.success_rate
    queue_diff = prev.backlog - snap.backlog
    return success_diff * 100.0 + queue_diff * 0.1


REWARDS: dict[str, RewardFn] = {"sli_cost": sli_cost_reward, "reference": reference_reward}
if tuple(REWARDS) != REWARD_NAMES:  # the config's schema names them: one list, checked here
    raise RuntimeError(f"envs.rewards implements {tuple(REWARDS)}, core.config.REWARD_NAMES says {REWARD_NAMES}")


def get_reward(name: str) -> RewardFn:
    try:
        return REWARDS[name]
    except KeyError:
        raise ValueError(f"unknown reward {name!r}; choose one of {', '.join(REWARDS)}") from None
