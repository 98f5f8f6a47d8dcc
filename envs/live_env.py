"""``LiveScalingEnv``: the Gymnasium interface of :class:`envs.scaling_env.ConcurrencyScalingEnv`
over the live cluster, so a policy trained offline can be evaluated (or fine-tuned) online.

Same action space (index into ``control.factors``), same observation (the one feature function,
:func:`core.observation.observation_features`, over snapshots built from live metrics by
:func:`executors.metrics_source.snapshot_between`), same reward function (``control.reward``). A step
applies the chosen factor to ``control.action_base`` (the current concurrency, or the base rule's
proposal) through the same policy as the simulator's (:func:`models.registry.agent_policy`), passes
it through the same tuner and guard as the online loop (so emergencies, bounds and cooldowns apply
and every step is audited), applies it, and lets the cluster run for one control interval in real
time. An episode is one replay of the
load profile; ``reset`` starts it (once per environment: executors and the store live as long as
the :class:`autotune.live_run.LiveRun` it wraps).

If the metrics cannot be read, the step's observation repeats the last good one and ``info``
carries ``metrics_problem``; the tuner has already fallen back for that interval.
"""

from __future__ import annotations

from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from control.policies import Policy, PolicyContext
from control.tuner import DecisionRecord
from core.config import AutotuneConfig
from core.domain import ClusterSnapshot
from core.observation import FEATURE_HIGH, FEATURE_LOW, N_FEATURES
from envs.rewards import DEFAULT_LAGRANGE_MULTIPLIER, get_reward
from models.registry import agent_policy


class LiveSession(Protocol):
    """What the live environment drives: a live run (:class:`autotune.live_run.LiveRun` is the one
    implementation). Deciding goes through the run's tuner, so the decision is the live loop's."""

    cfg: AutotuneConfig
    started_s: float

    def start(self) -> None: ...

    def pump(self, until_s: float) -> None: ...

    def observe(self) -> tuple[ClusterSnapshot | None, np.ndarray | None, str | None]: ...

    def decide_on(
        self, snap: ClusterSnapshot | None, obs: np.ndarray | None, problem: str | None, policy: Policy
    ) -> DecisionRecord: ...

    @property
    def current_concurrency(self) -> int: ...

    @property
    def previous_snapshot(self) -> ClusterSnapshot | None: ...

    @property
    def finished(self) -> bool: ...


class LiveScalingEnv(gym.Env[np.ndarray, np.int64]):
    metadata = {"render_modes": []}

    def __init__(self, live: LiveSession) -> None:
        """``live``: an opened live run (its cluster, replay and tuner)."""
        self.live = live
        self.cfg = live.cfg
        self.factors = tuple(self.cfg.control.factors)
        self.action_space = spaces.Discrete(len(self.factors))
        self.observation_space = spaces.Box(FEATURE_LOW, FEATURE_HIGH, dtype=np.float32)
        self._reward_fn = get_reward(self.cfg.control.reward)
        self._interval_s = self.cfg.control.interval_s
        self._obs = np.zeros(N_FEATURES, dtype=np.float32)
        self._snap: ClusterSnapshot | None = None
        self._problem: str | None = None
        self._next_s = 0.0
        self._started = False
        self._action = 0
        # what an action means (control.action_base): the same policy the simulator's env steps with
        self._agent = agent_policy(self.cfg, self._chosen)
        self.lagrange_multiplier = DEFAULT_LAGRANGE_MULTIPLIER

    def _chosen(self, ctx: PolicyContext) -> int:
        return self._action

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if self._started:
            raise gym.error.ResetNeeded("a live replay runs once; open a new LiveRun for another episode")
        self._started = True
        self.live.start()
        self._next_s = self.live.started_s + self._interval_s
        return self._advance(), {}

    def _advance(self) -> np.ndarray:
        """Run the cluster to the end of the interval and observe it."""
        self.live.pump(self._next_s)
        self._next_s += self._interval_s
        self._snap, obs, self._problem = self.live.observe()
        if obs is not None and self._problem is None:
            self._obs = obs.astype(np.float32)
        return self._obs

    def step(self, action):
        if not self._started:
            raise gym.error.ResetNeeded("call reset() before step()")
        i = int(action)
        self.factors[i]  # an action outside the space raises here, not inside the tuner (which would fall back)
        self._action = i
        rec = self.live.decide_on(self._snap, self._obs if self._problem is None else None, self._problem, self._agent)
        obs = self._advance()
        snap = self._snap
        reward = (
            float(self._reward_fn(snap, self.live.previous_snapshot, self.cfg, self.lagrange_multiplier))
            if snap is not None
            else 0.0
        )
        info = {"decision": rec, "snapshot": snap, "metrics_problem": self._problem}
        return obs, reward, False, self.live.finished, info
