"""The durable record: tasks, every attempt, and an append-only audit log.

One code path (SQLAlchemy Core) for MySQL/MariaDB (``mysql+pymysql://...``) and SQLite (the embedded
default, so the main job runs without servers). The store creates its own schema. Writes survive a
dropped connection: each is retried with the shared retry policy, and each is idempotent (primary
keys; a terminal status is final), so a retry after an ambiguous commit writes nothing twice.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from control.retry import RetryPolicy, retry_delay_s

T = TypeVar("T")
TERMINAL = ("succeeded", "failed")

metadata = sa.MetaData()
tasks_table = sa.Table(
    "tasks", metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("task_id", sa.String(128), primary_key=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("priority", sa.Double, nullable=False),
    sa.Column("deadline_s", sa.Double, nullable=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("dependencies", sa.Text, nullable=False),
    sa.Column("submitted_by", sa.String(64), nullable=False),
    sa.Column("created_s", sa.Double, nullable=False),
    sa.Column("updated_s", sa.Double, nullable=False),
    sa.Column("result", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Index("ix_tasks_tenant_status", "tenant", "status"),
)
attempts_table = sa.Table(
    "attempts", metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("task_id", sa.String(128), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("executor", sa.String(128), nullable=False),
    sa.Column("started_s", sa.Double, nullable=False),
    sa.Column("ended_s", sa.Double, nullable=True),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("result", sa.Text, nullable=True),
)
audit_table = sa.Table(
    "audit_log", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts_s", sa.Double, nullable=False),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("subject", sa.String(128), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Index("ix_audit_tenant", "tenant", "id"),
)


@dataclass(frozen=True)
class TaskRecord:
    tenant: str
    task_id: str
    type: str
    status: str
    priority: float
    deadline_s: float | None
    payload: dict[str, Any]
    dependencies: tuple[str, ...]
    submitted_by: str
    created_s: float
    updated_s: float
    result: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class AttemptRecord:
    tenant: str
    task_id: str
    attempt: int
    executor: str
    started_s: float
    ended_s: float | None
    outcome: str
    error: str | None = None
    result: str | None = None


@dataclass(frozen=True)
class AuditEvent:
    ts_s: float
    tenant: str
    actor: str
    action: str
    subject: str
    detail: dict[str, Any]


class StoreError(RuntimeError):
    """A store operation that failed; the message names the database (password masked)."""


def _disconnect(err: Exception) -> bool:
    return isinstance(err, sa.exc.DBAPIError) and (err.connection_invalidated or isinstance(err, sa.exc.OperationalError))


class TaskStore:
    def __init__(self, url: str = "sqlite:///autotune.db", *, connect_retries: int = 5,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.url = make_url(url)
        self.retry = RetryPolicy(max_retries=connect_retries, base_s=0.05, jitter_s=0.05, cap_s=2.0)
        self._sleep = sleep
        self._rng = random.Random(0)
        kw: dict[str, Any] = {"pool_pre_ping": True, "future": True}
        if self.url.get_backend_name() == "sqlite":
            kw["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine = sa.create_engine(self.url, **kw)
        if self.url.get_backend_name() == "sqlite":
            @sa.event.listens_for(self.engine, "connect")
            def _wal(dbapi_conn, _record):  # concurrent readers while a writer commits
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()

    @property
    def url_masked(self) -> str:
        return self.url.render_as_string(hide_password=True)

    def _with_retry(self, what: str, fn: Callable[[sa.Connection], T]) -> T:
        attempt = 0
        while True:
            try:
                with self.engine.begin() as conn:
                    return fn(conn)
            except StoreError:
                raise
            except sa.exc.SQLAlchemyError as err:
                if not _disconnect(err) or attempt >= self.retry.max_retries:
                    raise StoreError(f"{self.url_masked}: {what} failed: {err.__class__.__name__}: "
                                     f"{str(err).splitlines()[0]}") from None
                self._sleep(retry_delay_s(attempt, self._rng.random(), self.retry))
                attempt += 1

    # -- schema ----------------------------------------------------------------------------------
    def create_schema(self) -> None:
        self._with_retry("create schema", lambda c: metadata.create_all(c))

    def drop_schema(self) -> None:
        self._with_retry("drop schema", lambda c: metadata.drop_all(c))

    # -- tasks -------------------------------------------------------------------------------
    def insert_tasks(self, tasks: Sequence[TaskRecord]) -> None:
        """All or nothing; a task already stored identically (a retried commit) is not an error."""
        if not tasks:
            return
        rows = [_task_row(t) for t in tasks]
        keys = [(t.tenant, t.task_id) for t in tasks]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise StoreError(f"{self.url_masked}: task {dup[1]!r} appears twice in one insert; nothing written")

        def run(conn: sa.Connection) -> None:
            existing = self._existing(conn, keys)
            if existing:
                same = all(existing.get(k) == r for k, r in zip(keys, rows) if k in existing)
                if len(existing) == len(keys) and same:
                    return  # the earlier try committed: idempotent
                tid = next(iter(existing))[1]
                raise StoreError(f"{self.url_masked}: task {tid!r} already exists; nothing written")
            conn.execute(tasks_table.insert(), rows)

        self._with_retry("insert tasks", run)

    def _existing(self, conn: sa.Connection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        out: dict[tuple[str, str], dict] = {}
        by_tenant: dict[str, list[str]] = {}
        for tenant, tid in keys:
            by_tenant.setdefault(tenant, []).append(tid)
        for tenant, ids in by_tenant.items():
            for i in range(0, len(ids), 500):
                q = sa.select(tasks_table).where(tasks_table.c.tenant == tenant,
                                                 tasks_table.c.task_id.in_(ids[i:i + 500]))
                for row in conn.execute(q).mappings():
                    out[(row["tenant"], row["task_id"])] = dict(row)
        return out

    def update_status(self, tenant: str, task_id: str, status: str, now_s: float, *,
                      result: str | None = None, error: str | None = None) -> bool:
        """Set a task's status; a terminal status is final (returns False, changes nothing)."""
        def run(conn: sa.Connection) -> bool:
            values: dict[str, Any] = {"status": status, "updated_s": now_s}
            if result is not None:
                values["result"] = result
            if error is not None:
                values["error"] = error
            q = (tasks_table.update()
                 .where(tasks_table.c.tenant == tenant, tasks_table.c.task_id == task_id,
                        tasks_table.c.status.not_in(TERMINAL))
                 .values(**values))
            return conn.execute(q).rowcount == 1

        return self._with_retry("update status", run)

    def finish_many(self, tenant: str, items: Sequence[tuple[str, str, str | None]], now_s: float) -> set[str]:
        """Write terminal statuses ``(task_id, status, error)`` in one transaction; return the ids that
        changed. A task already terminal is left alone (exactly one terminal record)."""
        if not items:
            return set()

        def run(conn: sa.Connection) -> set[str]:
            ids = [tid for tid, _, _ in items]
            open_ids: set[str] = set()
            for i in range(0, len(ids), 500):
                q = (sa.select(tasks_table.c.task_id)
                     .where(tasks_table.c.tenant == tenant, tasks_table.c.task_id.in_(ids[i:i + 500]),
                            tasks_table.c.status.not_in(TERMINAL))
                     .with_for_update())
                open_ids.update(r[0] for r in conn.execute(q))
            rows, changed = [], set()
            for tid, status, error in items:
                if tid in open_ids and tid not in changed:
                    changed.add(tid)
                    rows.append({"b_tenant": tenant, "b_task_id": tid, "status": status, "updated_s": now_s,
                                 "error": error})
            if rows:
                stmt = (tasks_table.update()
                        .where(tasks_table.c.tenant == sa.bindparam("b_tenant"),
                               tasks_table.c.task_id == sa.bindparam("b_task_id"),
                               # no IN list here: an expanding parameter cannot go with executemany
                               *(tasks_table.c.status != s for s in TERMINAL))
                        .values(status=sa.bindparam("status"), updated_s=sa.bindparam("updated_s"),
                                error=sa.bindparam("error")))
                conn.execute(stmt, rows)
            return changed

        return self._with_retry("finish tasks", run)

    def get_task(self, tenant: str, task_id: str) -> TaskRecord | None:
        def run(conn: sa.Connection) -> TaskRecord | None:
            row = conn.execute(sa.select(tasks_table).where(tasks_table.c.tenant == tenant,
                                                            tasks_table.c.task_id == task_id)).mappings().first()
            return _task_record(row) if row else None

        return self._with_retry("read task", run)

    def tasks_with_status(self, tenant: str, statuses: Iterable[str]) -> list[TaskRecord]:
        statuses = list(statuses)
        return self._with_retry("read tasks", lambda c: [_task_record(r) for r in c.execute(
            sa.select(tasks_table).where(tasks_table.c.tenant == tenant, tasks_table.c.status.in_(statuses))
            .order_by(tasks_table.c.created_s)).mappings()])

    def status_counts(self, tenant: str) -> dict[str, int]:
        q = (sa.select(tasks_table.c.status, sa.func.count()).where(tasks_table.c.tenant == tenant)
             .group_by(tasks_table.c.status))
        return self._with_retry("count tasks", lambda c: {s: int(n) for s, n in c.execute(q)})

    # -- attempts ----------------------------------------------------------------------------
    def record_attempts(self, attempts: Sequence[AttemptRecord]) -> int:
        """Write attempts in one transaction; one already present (redelivery, retried commit) is skipped."""
        if not attempts:
            return 0

        def run(conn: sa.Connection) -> int:
            keys = {(a.tenant, a.task_id, a.attempt) for a in attempts}
            present = set()
            tenants = {a.tenant for a in attempts}
            for tenant in tenants:
                ids = sorted({a.task_id for a in attempts if a.tenant == tenant})
                for i in range(0, len(ids), 500):
                    q = sa.select(attempts_table.c.tenant, attempts_table.c.task_id, attempts_table.c.attempt).where(
                        attempts_table.c.tenant == tenant, attempts_table.c.task_id.in_(ids[i:i + 500]))
                    present.update((t, k, n) for t, k, n in conn.execute(q))
            rows, seen = [], set()
            for a in attempts:
                key = (a.tenant, a.task_id, a.attempt)
                if key in present or key in seen:
                    continue
                seen.add(key)
                rows.append({"tenant": a.tenant, "task_id": a.task_id, "attempt": a.attempt, "executor": a.executor,
                             "started_s": a.started_s, "ended_s": a.ended_s, "outcome": a.outcome,
                             "error": a.error, "result": a.result})
            if rows:
                conn.execute(attempts_table.insert(), rows)
            return len(rows) if keys else 0

        return self._with_retry("record attempts", run)

    def next_attempts(self, tenant: str, task_ids: Sequence[str]) -> dict[str, int]:
        """For each task, the number its next attempt gets (1 + the highest recorded; 0 if none)."""
        ids = list(task_ids)

        def run(conn: sa.Connection) -> dict[str, int]:
            out = dict.fromkeys(ids, 0)
            for i in range(0, len(ids), 500):
                q = (sa.select(attempts_table.c.task_id, sa.func.max(attempts_table.c.attempt))
                     .where(attempts_table.c.tenant == tenant, attempts_table.c.task_id.in_(ids[i:i + 500]))
                     .group_by(attempts_table.c.task_id))
                out.update({tid: int(n) + 1 for tid, n in conn.execute(q)})
            return out

        return self._with_retry("read attempt numbers", run)

    def attempts_for(self, tenant: str, task_id: str) -> list[AttemptRecord]:
        q = (sa.select(attempts_table).where(attempts_table.c.tenant == tenant, attempts_table.c.task_id == task_id)
             .order_by(attempts_table.c.attempt))
        return self._with_retry("read attempts", lambda c: [AttemptRecord(**dict(r)) for r in c.execute(q).mappings()])

    # -- audit -------------------------------------------------------------------------------
    def append_audit(self, events: Sequence[AuditEvent]) -> None:
        if not events:
            return
        rows = [{"ts_s": e.ts_s, "tenant": e.tenant, "actor": e.actor, "action": e.action, "subject": e.subject,
                 "detail": json.dumps(e.detail, sort_keys=True)} for e in events]
        self._with_retry("append audit", lambda c: c.execute(audit_table.insert(), rows))

    def audit(self, tenant: str, limit: int = 100) -> list[AuditEvent]:
        q = (sa.select(audit_table).where(audit_table.c.tenant == tenant)
             .order_by(audit_table.c.id.desc()).limit(limit))
        return self._with_retry("read audit", lambda c: [
            AuditEvent(r["ts_s"], r["tenant"], r["actor"], r["action"], r["subject"], json.loads(r["detail"]))
            for r in c.execute(q).mappings()])

    def close(self) -> None:
        self.engine.dispose()


def _task_row(t: TaskRecord) -> dict[str, Any]:
    return {"tenant": t.tenant, "task_id": t.task_id, "type": t.type, "status": t.status, "priority": t.priority,
            "deadline_s": t.deadline_s, "payload": json.dumps(t.payload, sort_keys=True),
            "dependencies": json.dumps(list(t.dependencies)), "submitted_by": t.submitted_by,
            "created_s": t.created_s, "updated_s": t.updated_s, "result": t.result, "error": t.error}


def _task_record(row: Any) -> TaskRecord:
    d = dict(row)
    d["payload"] = json.loads(d["payload"])
    d["dependencies"] = tuple(json.loads(d["dependencies"]))
    return TaskRecord(**d)
