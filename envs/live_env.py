"""``LiveScalingEnv``: the Gymnasium interface of :class:`envs.scaling_env.ConcurrencyScalingEnv`
over the live cluster, so a policy trained offline can be evaluated (or fine-tuned) online.

Same action space (index into ``control.factors``), same observation (the one feature function,
:func:`autotune.observation.observation_features`, over snapshots built from live metrics by
:func:`envs.live_metrics.snapshot_between`), same reward function (``control.reward``). A step
scales the current concurrency by the chosen factor, passes it through the same tuner and guard as
the online loop (so emergencies, bounds and cooldowns apply and every step is audited), applies it,
and lets the cluster run for one control interval in real time. An episode is one replay of the
load profile; ``reset`` starts it (once per environment: executors and the store live as long as
the :class:`autotune.live_run.LiveRun` it wraps).

If the metrics cannot be read, the step's observation repeats the last good one and ``info``
carries ``metrics_problem``; the tuner has already fallen back for that interval.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from autotune.observation import FEATURE_HIGH, FEATURE_LOW, N_FEATURES
from control.guard import scale_concurrency
from control.policies import Policy
from envs.rewards import get_reward


class LiveScalingEnv(gym.Env[np.ndarray, np.int64]):
    metadata = {"render_modes": []}

    def __init__(self, live: Any) -> None:
        """``live``: an opened :class:`autotune.live_run.LiveRun` (its cluster, replay and tuner)."""
        self.live = live
        self.cfg = live.cfg
        self.factors = tuple(self.cfg.control.factors)
        self.action_space = spaces.Discrete(len(self.factors))
        self.observation_space = spaces.Box(FEATURE_LOW, FEATURE_HIGH, dtype=np.float32)
        self._reward_fn = get_reward(self.cfg.control.reward)
        self._interval_s = self.cfg.control.interval_s
        self._obs = np.zeros(N_FEATURES, dtype=np.float32)
        self._next_s = 0.0
        self._started = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if self._started:
            raise gym.error.ResetNeeded("a live replay runs once; open a new LiveRun for another episode")
        self._started = True
        self.live.start()
        self._next_s = self.live.started_s + self._interval_s
        return self._advance()[0], {}

    def _advance(self) -> tuple[np.ndarray, Any, str | None]:
        """Run the cluster to the end of the interval and observe it."""
        self.live.pump(self._next_s)
        self._next_s += self._interval_s
        snap, obs, problem = self.live.tuner.observe()
        if obs is not None and problem is None:
            self._obs = obs.astype(np.float32)
        return self._obs, snap, problem

    def step(self, action):
        if not self._started:
            raise gym.error.ResetNeeded("call reset() before step()")
        current = self.live.cluster.target
        proposed = float(scale_concurrency(current, self.factors[int(action)]))
        agent = Policy("agent", lambda ctx, state: (proposed, state))
        snap = self.live.tuner.snapshot
        rec = self.live.tuner.decide(snap, self._obs, None, policy=agent)
        self.live._note(rec)  # noqa: SLF001 - the env drives its run
        obs, snap, problem = self._advance()
        reward = float(self._reward_fn(snap, self.live.tuner.previous, self.cfg)) if snap is not None else 0.0
        truncated = self.live.replay.done and self.live.clock() >= self.live.started_s + self.live.opts.duration_s
        info = {"decision": rec, "snapshot": snap, "metrics_problem": problem}
        return obs, reward, False, truncated, info
