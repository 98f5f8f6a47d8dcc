"""Reward functions, by name. Each is a pure function ``reward(snap, prev, cfg, lam)`` of two
consecutive snapshots, the config, and the price of an SLI violation ``lam`` (a Lagrange multiplier,
used by ``constrained`` only; the others ignore it).

``sli_cost`` (default)
    ``1`` when all three SLIs hold in the interval, minus ``0.25 x`` how far each is exceeded
    (relative excess, each capped at 4), minus ``cost_weight x`` provisioned slots as a share of the
    cluster's maximum (``cost_weight = 0.5``). Range about [-3.5, 1]. Meeting the SLIs dominates; among
    ways of meeting them, the cheaper earns more.

``reference``
    The reference system's reward: ``success_diff x 100 + queue_diff x 0.1``, where ``success_diff``
    is the change in success rate since the previous interval and ``queue_diff`` the fall in backlog.
    Kept for comparison: it rewards change rather than level, and has no cost term.

``constrained``
    Cost subject to the SLI target, as a Lagrangian: ``-cost - lam x violation``, where ``cost`` is
    the provisioned slots as a share of the cluster's maximum (in [0, 1], as in ``sli_cost``) and
    ``violation`` is ``1`` when any SLI is broken in the interval plus ``0.25 x`` the capped relative
    excess of each (so how badly counts, not only whether). ``lam`` is not fixed: training raises it
    while the share of intervals meeting all SLIs is below ``control.attainment_target`` and lowers it
    (never below 0) above, once per rollout (:func:`dual_update`, driven by
    :class:`training.train.LagrangeCallback`), so the price of a violation settles where the target
    is just met. Without training it is :data:`DEFAULT_LAGRANGE_MULTIPLIER`.
"""

from __future__ import annotations

from collections.abc import Callable

from core.config import REWARD_NAMES, AutotuneConfig
from core.domain import ClusterSnapshot

RewardFn = Callable[[ClusterSnapshot, "ClusterSnapshot | None", AutotuneConfig, float], float]

COST_WEIGHT = 0.5
EXCESS_WEIGHT = 0.25
EXCESS_CAP = 4.0

DEFAULT_LAGRANGE_MULTIPLIER = 1.0
"""The constrained reward's starting price of a violated interval: level with the most an interval
can cost (the whole cluster), so neither term dominates before the dual ascent has a say."""
DEFAULT_LAGRANGE_LR = 5.0
"""The dual ascent's step per rollout per unit of attainment shortfall: 0.05 below target (94% for
99%) raises the price by 0.25 a rollout."""


def _sli_excess(snap: ClusterSnapshot, cfg: AutotuneConfig) -> float:
    """The summed relative excess over the three SLIs, each capped at ``EXCESS_CAP``; 0 when all hold."""
    slis = cfg.slis
    fail_budget = 1.0 - slis.success_rate_min
    fail_excess = ((1.0 - snap.success_rate) / fail_budget - 1.0) if fail_budget > 0 else 0.0
    time_excess = snap.mean_processing_time_s / slis.mean_processing_time_s_max - 1.0
    backlog_excess = snap.backlog / slis.backlog_max - 1.0
    excess = 0.0
    for e in (fail_excess, time_excess, backlog_excess):
        if e > 0:
            excess += e if e < EXCESS_CAP else EXCESS_CAP
    return excess


def _cost_share(snap: ClusterSnapshot, cfg: AutotuneConfig) -> float:
    """Provisioned slot-seconds as a share of the cluster's maximum over the interval."""
    return snap.provisioned_slot_s / (snap.interval_s * cfg.cluster.max_concurrency)


def sli_cost_reward(
    snap: ClusterSnapshot, prev: ClusterSnapshot | None, cfg: AutotuneConfig, lam: float = 0.0
) -> float:
    excess = _sli_excess(snap, cfg)
    met = 1.0 if excess == 0.0 else 0.0
    return met - EXCESS_WEIGHT * excess - COST_WEIGHT * _cost_share(snap, cfg)


def reference_reward(
    snap: ClusterSnapshot, prev: ClusterSnapshot | None, cfg: AutotuneConfig, lam: float = 0.0
) -> float:
    if prev is None:
        return 0.0
    success_diff = snap.success_rate - prev.success_rate
    queue_diff = prev.backlog - snap.backlog
    return success_diff * 100.0 + queue_diff * 0.1


def constrained_reward(
    snap: ClusterSnapshot,
    prev: ClusterSnapshot | None,
    cfg: AutotuneConfig,
    lam: float = DEFAULT_LAGRANGE_MULTIPLIER,
) -> float:
    excess = _sli_excess(snap, cfg)
    violation = (0.0 if excess == 0.0 else 1.0) + EXCESS_WEIGHT * excess
    return -_cost_share(snap, cfg) - lam * violation


def dual_update(lam: float, attainment: float, target: float, lr: float = DEFAULT_LAGRANGE_LR) -> float:
    """One step of dual ascent on the attainment constraint: ``max(0, lam + lr x (target - attainment))``."""
    return max(0.0, lam + lr * (target - attainment))


REWARDS: dict[str, RewardFn] = {
    "sli_cost": sli_cost_reward,
    "reference": reference_reward,
    "constrained": constrained_reward,
}
if tuple(REWARDS) != REWARD_NAMES:  # the config's schema names them: one list, checked here
    raise RuntimeError(f"envs.rewards implements {tuple(REWARDS)}, core.config.REWARD_NAMES says {REWARD_NAMES}")


def get_reward(name: str) -> RewardFn:
    try:
        return REWARDS[name]
    except KeyError:
        raise ValueError(f"unknown reward {name!r}; choose one of {', '.join(REWARDS)}") from None
