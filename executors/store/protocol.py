"""What the cluster needs of a task store: the boundary the driver is written against.

:class:`executors.store.TaskStore` (SQLAlchemy over SQLite or MySQL/MariaDB) is the implementation;
the cluster (:class:`executors.cluster.TaskCluster`, :func:`executors.cluster.accept_submission`)
types its store as :class:`LifecycleStore`, so what it may call is this list, and mypy checks that
``TaskStore`` provides it. Every status change goes through the domain's lifecycle
(:data:`core.domain.ALLOWED_TRANSITIONS`); the methods' contracts are documented on ``TaskStore``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from executors.store.batch import BatchTarget
from executors.store.tasks import AttemptRecord, ClaimView, DeadLetter, TaskRecord


class LifecycleStore(BatchTarget, Protocol):
    """Tasks, their attempts and dead letters, and the batch writer's writes (:class:`BatchTarget`)."""

    def ping(self) -> None: ...

    def insert_tasks(self, tasks: Sequence[TaskRecord]) -> None: ...

    def get_task(self, tenant: str, task_id: str) -> TaskRecord | None: ...

    def claim_view(self, tenant: str, task_ids: Sequence[str]) -> dict[str, ClaimView]: ...

    def next_attempts(self, tenant: str, task_ids: Sequence[str]) -> dict[str, int]: ...

    def statuses(self, tenant: str, task_ids: Iterable[str]) -> dict[str, str]: ...

    def unfinished(self, tenant: str) -> list[TaskRecord]: ...

    def mark_queued(
        self, tenant: str, task_ids: Sequence[str], now_s: float, from_statuses: Sequence[str] = ("retrying", "waiting")
    ) -> set[str]: ...

    def settle(
        self,
        tenant: str,
        attempts: Sequence[AttemptRecord],
        finished: Sequence[tuple[str, str, str | None]],
        retries: Sequence[tuple[str, int, float, str | None]],
        now_s: float,
    ) -> set[str]: ...

    def finish_many(self, tenant: str, items: Sequence[tuple[str, str, str | None]], now_s: float) -> set[str]: ...

    def dead_letter(
        self, tenant: str, letters: Sequence[DeadLetter], fail: Sequence[tuple[str, str]], now_s: float
    ) -> set[str]: ...
