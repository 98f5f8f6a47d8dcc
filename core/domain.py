"""The domain model, written once and used by the simulator and the live executors alike.

- :class:`Task` and its lifecycle (:class:`TaskStatus`, :func:`transition`);
- :class:`ClusterSnapshot`: what the cluster did over one control interval, the one record that
  policies, rewards, SLIs and observation features are computed from;
- :class:`SLIStatus` and :func:`sli_status`: the three service level indicators.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.config import SLIConfig
from core.deadlock import check_dependencies
from core.priority import PRIORITY_CLASSES, priority_score

__all__ = [
    "ALLOWED_PRIORS",
    "ALLOWED_TRANSITIONS",
    "PRIORITY_CLASSES",
    "ClusterSnapshot",
    "InvalidTransition",
    "PriorityInputs",
    "SLIStatus",
    "Task",
    "TaskStatus",
    "accept_task_set",
    "sli_status",
    "task_priority",
    "transition",
]


class TaskStatus(str, enum.Enum):
    """Where a task is in its life. Every accepted task is in exactly one of these."""

    WAITING = "waiting"  # accepted, held back until its dependencies have succeeded (no queue entry yet)
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"  # an attempt failed retryably; waiting out the backoff delay
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.SUCCEEDED, TaskStatus.FAILED)


ALLOWED_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    # QUEUED: its last dependency succeeded; FAILED: one failed, or an entry of it was dead-lettered
    TaskStatus.WAITING: frozenset({TaskStatus.QUEUED, TaskStatus.FAILED}),
    # FAILED without running: timed out in the queue, or its entry could not be run (dead letter).
    # SUCCEEDED and RETRYING straight from QUEUED: the durable record does not see the claim. RUNNING
    # is the live queue's status (executors.cluster writes it there, for dashboards): writing it to
    # the store too would cost a transaction per claimed batch and tell recovery nothing, as a
    # claimed entry whose driver dies is delivered again either way. So the store settles an
    # attempt's outcome over QUEUED, and RUNNING is seen only where something writes it.
    TaskStatus.QUEUED: frozenset({TaskStatus.RUNNING, TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.RETRYING}),
    TaskStatus.RUNNING: frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.RETRYING, TaskStatus.QUEUED}),
    TaskStatus.RETRYING: frozenset({TaskStatus.QUEUED, TaskStatus.FAILED}),
    TaskStatus.SUCCEEDED: frozenset(),
    TaskStatus.FAILED: frozenset(),
}
# RUNNING -> QUEUED is redelivery after an executor died mid-task (the attempt does not count).
# RETRYING -> RUNNING is not a step: a retry that comes due is QUEUED again (with its queue entry)
# before anything claims it.

# The same relation read backwards: the statuses a task may be in to move to each status (what a
# store guards its UPDATEs with). Derived, so there is one definition.
ALLOWED_PRIORS: dict[TaskStatus, frozenset[TaskStatus]] = {
    target: frozenset(s for s, nexts in ALLOWED_TRANSITIONS.items() if target in nexts) for target in TaskStatus
}


class InvalidTransition(ValueError):
    pass


def transition(current: TaskStatus, new: TaskStatus) -> TaskStatus:
    """Validate a lifecycle step; terminal states are final."""
    if new not in ALLOWED_TRANSITIONS[current]:
        raise InvalidTransition(f"task cannot go from {current.value} to {new.value}")
    return new


class Task(BaseModel):
    """One unit of work. Validated on construction; unknown fields are refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=128)
    type: str = Field(min_length=1, max_length=64)
    deadline_s: float | None = Field(default=None, description="epoch seconds; None = no deadline")
    cpu: float = Field(default=0.1, gt=0, le=64)
    memory_mb: float = Field(default=64.0, gt=0, le=65536)
    historical_success_rate: float = Field(default=1.0, ge=0, le=1)
    dependencies: tuple[str, ...] = ()
    payload: dict[str, Any] = Field(default_factory=dict)
    tenant: str = Field(default="default", min_length=1, max_length=64)

    @field_validator("deadline_s")
    @classmethod
    def _finite_deadline(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("deadline_s must be a finite number of epoch seconds")
        return v

    @field_validator("dependencies")
    @classmethod
    def _unique_dependencies(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError("dependencies contain duplicates")
        return v


def accept_task_set(tasks: list[Task] | tuple[Task, ...], known: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Check a task set before any of it is accepted: unique ids, known dependencies, no cycles.

    Returns the ids in an order that runs every dependency first. Raises ``ValueError`` (a
    :class:`core.deadlock.DependencyCycleError` naming the cycle, for a cycle) and accepts nothing.
    """
    ids = [t.id for t in tasks]
    seen: set[str] = set()
    for tid in ids:
        if tid in seen:
            raise ValueError(f"task id {tid!r} appears twice in the set")
        seen.add(tid)
    return check_dependencies({t.id: t.dependencies for t in tasks}, known)


class PriorityInputs(NamedTuple):
    """What a task's priority score is computed from (:func:`task_priority`): its deadline, the
    resources it needs and its historical success rate. Small and hashable, for whoever keeps the
    inputs of many tasks (the cluster rescores queued tasks as their deadlines near); a stored task
    whose resources are unknown gets the :class:`Task` model's defaults."""

    deadline_s: float | None = None
    cpu: float = Task.model_fields["cpu"].default
    memory_mb: float = Task.model_fields["memory_mb"].default
    historical_success_rate: float = Task.model_fields["historical_success_rate"].default

    @classmethod
    def of(cls, task: Task) -> PriorityInputs:
        return cls(task.deadline_s, task.cpu, task.memory_mb, task.historical_success_rate)


def task_priority(task: Task | PriorityInputs, now_s: float, cpu_free: float, memory_mb_free: float) -> float:
    """The dynamic priority score of a task right now (see :func:`core.priority.priority_score`)."""
    return priority_score(
        deadline_s=task.deadline_s,
        now_s=now_s,
        cpu_required=task.cpu,
        memory_mb_required=task.memory_mb,
        cpu_free=cpu_free,
        memory_mb_free=memory_mb_free,
        historical_success_rate=task.historical_success_rate,
    )


class ClusterSnapshot(NamedTuple):
    """What the cluster did over one control interval ending at ``time_s``.

    An immutable named tuple (cheap to build: one is made every simulated interval). Counts are over the interval; levels (backlog, running, concurrency) are at its end. The simulator
    fills it from its counters and the live system from its metrics, with the same definitions:

    - ``backlog`` = tasks waiting to run: queued plus waiting out a retry backoff;
    - ``success_rate`` = succeeded / (succeeded + failed) over tasks that ended in the trailing SLI
      window (``slis.success_rate_window_s``, default 5 minutes, like Prometheus' ``increase(..[5m])``),
      1.0 when none ended (no evidence of failure). Per interval, one failure among 60 tasks at night
      would "breach" 99.5%: a rate needs enough tasks behind it to mean anything;
    - processing time = end - arrival of tasks that ended (queueing, retries and service included);
    - ``utilisation`` = busy slot-seconds / serving slot-seconds;
    - ``mean_service_time_s`` = busy slot-seconds per attempt started (the demand per task attempt).
    """

    time_s: float
    interval_s: float
    arrivals: int
    backlog_by_priority: tuple[int, int, int]
    retrying: int
    running: int
    target_concurrency: int
    serving_concurrency: int
    warming_concurrency: int
    succeeded: int
    failed: int
    timed_out: int
    retries: int
    attempts_started: int
    mean_processing_time_s: float
    p90_processing_time_s: float
    p99_processing_time_s: float
    busy_slot_s: float
    provisioned_slot_s: float
    max_backlog: int
    window_succeeded: int  # tasks that succeeded in the trailing SLI window (this interval included)
    window_failed: int

    @property
    def backlog(self) -> int:
        b = self.backlog_by_priority
        return b[0] + b[1] + b[2] + self.retrying

    @property
    def arrival_rate_per_s(self) -> float:
        return self.arrivals / self.interval_s

    @property
    def success_rate(self) -> float:
        ended = self.window_succeeded + self.window_failed
        return self.window_succeeded / ended if ended else 1.0

    @property
    def interval_success_rate(self) -> float:
        ended = self.succeeded + self.failed
        return self.succeeded / ended if ended else 1.0

    @property
    def utilisation(self) -> float:
        serving = self.serving_concurrency * self.interval_s
        return min(1.0, self.busy_slot_s / serving) if serving > 0 else 0.0

    @property
    def mean_service_time_s(self) -> float:
        return self.busy_slot_s / self.attempts_started if self.attempts_started else 0.0


class SLIStatus(NamedTuple):
    success_rate_ok: bool
    processing_time_ok: bool
    backlog_ok: bool

    @property
    def all_ok(self) -> bool:
        return self.success_rate_ok and self.processing_time_ok and self.backlog_ok


class TrailingWindow:
    """Sums of (succeeded, failed) over the trailing ``window_s`` seconds of intervals.

    The one definition of the success-rate window, kept by whoever builds snapshots (the simulator,
    the live metrics adapter). Mutable on purpose: it is adapter state, not policy state.
    """

    __slots__ = ("_items", "failed", "succeeded", "window_s")

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._items: deque[tuple[float, int, int]] = deque()
        self.succeeded = 0
        self.failed = 0

    def add(self, end_s: float, interval_s: float, succeeded: int, failed: int) -> tuple[int, int]:
        """Add an interval ending at ``end_s``; return the window's (succeeded, failed)."""
        items = self._items
        items.append((end_s, succeeded, failed))
        self.succeeded += succeeded
        self.failed += failed
        # keep every interval that ends after (end_s - window_s); the current one always stays
        horizon = end_s - max(self.window_s, interval_s) + 1e-9
        while items[0][0] < horizon:
            _, s, f = items.popleft()
            self.succeeded -= s
            self.failed -= f
        return self.succeeded, self.failed

    def clear(self) -> None:
        self._items.clear()
        self.succeeded = self.failed = 0

    def copy(self) -> TrailingWindow:
        other = TrailingWindow(self.window_s)
        other._items = deque(self._items)
        other.succeeded, other.failed = self.succeeded, self.failed
        return other


def sli_status(snap: ClusterSnapshot, slis: SLIConfig) -> SLIStatus:
    """The three SLIs for one interval. An interval in which no task ended meets the latency SLI."""
    return SLIStatus(
        success_rate_ok=snap.success_rate >= slis.success_rate_min,
        processing_time_ok=snap.mean_processing_time_s <= slis.mean_processing_time_s_max,
        backlog_ok=snap.backlog <= slis.backlog_max,
    )
