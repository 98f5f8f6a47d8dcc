"""The online tuning loop: the thin adapter around the pure tuner (:mod:`control.tuner`).

Every interval :meth:`TuningLoop.step` reads the live metrics (Prometheus, or the in-process
exporter), turns the reading into the interval's :class:`~core.domain.ClusterSnapshot` with the
same arithmetic the simulator uses (:func:`executors.metrics_source.snapshot_between`), builds the same
observation (:func:`core.observation.observation_features`), asks :func:`control.tuner.decide`,
applies the result to the executors, and records the decision (store, exporter). A failing read
becomes the decision's ``metrics_problem`` (the tuner falls back and says so); a failing apply or
record is logged and the loop carries on: one bad interval never ends the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from control.policies import Policy
from control.tuner import DecisionRecord, DecisionSink, Mode, TunerInput, TunerState, change_mode, decide, override
from core.config import AutotuneConfig
from core.domain import ClusterSnapshot
from core.observation import observation_features
from executors.metrics_source import MetricsError, MetricsSource, ReadingWindow
from models.registry import make_policy

log = logging.getLogger(__name__)


def load_policy(name: str, cfg: AutotuneConfig, seed: int = 0) -> tuple[Policy | None, str | None]:
    """The policy to tune with, or (None, why not): a missing or incompatible model is not fatal,
    the loop falls back to the calibrated HPA and says so. Unknown names are the caller's error."""
    from models import ModelError
    from models.registry import UnknownPolicyError

    try:
        policy = make_policy(name, cfg, seed)
    except ModelError as err:
        return None, f"model unusable: {err}"
    except UnknownPolicyError:
        raise
    except (OSError, ValueError) as err:
        return None, f"policy {name!r} could not be loaded: {err}"
    if policy.needs_lookahead:
        raise UnknownPolicyError(f"policy {name!r} needs to see future arrivals; it exists only in the simulator")
    return policy, None


class TuningLoop:
    """Observe, decide, guard, apply, record; once per control interval.

    Arguments:
        source: a :class:`executors.metrics_source.MetricsSource` (the in-process exporter or
            Prometheus); None for a loop that is handed its snapshots (:meth:`observed`).
        current / apply: read and set the cluster's target concurrency.
        record: the :class:`control.tuner.DecisionSink`, called with each DecisionRecord (the store's ``record_decisions``
            and the exporter).
    """

    def __init__(
        self,
        cfg: AutotuneConfig,
        *,
        source: MetricsSource | None,
        current: Callable[[], int],
        apply: Callable[[int], None],
        policy: Policy | None,
        policy_problem: str | None = None,
        fallback: Policy | None = None,
        mode: Mode | str = Mode.ACTIVE,
        record: DecisionSink | None = None,
        nominal_service_time_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.current = current
        self.apply = apply
        self.policy = policy
        self.policy_problem = policy_problem
        self._asked: Policy | None = policy  # the policy whose state the tuner state holds
        self.fallback = fallback if fallback is not None else make_policy("hpa", cfg)
        self.record = record
        self.clock = clock
        self.window = ReadingWindow(cfg.slis.success_rate_window_s)
        self.state = TunerState.initial(Mode(mode), policy, self.fallback)
        self.nominal_service_time_s = (
            nominal_service_time_s if nominal_service_time_s is not None else _nominal_service_time_s(cfg)
        )
        self.snapshot: ClusterSnapshot | None = None
        self.previous: ClusterSnapshot | None = None
        self.last: DecisionRecord | None = None
        self.failed_steps = 0

    def prime(self) -> None:
        """Take the first reading, so the first interval has a start."""
        try:
            if self.source is not None:
                self.window.add(self.source.read())
        except MetricsError as err:
            log.warning("first metrics reading failed: %s", err)

    def observe(self) -> tuple[ClusterSnapshot | None, np.ndarray | None, str | None]:
        """Read the metrics: the interval just ended's snapshot and observation, or what was wrong."""
        try:
            if self.source is None:
                raise MetricsError("no metrics source: this loop is handed its snapshots")
            reading = self.source.read()
        except MetricsError as err:
            return None, None, str(err)
        try:
            snap = self.window.add(reading)
        except ValueError as err:  # a reading not after the previous one: the source is stuck
            return None, None, f"stale: {err}"
        if snap is None:
            return None, None, "no interval yet: first reading"
        return self.observed(snap)

    def observed(self, snap: ClusterSnapshot) -> tuple[ClusterSnapshot, np.ndarray, str | None]:
        """Take in the snapshot of the interval just ended (built from a reading by :meth:`observe`):
        its observation, and a problem if the observation is not finite."""
        obs = observation_features(
            snap, self.snapshot, self.cfg.slis, self.cfg.cluster.max_concurrency, self.nominal_service_time_s
        )
        self.previous, self.snapshot = self.snapshot, snap
        problem = None if np.all(np.isfinite(obs)) else "NaN in the observation"
        return snap, obs, problem

    def step(self, problem: str | None = None) -> DecisionRecord:
        """One control interval: observe, then decide. Never raises for a failed read or apply.

        ``problem`` (e.g. an outage of the cluster's Redis or database) makes the interval's
        reading untrustworthy for deciding, as stale metrics do: the interval is still observed
        (its snapshot counts in the SLI report), but the concurrency is held and the record says why."""
        snap, obs, found = self.observe()
        if problem is not None:
            return self.decide(None, None, problem)
        return self.decide(snap, obs, found)

    def decide(
        self, snap: ClusterSnapshot | None, obs: np.ndarray | None, problem: str | None, policy: Policy | None = None
    ) -> DecisionRecord:
        """Decide on an observation already taken (``policy`` replaces the loop's for this decision:
        the live environment passes its agent's action this way), apply, record."""
        current = self.current()
        inp = TunerInput(
            now_s=self.clock(),
            current=current,
            snapshot=snap,
            previous=self.previous if snap is not None else None,
            observation=obs,
            metrics_problem=problem,
            nominal_service_time_s=self.nominal_service_time_s,
            config=self.cfg,
        )
        chosen = policy if policy is not None else self.policy
        if chosen is not self._asked:  # a policy new to the loop starts from its own state, as in the simulator's env
            self._asked = chosen
            self.state = replace(self.state, policy_state=None if chosen is None else chosen.initial_state)
        rec, self.state = decide(
            inp, self.state, chosen, self.fallback, None if policy is not None else self.policy_problem
        )
        if rec.applied != current:
            try:
                self.apply(rec.applied)
            except Exception as err:
                self.failed_steps += 1
                log.error("applying concurrency %d failed: %s", rec.applied, err)
        self._record(rec)
        self.last = rec
        return rec

    def set_mode(self, mode: Mode | str, user: str, roles: frozenset[str] | set[str]) -> DecisionRecord:
        """Operator action (role ``operator``): change the mode; audited like a decision."""
        self.state, rec = change_mode(self.state, Mode(mode), user, frozenset(roles), self.clock(), self.current())
        self._record(rec)
        return rec

    def override(self, concurrency: int, user: str, roles: frozenset[str] | set[str]) -> DecisionRecord:
        """Operator action (role ``operator``): set the concurrency by hand; audited."""
        self.state, rec = override(
            self.state, concurrency, user, frozenset(roles), self.clock(), self.current(), self.cfg.cluster
        )
        self.apply(rec.applied)
        self._record(rec)
        return rec

    def _record(self, rec: DecisionRecord) -> None:
        if self.record is None:
            return
        try:
            self.record(rec)
        except Exception as err:
            self.failed_steps += 1
            log.error("recording decision at %.0f failed: %s", rec.time_s, err)


def _nominal_service_time_s(cfg: AutotuneConfig) -> float:
    """The task's mean attempt time from its definitions: the same table the simulator draws from."""
    from envs.service_model import attempt_table

    return attempt_table(cfg.task.steps, cfg.simulation.tick_s).mean_slot_s
