"""The durable record: tasks, every attempt, an append-only audit log, the tuner's decisions and
operator requests, in one SQL database.

One code path (SQLAlchemy Core, :mod:`executors.sql`) for MySQL/MariaDB (``mysql+pymysql://...``)
and SQLite (the embedded default, so the main job runs without servers). The store creates its own
schema. The statements of the task path (thousands of rows a second) are Core statements compiled
once per dialect and run on plain tuples (:class:`executors.sql.Prepared`), which skips most of
SQLAlchemy's per-execution Python work.

Writes survive a dropped connection. Each write runs in one transaction that is retried, with the
shared retry policy (:mod:`core.retry`), when the connection was lost, the server could not be
reached, or the transaction was rolled back for a lock (deadlock, lock wait, SQLite busy). A lost
connection during COMMIT is ambiguous (the commit may or may not have happened), so every write is
idempotent and the retry writes nothing twice (each part says how).

The parts, one responsibility each, and :class:`TaskStore`, the one object callers hold:

- :mod:`~executors.store.base`: the connection, its retried transactions, the schema, the errors;
- :mod:`~executors.store.tasks`: tasks, attempts and dead letters (the cluster's durable steps); a
  status changes only along the domain's task lifecycle (:data:`core.domain.ALLOWED_TRANSITIONS`),
  refused otherwise (:class:`IllegalTransition`);
- :mod:`~executors.store.audit`: the append-only audit log;
- :mod:`~executors.store.decisions`: the tuner's decisions;
- :mod:`~executors.store.control_requests`: operator requests to a running tuner, and its runs;
- :mod:`~executors.store.batch`: :class:`BatchWriter`, which buffers attempts, status updates and
  audit events in front of a store and writes them in batches from a background thread, so the
  database sees a few large transactions per second rather than one per task.
"""

from __future__ import annotations

from executors.store.audit import AuditEvent, AuditLog, audit_table
from executors.store.base import StoreError, StoreUnavailable, metadata
from executors.store.batch import BatchWriter
from executors.store.control_requests import ControlRequests, control_table, tuner_runs_table
from executors.store.decisions import DecisionLog, decisions_table
from executors.store.protocol import LifecycleStore
from executors.store.tasks import (
    ATTEMPT_OUTCOMES,
    TASK_STATUSES,
    TERMINAL,
    AttemptRecord,
    ClaimView,
    DeadLetter,
    IllegalTransition,
    StatusUpdate,
    TaskRecord,
    TaskTables,
    attempts_table,
    dead_letters_table,
    tasks_table,
)

__all__ = [
    "ATTEMPT_OUTCOMES",
    "TASK_STATUSES",
    "TERMINAL",
    "AttemptRecord",
    "AuditEvent",
    "BatchWriter",
    "ClaimView",
    "DeadLetter",
    "IllegalTransition",
    "LifecycleStore",
    "StatusUpdate",
    "StoreError",
    "StoreUnavailable",
    "TaskRecord",
    "TaskStore",
    "attempts_table",
    "audit_table",
    "control_table",
    "dead_letters_table",
    "decisions_table",
    "metadata",
    "tasks_table",
    "tuner_runs_table",
]


class TaskStore(TaskTables, AuditLog, DecisionLog, ControlRequests):
    """Tasks, attempts, the audit log, the tuner's decisions and operator requests in one SQL
    database (MySQL/MariaDB or SQLite).

    Arguments:
        url: a SQLAlchemy URL; ``sqlite:///path.db`` (default ``sqlite:///autotune.db``) or
            ``mysql+pymysql://user:password@host:3306/database``.
        connect_retries: retries of a write (or read) after a lost connection or a lock conflict,
            with the shared exponential backoff (0.05 s base, 2 s cap); 0 disables retrying.
        sleep: called with each backoff delay; tests inject a recorder.
        rng: the jitter draws of the backoff.
    """
