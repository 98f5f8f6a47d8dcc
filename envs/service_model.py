"""Service-time and failure model of one task attempt, precomputed for the simulator.

An attempt runs the task type's steps in order (payment, inventory, shipping). Each call takes a
lognormal time with the configured mean and coefficient of variation; a call slower than its
``call_timeout_s`` fails retryably at the timeout, otherwise it fails permanently with
``permanent_failure``, retryably with ``transient_failure``, or passes on to the next step. The
attempt's outcome and duration (rounded stochastically to simulator ticks, which keeps the mean slot
time exact) are tabulated once from a large seeded sample, so the simulator draws an attempt's fate
with one uniform number.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from core.config import StepConfig

SUCCESS, TRANSIENT, PERMANENT = 0, 1, 2
OUTCOME_NAMES = ("success", "transient", "permanent")
MODEL_SAMPLES = 200_000
MODEL_SEED = 20260101  # fixed: the table is part of the model, not of an episode's randomness


@dataclass(frozen=True)
class AttemptTable:
    """Joint distribution of (outcome, duration in ticks) of one attempt, as a sparse CDF."""

    tick_s: float
    cell_outcome: np.ndarray  # int64[n]
    cell_ticks: np.ndarray  # int64[n], >= 1
    cell_cdf: np.ndarray  # float64[n], non-decreasing, last == 1
    outcome_probability: tuple[float, float, float]
    mean_slot_s: float  # mean slot time of an attempt, in seconds
    max_ticks: int


def _lognormal(rng: np.random.Generator, mean_s: float, cv: float, n: int) -> np.ndarray:
    if cv == 0:
        return np.full(n, mean_s)
    sigma2 = np.log1p(cv * cv)
    return rng.lognormal(np.log(mean_s) - sigma2 / 2, np.sqrt(sigma2), n)


def _steps_key(steps: dict[str, StepConfig]) -> tuple[tuple[float, ...], ...]:
    return tuple((s.mean_s, s.cv, s.transient_failure, s.permanent_failure, s.call_timeout_s) for s in steps.values())


def attempt_table(steps: dict[str, StepConfig], tick_s: float) -> AttemptTable:
    """The attempt table for a task type's steps at the simulator's tick (cached)."""
    return _attempt_table(_steps_key(steps), float(tick_s))


@lru_cache(maxsize=64)
def _attempt_table(steps: tuple[tuple[float, ...], ...], tick_s: float) -> AttemptTable:
    rng = np.random.default_rng(MODEL_SEED)
    n = MODEL_SAMPLES
    elapsed = np.zeros(n)
    outcome = np.full(n, -1, dtype=np.int64)  # -1: still going
    for mean_s, cv, p_transient, p_permanent, timeout_s in steps:
        going = outcome < 0
        d = _lognormal(rng, mean_s, cv, n)
        u = rng.random(n)
        timed_out = going & (d > timeout_s)
        elapsed = np.where(going, elapsed + np.minimum(d, timeout_s), elapsed)
        outcome[timed_out] = TRANSIENT
        ok = going & ~timed_out
        outcome[ok & (u < p_permanent)] = PERMANENT
        outcome[ok & (u >= p_permanent) & (u < p_permanent + p_transient)] = TRANSIENT
    outcome[outcome < 0] = SUCCESS
    x = elapsed / tick_s
    ticks = np.maximum(np.floor(x + rng.random(n)).astype(np.int64), 1)
    max_ticks = int(ticks.max())
    counts = np.zeros((3, max_ticks + 1), dtype=np.int64)
    np.add.at(counts, (outcome, ticks), 1)
    o_idx, k_idx = np.nonzero(counts)
    # most likely cells first: the simulator's allocation loop stops once every task is placed
    order = np.lexsort((k_idx, o_idx, -counts[o_idx, k_idx]))
    o_idx, k_idx = o_idx[order], k_idx[order]
    p = counts[o_idx, k_idx] / n
    cdf = np.cumsum(p)
    cdf[-1] = 1.0
    probs = counts.sum(axis=1) / n
    return AttemptTable(
        tick_s=tick_s,
        cell_outcome=o_idx.astype(np.int64),
        cell_ticks=k_idx.astype(np.int64),
        cell_cdf=cdf,
        outcome_probability=(float(probs[0]), float(probs[1]), float(probs[2])),
        mean_slot_s=float((ticks * tick_s).mean()),
        max_ticks=max_ticks,
    )
