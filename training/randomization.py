"""Domain randomisation: a fresh cluster and load for every training episode.

A policy trained on one curve learns that curve. :class:`RandomizedScalingEnv` draws, at every reset,
a scenario, a peak rate, service-time and failure-rate scales, a time compression (and a window of
the trace, for traces) and an initial concurrency, from the episode's seed, and runs a
:class:`~envs.scaling_env.ConcurrencyScalingEnv` on it. Observation and action spaces never change.

The scenarios of the training draw (``training/hyperparams/ppo.yml``, and :data:`TRAINING_SCENARIOS`
with :data:`TRAINING_SCENARIO_WEIGHTS` here), with their weights (``scenario_weights``; a scenario's
share of episodes is its weight over the sum, 16):

- ``constant``, ``diurnal``, ``flash-sale``, ``step`` (1 each): the fixed shapes, one curve each;
- ``bursty``, ``mmpp``, ``onoff``, ``flash-crowd``, ``weekly`` (2 each): the stochastic families
  (:data:`envs.scenarios.STOCHASTIC_SHAPES`), a new shape from every episode's seed, so each weighs
  more than one fixed curve: wandering load with surges, Markov-modulated levels, heavy-tailed
  on/off bursts, flash crowds of 2-10x, daily and weekly cycles with noise;
- ``worldcup`` (2): the packaged World Cup day, from a random offset.

``worldcup-holdout`` (:data:`HOLDOUT_SCENARIOS`) is never trained on: it is kept for evaluation, and a
spec that names it is refused. Without ``scenario_weights`` the weights above go with the default
scenarios, and a spec that lists its own scenarios weighs each entry 1 (a scenario listed twice
draws twice as often), as before weights existed: a recorded ``config.yml`` without weights, such as
``models/ppo_default``'s, draws as it did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from core.config import SCENARIO_NAMES, AutotuneConfig, is_scenario_name, with_overrides
from envs.scaling_env import ConcurrencyScalingEnv

HOLDOUT_SCENARIOS = frozenset({"worldcup-holdout"})
TRAINING_SCENARIOS: tuple[str, ...] = (
    "constant",
    "diurnal",
    "flash-sale",
    "step",
    "bursty",
    "mmpp",
    "onoff",
    "flash-crowd",
    "weekly",
    "worldcup",
)
TRAINING_SCENARIO_WEIGHTS: dict[str, float] = {
    "bursty": 2.0,
    "mmpp": 2.0,
    "onoff": 2.0,
    "flash-crowd": 2.0,
    "weekly": 2.0,
    "worldcup": 2.0,
}


@dataclass(frozen=True)
class RandomizationSpec:
    """The ranges episodes are drawn from. The ``randomization:`` section of a hyperparameter file is
    validated into one by :class:`training.ppo_hyperparams.PPOHyperparams` (types, unknown keys); the
    checks across values are here."""

    scenarios: tuple[str, ...] = TRAINING_SCENARIOS
    # weight of each entry of a listed scenario (1 if not named); a name not in scenarios draws nothing.
    # None: TRAINING_SCENARIO_WEIGHTS for the default scenarios, 1 each for a list of one's own.
    scenario_weights: dict[str, float] | None = None
    peak_rate_per_s: tuple[float, float] = (30.0, 300.0)
    service_time_scale: tuple[float, ...] = (0.7, 0.85, 1.0, 1.2, 1.5)
    failure_scale: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    time_compression: tuple[float, float] = (12.0, 48.0)
    initial_concurrency: tuple[int, int] = (10, 300)
    time_compression_log: bool = False  # draw the compression log-uniformly (for wide ranges)

    def __post_init__(self) -> None:
        if not self.scenarios:
            raise ValueError("randomization.scenarios: give at least one scenario")
        unknown = [s for s in self.scenarios if not is_scenario_name(s)]
        if unknown:
            raise ValueError(
                f"randomization.scenarios: unknown scenario(s) {unknown}; choose from "
                f"{', '.join(SCENARIO_NAMES)} or trace:PATH.csv"
            )
        given = self.scenario_weights or {}
        named = [s for s in given if not is_scenario_name(s)]
        if named:
            raise ValueError(f"randomization.scenario_weights: unknown scenario(s) {named}")
        bad = {s: w for s, w in given.items() if not (math.isfinite(w) and w >= 0)}
        if bad:
            raise ValueError(f"randomization.scenario_weights: need weights >= 0, got {bad}")
        if sum(self.weights()) <= 0:
            raise ValueError("randomization.scenario_weights: the listed scenarios all weigh 0")
        leaked = HOLDOUT_SCENARIOS & set(self.scenarios)
        if leaked:
            raise ValueError(f"randomization.scenarios: {sorted(leaked)} is held back for evaluation")
        lo, hi = self.peak_rate_per_s
        if not 0 < lo <= hi:
            raise ValueError(f"randomization.peak_rate_per_s: need 0 < low <= high, got {lo}, {hi}")
        if not self.service_time_scale or min(self.service_time_scale) <= 0:
            raise ValueError("randomization.service_time_scale: need positive scales")
        if not self.failure_scale or min(self.failure_scale) < 0:
            raise ValueError("randomization.failure_scale: need non-negative scales")
        c_lo, c_hi = self.time_compression
        if not 0 < c_lo <= c_hi:
            raise ValueError(f"randomization.time_compression: need 0 < low <= high, got {c_lo}, {c_hi}")
        i_lo, i_hi = self.initial_concurrency
        if not 1 <= i_lo <= i_hi:
            raise ValueError(f"randomization.initial_concurrency: need 1 <= low <= high, got {i_lo}, {i_hi}")

    def weights(self) -> list[float]:
        """The weight of each entry of ``scenarios``."""
        weights = self.scenario_weights
        if weights is None:
            weights = TRAINING_SCENARIO_WEIGHTS if tuple(self.scenarios) == TRAINING_SCENARIOS else {}
        return [float(weights.get(s, 1.0)) for s in self.scenarios]


@dataclass
class EpisodeDraw:
    """What one training episode runs on."""

    overrides: dict[str, Any] = field(default_factory=dict)
    initial_concurrency: int = 100


def draw_episode(base: AutotuneConfig, spec: RandomizationSpec, rng: np.random.Generator) -> EpisodeDraw:
    """Sample an episode's scenario and cluster (pure apart from the generator)."""
    scenario = spec.scenarios[_draw_index(spec, rng)]
    lo, hi = spec.peak_rate_per_s
    peak = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    service = float(spec.service_time_scale[int(rng.integers(len(spec.service_time_scale)))])
    failure = float(spec.failure_scale[int(rng.integers(len(spec.failure_scale)))])
    c_lo, c_hi = spec.time_compression
    compression = float(
        math.exp(rng.uniform(math.log(c_lo), math.log(c_hi))) if spec.time_compression_log else rng.uniform(c_lo, c_hi)
    )
    overrides: dict[str, Any] = {
        "simulation.scenario": scenario,
        "simulation.peak_rate_per_s": round(peak, 3),
        "simulation.time_compression": round(compression, 3),
        "simulation.trace_offset_s": float(rng.uniform(0, 86_400)) if scenario.startswith("worldcup") else 0.0,
    }
    steps = {}
    for name, step in base.task.steps.items():
        steps[name] = {
            **step.model_dump(),
            "mean_s": step.mean_s * service,
            "transient_failure": min(step.transient_failure * failure, 0.5),
            "permanent_failure": min(step.permanent_failure * failure, 0.5),
        }
    overrides[f"tasks.{base.task_type}.steps"] = steps
    i_lo, i_hi = spec.initial_concurrency
    c = base.cluster
    initial = min(max(int(rng.integers(i_lo, i_hi + 1)), c.min_concurrency), c.max_concurrency)
    return EpisodeDraw(overrides, initial)


def _draw_index(spec: RandomizationSpec, rng: np.random.Generator) -> int:
    """The index of the episode's scenario, by ``scenario_weights``. One draw either way: with equal
    weights, the uniform integer draw of old, so a spec of equal weights draws as it always did."""
    weights = spec.weights()
    if len(set(weights)) == 1:
        return int(rng.integers(len(spec.scenarios)))
    cumulative = np.cumsum(weights)
    return int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))


class RandomizedScalingEnv(gym.Env[np.ndarray, np.int64]):
    """``ConcurrencyScalingEnv`` on a new randomly drawn cluster and load every episode.

    With ``fixed`` (a list of override dicts, each optionally with ``"_seed"``) it cycles through
    those instead, in order, at the configured concurrency: the fixed evaluation scenarios.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        base: AutotuneConfig | None = None,
        spec: RandomizationSpec | None = None,
        fixed: list[dict[str, Any]] | None = None,
    ) -> None:
        self.base = base or AutotuneConfig()
        self.randomization = spec or RandomizationSpec()
        self.fixed = fixed
        self._fixed_i = 0
        self.inner = ConcurrencyScalingEnv(self.base)
        self.observation_space = self.inner.observation_space
        self.action_space = self.inner.action_space
        self.lagrange_multiplier = self.inner.lagrange_multiplier

    def set_lagrange_multiplier(self, value: float) -> None:
        """The ``constrained`` reward's price of a violation, for this episode and the next ones."""
        self.inner.set_lagrange_multiplier(value)
        self.lagrange_multiplier = self.inner.lagrange_multiplier

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        episode_seed = None
        if self.fixed is not None:
            overrides = dict(self.fixed[self._fixed_i % len(self.fixed)])
            self._fixed_i += 1
            episode_seed = overrides.pop("_seed", None)  # fixed scenarios may pin their arrivals
            draw = EpisodeDraw(overrides, self.base.task.concurrency)
        else:
            draw = draw_episode(self.base, self.randomization, self.np_random)
        # a new env per episode: building one costs well under a millisecond (attempt tables and
        # traces are cached), against the episode's hundreds of steps
        self.inner = ConcurrencyScalingEnv(with_overrides(self.base, draw.overrides, source="randomization"))
        self.inner.set_lagrange_multiplier(self.lagrange_multiplier)
        if episode_seed is None:
            episode_seed = int(self.np_random.integers(0, 2**31 - 1))
        return self.inner.reset(seed=episode_seed, options={"concurrency": draw.initial_concurrency})

    def step(self, action):
        return self.inner.step(action)
