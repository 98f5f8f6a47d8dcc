"""Gymnasium environment: pick a concurrency scaling factor every control interval."""

from __future__ import annotations

import math
import textwrap
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from control.policies import Lookahead, Policy, PolicyContext
from control.tuner import DecisionRecord, Mode, TunerInput, TunerState, decide, proposal
from core.config import AutotuneConfig, config_from_dict, with_overrides
from core.domain import ClusterSnapshot
from core.observation import FEATURE_HIGH, FEATURE_LOW, OBSERVATION_TABLE, observation_features
from envs.rewards import DEFAULT_LAGRANGE_MULTIPLIER, get_reward
from envs.scenarios import STOCHASTIC_SHAPES, arrival_rates_per_s, draw_arrivals, scenario_trace
from envs.simulator import ClusterSimulator


class StepRecord(NamedTuple):
    """What happened in one step, for evaluation and audit (``info["record"]``)."""

    snapshot: ClusterSnapshot
    decision: DecisionRecord  # the tuner's, as the live loop records it


class ConcurrencyScalingEnv(gym.Env[np.ndarray, np.int64]):
    """Scale a simulated task-execution cluster's concurrency against SLIs and cost.

        ## Description
        A cluster of executor slots processes order tasks (payment, inventory, shipping calls with
        service-time distributions, transient and permanent failures, retries with exponential backoff,
        timeouts) arriving from a load profile (:mod:`envs.scenarios`). Every ``control.interval_s``
        simulated seconds the agent picks a scaling factor for the concurrency. The factor's proposal
        goes through the same decision function as the live tuner's (:func:`control.tuner.decide`): the
        concurrency guard (bounds, step limits, cooldown, emergency rule) and, when the guard's emergency
        rule fires, the fallback controller (the calibrated HPA) in its place, as online. New slots serve
        after ``cluster.warmup_s``.

        ## Action Space
        ``Discrete(len(control.factors))``: action ``i`` applies ``control.factors[i]`` (default
        ``(0.8, 1.0, 1.2)``) to ``control.action_base`` (:mod:`control.actions`, the same definition
        the live environment and a trained model use):

        - ``current`` (default): the factor multiplies the concurrency in force, moving it by at
          least one slot;
        - ``rule`` (residual): the factor multiplies the proposal of ``control.base_rule`` (a
          calibrated rule, default ``kpa``), which is asked every interval with its own state; factor
          1.0 proposes exactly what the rule would, so the agent can always do as well as the rule.

        ## Observation Space
        ``Box(15,)`` float32, computed by :func:`core.observation.observation_features` (the same
        function the live system uses), each value clipped to its bounds:

    {observation_table}

        ## Rewards
        By name (``control.reward``), see :mod:`envs.rewards`: ``sli_cost`` (default: the three SLIs and
        cost), ``reference`` (the reference system's ``success_diff x 100 + queue_diff x 0.1``) or
        ``constrained`` (minus the cost share, minus ``lagrange_multiplier`` x the SLI violation; the
        multiplier is this env's attribute, set by training's dual ascent towards
        ``control.attainment_target``, :meth:`set_lagrange_multiplier`; 1.0 when nobody sets it).

        ## Starting State
        An empty queue and ``tasks.<type>.concurrency`` slots serving (``options={"concurrency": n}``
        overrides it). The episode's arrivals are drawn from the seed at reset.

        ## Episode End
        Never terminates; truncates when ``simulation.duration_s`` of simulated time have passed
        (default 3600 s = 240 intervals of 15 s).

        ## Arguments
        ``config`` (:class:`AutotuneConfig` or a mapping), ``scenario`` (name or ``trace:PATH``),
        ``overrides`` (dotted config paths, e.g. ``{"control.interval_s": 5}``), ``fallback`` (the
        tuner's fallback policy; default the calibrated HPA, the live loop's default).

        ## Info
        ``info["record"]``: :class:`StepRecord` with the interval's :class:`ClusterSnapshot` and the
        tuner's :class:`control.tuner.DecisionRecord` (proposed, applied, guard reasons, controller, reason).

        ## Version History
        - v0: initial version, ``Box(14,)``: features 0-13 of the table above.
        - v1: feature 14, ``demand`` (arrival rate x mean service time / maximum concurrency), appended:
          ``Box(14,)`` became ``Box(15,)``; features 0-13, the actions and the reward functions are
          unchanged. The feature came in commit 2e7ac00 still under the v0 id, and the id was bumped
          only later, so a model recorded as v0 may observe 14 or 15 features (``models/ppo_default``
          was trained as v0 with 15 and is relabelled v1, see its ``model_meta.json``). Also changed
          under v0 before the bump (commit 3131d2d): a step's factor goes through
          :func:`control.tuner.decide`, so when the guard's emergency rule fires the fallback
          controller decides in its place, and ``info["record"].decision`` is a ``DecisionRecord``.
          Added under v1 as options, defaults unchanged (so no new id): ``control.action_base:
          rule`` (residual actions) and the ``constrained`` reward.
    """

    __doc__ = (__doc__ or "").replace("{observation_table}", textwrap.indent(OBSERVATION_TABLE, "    "))
    metadata = {"render_modes": []}

    def __init__(
        self,
        config: AutotuneConfig | dict[str, Any] | None = None,
        scenario: str | None = None,
        overrides: dict[str, Any] | None = None,
        fallback: Policy | None = None,
    ) -> None:
        cfg = config if isinstance(config, AutotuneConfig) else config_from_dict(config or {}, "env config")
        if scenario is not None:
            overrides = {**(overrides or {}), "simulation.scenario": scenario}
        if overrides:
            cfg = with_overrides(cfg, overrides)
        self.cfg = cfg
        self.scenario = cfg.simulation.scenario
        # validates the scenario now, not at reset
        self._trace = scenario_trace(self.scenario, cfg.simulation.trace_gaps)
        self.sim = ClusterSimulator(cfg)
        self.factors = tuple(cfg.control.factors)
        self.action_space = spaces.Discrete(len(self.factors))
        self.observation_space = spaces.Box(FEATURE_LOW, FEATURE_HIGH, dtype=np.float32)
        self._reward_fn = get_reward(cfg.control.reward)
        self._random_shape = self.scenario in STOCHASTIC_SHAPES
        self._rates = (
            np.zeros(1)
            if self._random_shape
            else arrival_rates_per_s(self.scenario, cfg.simulation, cfg.simulation.tick_s, self._trace)
        )
        self._interval_s = cfg.control.interval_s
        self._slis = cfg.slis
        self._nominal_service_s = self.sim.nominal_service_time_s
        self._max_c = cfg.cluster.max_concurrency
        self._horizon_s = cfg.simulation.duration_s
        self.fallback = fallback if fallback is not None else _default_fallback(cfg)
        self._tuner = TunerState.initial(Mode.ACTIVE, None, self.fallback)
        self._policy: Policy | None = None
        self._prev: ClusterSnapshot | None = None
        self._snap: ClusterSnapshot | None = None
        self._obs: np.ndarray | None = None
        self._action = 0
        self._agent = _agent_policy(cfg, self._chosen)  # what an action means: one definition, models.registry
        self.lagrange_multiplier = DEFAULT_LAGRANGE_MULTIPLIER  # the constrained reward's price of a violation

    def set_lagrange_multiplier(self, value: float) -> None:
        """Set the price of an SLI violation in the ``constrained`` reward (training's dual ascent
        calls this on every environment through ``VecEnv.env_method``)."""
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"the Lagrange multiplier must be a finite number >= 0, got {value}")
        self.lagrange_multiplier = float(value)

    def _chosen(self, ctx: PolicyContext) -> int:
        return self._action

    # -- gymnasium API -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        concurrency = int((options or {}).get("concurrency", self.cfg.task.concurrency))
        if self._random_shape:  # a new load shape every episode, drawn from the episode's seed
            sim_cfg = self.cfg.simulation
            self._rates = arrival_rates_per_s(self.scenario, sim_cfg, sim_cfg.tick_s, None, self.np_random)
        arrivals = draw_arrivals(self._rates, self.cfg.simulation.tick_s, self.cfg.task.priority_mix, self.np_random)
        self.sim.reset(arrivals, int(self.np_random.integers(1, 2**62)), concurrency)
        self._tuner = TunerState.initial(Mode.ACTIVE, None, self.fallback)
        self._policy = None
        self._prev = None
        self._snap = self.sim.idle_snapshot()
        self._obs = self._observe()
        return self._obs, {}

    def step(self, action):
        i = int(action)
        self.factors[i]  # an action outside the space raises here, not inside the tuner (which would fall back)
        self._action = i
        return self.step_policy(self._agent)

    # -- for rule-based policies and evaluation ----------------------------------------------
    def step_concurrency(self, proposed: float):
        """Advance one interval after the tuner has decided on a proposed target concurrency."""
        return self.step_policy(proposal(proposed))

    def step_policy(self, policy: Policy, lookahead: Lookahead | None = None):
        """Advance one interval with ``policy`` asked by the tuner (:func:`control.tuner.decide`),
        exactly as the live loop asks it: its state is kept here from one step to the next (a new
        policy object starts from its ``initial_state``), a policy that raises is replaced by the
        fallback for that interval, and the guard bounds whatever is applied."""
        if self._snap is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        if policy is not self._policy:
            self._policy = policy
            t = self._tuner
            self._tuner = TunerState(
                t.mode, t.guard_state, t.shadow_guard_state, policy.initial_state, t.fallback_state
            )
        rec, self._tuner = decide(self.tuner_input(lookahead), self._tuner, policy, self.fallback)
        self.sim.set_target(rec.applied)
        self._prev = self._snap
        snap = self.sim.advance(self._interval_s)
        self._snap = snap
        reward = self._reward_fn(snap, self._prev, self.cfg, self.lagrange_multiplier)
        truncated = snap.time_s >= self._horizon_s - 1e-9
        self._obs = self._observe()
        return self._obs, reward, False, truncated, {"record": StepRecord(snap, rec)}

    def tuner_input(self, lookahead: Lookahead | None = None) -> TunerInput:
        """What the tuner sees now: the interval just ended, as the live loop builds it."""
        assert self._snap is not None
        return TunerInput(
            now_s=self._snap.time_s,
            current=self.sim.target_concurrency,
            snapshot=self._snap,
            previous=self._prev,
            observation=self._obs,
            metrics_problem=None,
            nominal_service_time_s=self._nominal_service_s,
            config=self.cfg,
            lookahead=lookahead,
        )

    @property
    def tuner_state(self) -> TunerState:
        return self._tuner

    @property
    def snapshot(self) -> ClusterSnapshot | None:
        return self._snap

    @property
    def previous_snapshot(self) -> ClusterSnapshot | None:
        return self._prev

    @property
    def arrival_rates_per_s(self) -> np.ndarray:
        """The profile's rate at every tick (what the oracle may look ahead at)."""
        return self._rates

    @property
    def realised_arrivals(self) -> np.ndarray:
        """The episode's drawn arrivals per tick and priority class (int64[n_ticks, 3])."""
        return self.sim.arrivals

    def _observe(self) -> np.ndarray:
        assert self._snap is not None
        return observation_features(self._snap, self._prev, self._slis, self._max_c, self._nominal_service_s)

    @property
    def n_steps(self) -> int:
        return int(math.ceil(self._horizon_s / self._interval_s - 1e-9))


def _agent_policy(cfg: AutotuneConfig, choose) -> Policy:
    from models.registry import agent_policy

    return agent_policy(cfg, choose)


def _default_fallback(cfg: AutotuneConfig) -> Policy:
    """The live loop's fallback: the calibrated HPA (the anchor's defaults when not calibrated)."""
    from models.registry import make_policy

    return make_policy("hpa", cfg)
