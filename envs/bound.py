"""``bound``: the cheapest concurrency schedule found for an episode's realised arrivals, in hindsight.

A yardstick, not a policy: it is computed offline from the whole episode (every arrival, and the
simulator itself, which it searches), so it cannot run live. Every comparison shows it beside the
policies, with ``cost_vs_bound``.

How it is computed: a clairvoyant forward search over the simulator. At each control interval, from
the episode's exact state, it tries target concurrencies (a bisection between the guard's step limits
from the value in force, within the cluster's bounds) and keeps the least one from which the SLIs can
still be met as often as at the most it may ask for: the interval itself and the ``lookahead``
intervals after it are simulated with the concurrency then rising as fast as the step limits allow.
The simulator's state is saved and restored around each trial (:meth:`ClusterSimulator.save`), so a
trial sees the same arrivals, service times and failures the episode will. The schedule is then
replayed through the ordinary decision path (:func:`envs.rollout.run_policy`) and the replay is what
is reported.

Same constraints as every policy: the cluster's bounds, the warm-up of new slots, drain on scale-down
and the guard's step limits (``guard.max_scale_up_fraction``, ``max_scale_down_fraction``,
``min_step``). Relaxed, and so cheaper than any policy can be: the guard's cooldowns (the bound may
scale down right after a change) and its emergency rule (it never needs rescuing). Not relaxed, but
not optimised either: the search is greedy (least capacity now, given that the future can still be
met), so it is not a proof of optimality; that it is a bound in fact is checked empirically, over
every policy on the standard scenarios (``tests/test_bound.py``): its replay meets the SLIs in at least
99% of intervals, and no policy meets them as often at a lower cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from control.guard import step_limits
from control.policies import Policy, PolicyContext
from core.config import AutotuneConfig, ClusterConfig, GuardSettings, with_overrides
from core.domain import sli_status
from envs.rollout import RolloutResult, run_policy
from envs.scaling_env import ConcurrencyScalingEnv

NAME = "bound"
SUMMARY = (
    "the cheapest concurrency schedule found in hindsight for the episode's realised arrivals "
    "(clairvoyant greedy search over the simulator, within the bounds, warm-up and step limits; "
    "cooldowns and the emergency rule relaxed), :mod:`envs.bound`"
)
DEFAULT_LOOKAHEAD_INTERVALS = 6
# what the bound is relaxed of (see the module docstring): its replay runs with these guard settings
RELAXED_GUARD = {"guard.scale_down_cooldown_s": 0.0, "guard.scale_up_cooldown_s": 0.0, "guard.emergency": False}


@dataclass(frozen=True)
class BoundResult:
    rollout: RolloutResult  # the replay of the schedule, through the ordinary decision path
    schedule: tuple[int, ...]  # the target concurrency applied at the start of each interval
    search_s: float  # wall time of the search
    trials: int  # intervals simulated in trials


def step_range(current: int, guard: GuardSettings, cluster: ClusterConfig) -> tuple[int, int]:
    """The least and most concurrency the guard's step limits and the bounds allow after ``current``
    (:func:`control.guard.step_limits`, clamped as the guard clamps)."""
    down, up = step_limits(current, guard)
    lo = min(max(down, cluster.min_concurrency), cluster.max_concurrency)
    hi = max(min(up, cluster.max_concurrency), cluster.min_concurrency)
    return lo, hi


def search_schedule(
    env: ConcurrencyScalingEnv, seed: int, lookahead: int = DEFAULT_LOOKAHEAD_INTERVALS
) -> tuple[list[int], int]:
    """The greedy clairvoyant schedule for ``env``'s episode from ``seed`` (and the trial count)."""
    if lookahead < 0:
        raise ValueError(f"lookahead must be >= 0 intervals, got {lookahead}")
    cfg = env.cfg
    guard, cluster, slis = cfg.guard, cfg.cluster, cfg.slis
    interval_s = cfg.control.interval_s
    env.reset(seed=seed)
    sim = env.sim
    n = env.n_steps
    schedule: list[int] = []
    trials = 0

    def met(level: int, i: int) -> int:
        """SLI-meeting intervals among i..i+lookahead: ``level`` now, then rising at full speed."""
        nonlocal trials
        sim.restore(saved)
        count, c = 0, level
        for j in range(i, min(n, i + 1 + lookahead)):
            if j > i:
                c = step_range(c, guard, cluster)[1]
            sim.set_target(c)
            count += sli_status(sim.advance(interval_s), slis).all_ok
            trials += 1
        return count

    current = sim.target_concurrency
    for i in range(n):
        saved = sim.save()
        lo, hi = step_range(current, guard, cluster)
        best = met(hi, i)
        while lo < hi:  # the least level meeting as many intervals as the most (met rises with level)
            mid = (lo + hi) // 2
            if met(mid, i) >= best:
                hi = mid
            else:
                lo = mid + 1
        sim.restore(saved)
        sim.set_target(lo)
        sim.advance(interval_s)
        schedule.append(lo)
        current = lo
    return schedule, trials


def schedule_policy(schedule: list[int] | tuple[int, ...]) -> Policy:
    """Propose ``schedule[k]`` at the k-th decision (for the replay)."""
    values = tuple(schedule)

    def decide(ctx: PolicyContext, k: int) -> tuple[float, int]:
        return float(values[min(k, len(values) - 1)]), k + 1

    return Policy(NAME, decide, 0, params={"intervals": len(values)})


def compute_bound(cfg: AutotuneConfig, seed: int, lookahead: int = DEFAULT_LOOKAHEAD_INTERVALS) -> BoundResult:
    """Search ``cfg``'s scenario for ``seed`` and replay the schedule found."""
    relaxed = with_overrides(cfg, RELAXED_GUARD)
    t0 = time.perf_counter()
    schedule, trials = search_schedule(ConcurrencyScalingEnv(relaxed, fallback=_hold()), seed, lookahead)
    search_s = time.perf_counter() - t0
    rollout = run_policy(ConcurrencyScalingEnv(relaxed, fallback=_hold()), schedule_policy(schedule), seed)
    applied = [r.applied for r in rollout.intervals]
    if applied != schedule:  # the replay is the same simulator on the same seed: it must repeat
        raise RuntimeError(
            f"bound replay diverged from its schedule at interval {_first_difference(applied, schedule)}"
        )
    return BoundResult(rollout, tuple(schedule), search_s, trials)


def _hold() -> Policy:
    """The replay's fallback: with the emergency rule relaxed it is asked, never applied."""

    def decide(ctx: PolicyContext, state: Any) -> tuple[float, Any]:
        return float(ctx.current), state

    return Policy("hold", decide)


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
