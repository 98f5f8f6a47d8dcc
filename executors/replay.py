"""Replaying a load profile against the live cluster.

The arrivals come from the same definitions the simulator draws from (:mod:`envs.scenarios`): the
scenario's rate per tick, Poisson counts split over the priority classes by the task type's
``priority_mix``, all fixed by the seed. :func:`plan_replay` is pure; :class:`Replay` turns the plan
into task submissions as wall-clock time passes.

The live cluster ranks tasks by their dynamic priority score (:func:`core.domain.task_priority`),
not by a class label, so each drawn class becomes task fields that score into it: a high-class order
is due in 30 s, a normal one has no deadline, a low one is a type of task with a poor history
(``historical_success_rate`` 0), which is how the reference system's score pushes work down.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from core.config import AutotuneConfig
from envs.scenarios import arrival_rates_per_s, draw_arrivals

HIGH_DEADLINE_S = 30.0
REPLAY_TICK_S = 0.5  # arrivals are drawn per tick of this; `autotune run` checks its size limits at it


@dataclass(frozen=True)
class ReplayPlan:
    scenario: str
    tick_s: float
    duration_s: float
    arrivals: np.ndarray  # int64[n_ticks, 3]: arrivals per tick and priority class
    rates_per_s: np.ndarray  # the profile's rate at each tick

    @property
    def total(self) -> int:
        return int(self.arrivals.sum())

    def rate_at(self, t_s: float) -> float:
        i = min(len(self.rates_per_s) - 1, max(0, int(t_s / self.tick_s)))
        return float(self.rates_per_s[i])


def plan_replay(
    cfg: AutotuneConfig, *, task_type: str = "order_processing", seed: int = 0, tick_s: float = REPLAY_TICK_S
) -> ReplayPlan:
    """Arrivals of ``cfg.simulation`` (scenario, peak, duration, compression) for ``task_type``."""
    if task_type not in cfg.tasks:
        raise ValueError(f"replay task type {task_type!r} is not registered (known: {', '.join(cfg.tasks)})")
    sim = cfg.simulation
    rng = np.random.default_rng(seed)
    rates = arrival_rates_per_s(sim.scenario, sim, tick_s, rng=rng)
    n_ticks = int(math.ceil(sim.duration_s / tick_s))
    rates = rates[:n_ticks]
    arrivals = draw_arrivals(rates, tick_s, cfg.tasks[task_type].priority_mix, rng)
    return ReplayPlan(sim.scenario, tick_s, sim.duration_s, arrivals, rates)


def task_fields(priority_class: int, now_s: float) -> dict:
    """Task fields that make a task of the given drawn class score into that class."""
    if priority_class == 0:
        return {"deadline_s": now_s + HIGH_DEADLINE_S}
    if priority_class == 2:
        return {"historical_success_rate": 0.0}
    return {}


class Replay:
    """Submits the plan's arrivals as their ticks come due; call :meth:`due` often (each cycle)."""

    def __init__(
        self, plan: ReplayPlan, *, task_type: str = "order_processing", id_prefix: str = "r", clock: Callable[[], float]
    ) -> None:
        self.plan = plan
        self.task_type = task_type
        self.id_prefix = id_prefix
        self.clock = clock
        self.started_s: float | None = None
        self.next_tick = 0
        self.submitted = 0
        self._skip = 0  # tasks of the next tick already submitted by an earlier driver

    def resume_after(self, n_submitted: int, now_s: float) -> None:
        """Continue a replay whose first ``n_submitted`` tasks an earlier driver submitted (it died):
        the next task is number ``n_submitted + 1``, and the tick it belongs to is due now (the time
        the driver was down is a pause in the profile, not a skip)."""
        total, tick = 0, 0
        for tick in range(len(self.plan.arrivals) + 1):
            if tick == len(self.plan.arrivals):
                break
            k = int(self.plan.arrivals[tick].sum())
            if total + k > n_submitted:
                break
            total += k
        self.next_tick, self.submitted, self._skip = tick, total, n_submitted - total
        self.started_s = now_s - tick * self.plan.tick_s

    @property
    def done(self) -> bool:
        return self.next_tick >= len(self.plan.arrivals)

    def elapsed_s(self) -> float:
        return 0.0 if self.started_s is None else self.clock() - self.started_s

    def due(self) -> list[dict]:
        """Raw task dicts for every tick whose start has passed since the last call."""
        now = self.clock()
        if self.started_s is None:
            self.started_s = now
        last = min(len(self.plan.arrivals), int((now - self.started_s) / self.plan.tick_s) + 1)
        out = list(self._tasks(self.next_tick, last, now))
        self.next_tick = max(self.next_tick, last)
        return out

    def _tasks(self, first: int, last: int, now: float) -> Iterator[dict]:
        for tick in range(first, last):
            for cls_, n in enumerate(self.plan.arrivals[tick]):
                for _ in range(int(n)):
                    self.submitted += 1
                    if self._skip:
                        self._skip -= 1
                        continue
                    yield {
                        "id": f"{self.id_prefix}{self.submitted}",
                        "type": self.task_type,
                        "payload": {"tick": tick},
                        **task_fields(cls_, now),
                    }
