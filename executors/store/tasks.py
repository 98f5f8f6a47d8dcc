"""Tasks, their attempts, and the dead letters of their queue entries: the cluster's durable steps.

Every write is idempotent, so a retry after an ambiguous commit (see :class:`StoreBase`) writes
nothing twice:

- tasks and attempts by their primary keys (a task batch found already stored, identically, is a
  success; an attempt already stored is skipped). A first try just inserts; only a key conflict
  (or a retry) makes it look for what is stored, in a new transaction;
- a terminal status is final, and a retry that finds exactly the values it meant to write reports
  the update as its own.

A status changes only along the task lifecycle of the domain model
(:data:`core.domain.ALLOWED_TRANSITIONS`): every UPDATE that sets a status is guarded by
``status IN (<the statuses the target may follow>)`` (:func:`priors`, read from
:data:`core.domain.ALLOWED_PRIORS`), so the database itself refuses any other step, whatever runs
concurrently. What a refusal does depends on the call: :meth:`TaskTables.update_status` and
:meth:`TaskTables.update_statuses` raise :class:`IllegalTransition`; the cluster's batch steps
(:meth:`~TaskTables.settle`, :meth:`~TaskTables.finish_many`, :meth:`~TaskTables.mark_queued`,
:meth:`~TaskTables.dead_letter`) mean "if it still may", so they leave such a task alone and do
not count it among the ids they changed (a stale duplicate delivery is not an error). A write of a
terminal status over a terminal one, or of the status a task already has, changes nothing and is
never an error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from core.domain import ALLOWED_PRIORS, ALLOWED_TRANSITIONS, InvalidTransition, TaskStatus
from executors.sql import Prepared, PreparedIn, chunks, prepared_insert
from executors.store.base import Recheck, StoreBase, StoreError, metadata, sorted_json

log = logging.getLogger(__name__)

# core.domain.TaskStatus as the strings the rows hold: waiting, queued, running, retrying, succeeded, failed
TASK_STATUSES = tuple(s.value for s in TaskStatus)
TERMINAL = tuple(s.value for s in TaskStatus if s.terminal)
ATTEMPT_OUTCOMES = ("succeeded", "failed", "retrying", "lost")
_PRIORS = {target.value: tuple(sorted(p.value for p in ps)) for target, ps in ALLOWED_PRIORS.items()}


def priors(status: str) -> tuple[str, ...]:
    """The statuses a task may be in to move to ``status`` (:data:`core.domain.ALLOWED_PRIORS`)."""
    return _PRIORS[status]


class IllegalTransition(InvalidTransition):
    """The store refused a status change the task lifecycle (:data:`core.domain.ALLOWED_TRANSITIONS`)
    does not allow; nothing of the call was written. Names the task, its status and the one asked
    for."""

    def __init__(self, tenant: str, task_id: str, current: str, requested: str) -> None:
        self.tenant, self.task_id, self.current, self.requested = tenant, task_id, current, requested
        nexts = sorted(s.value for s in ALLOWED_TRANSITIONS[TaskStatus(current)])
        super().__init__(
            f"task {task_id!r} (tenant {tenant!r}) is {current} and cannot become {requested}: "
            f"the task lifecycle allows {current} -> {', '.join(nexts) or 'nothing (it is final)'}"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (Ray, multiprocessing) with its fields
        return (type(self), (self.tenant, self.task_id, self.current, self.requested))


tasks_table = sa.Table(
    "tasks",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("task_id", sa.String(128), primary_key=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("priority", sa.Double, nullable=False),
    sa.Column("deadline_s", sa.Double, nullable=True),
    sa.Column("payload", sa.Text, nullable=False),  # JSON object
    sa.Column("dependencies", sa.Text, nullable=False),  # JSON list of task ids
    sa.Column("submitted_by", sa.String(64), nullable=False),
    sa.Column("created_s", sa.Double, nullable=False),  # DOUBLE, not FLOAT: epoch seconds keep ms
    sa.Column("updated_s", sa.Double, nullable=False),
    sa.Column("result", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    # What a new driver needs to continue (added after the first release, hence nullable: see
    # create_schema). attempt: the least number the task's next attempt takes (raised when a retry is
    # scheduled); retry_at_s: when a retrying task is due; run_id: the run that submitted it.
    sa.Column("attempt", sa.Integer, nullable=True),
    sa.Column("retry_at_s", sa.Double, nullable=True),
    sa.Column("run_id", sa.String(64), nullable=True),
    sa.Index("ix_tasks_tenant_status", "tenant", "status"),
    sa.Index("ix_tasks_run", "run_id"),
)
attempts_table = sa.Table(
    "attempts",
    metadata,
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

dead_letters_table = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts_s", sa.Double, nullable=False),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("task_id", sa.String(128), nullable=False),
    sa.Column("message_id", sa.String(64), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("entry", sa.Text, nullable=False),  # the queue entry as it was read (JSON, or its raw text)
    sa.Index("ix_dead_letters_tenant", "tenant", "id"),
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
    attempt: int = 0
    retry_at_s: float | None = None
    run_id: str | None = None


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
class StatusUpdate:
    """One buffered :meth:`TaskStore.update_status` call (see :meth:`TaskStore.update_statuses`)."""

    tenant: str
    task_id: str
    status: str
    now_s: float
    result: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class ClaimView:
    """What the cluster reads of a claimed task before running it: the store's record is the one
    authority on its type, attempt counter, payload and status (never the queue entry)."""

    task_id: str
    type: str
    status: str
    attempt: int
    payload: dict[str, Any]
    deadline_s: float | None
    created_s: float


@dataclass(frozen=True)
class DeadLetter:
    """A queue entry that could not be run as it was (undecodable, no such task, unknown type)."""

    ts_s: float
    tenant: str
    task_id: str
    message_id: str
    reason: str
    entry: str


class TaskTables(StoreBase):
    """Tasks, attempts and dead letters (a part of :class:`executors.store.TaskStore`)."""

    # -- tasks -------------------------------------------------------------------------------
    def insert_tasks(self, tasks: Sequence[TaskRecord]) -> None:
        """Insert a batch in one transaction: all or nothing.

        A task id twice in the batch, or one already stored, raises :class:`StoreError` naming it,
        and nothing of the batch is written. The exception: a batch found already stored in full and
        identically (a retry whose earlier commit went through) is a success.
        """
        if not tasks:
            return
        rows = [_task_values(t) for t in tasks]
        keys = [(t.tenant, t.task_id) for t in tasks]
        if len(set(keys)) != len(keys):
            seen: set[tuple[str, str]] = set()
            for key in keys:
                if key in seen:
                    raise StoreError(
                        f"{self.url_masked}: task {key[1]!r} (tenant {key[0]!r}) appears twice "
                        f"in one insert; nothing written"
                    )
                seen.add(key)
        careful = [False]

        def run(conn: sa.Connection, retrying: bool) -> None:
            if not (retrying or careful[0]):
                # new tasks, the usual case: just the INSERT. A key conflict rolls it back, and the
                # careful way below finds which task it was, or that the batch is stored already
                try:
                    _INSERT_TASK.many(conn, rows)
                except sa.exc.IntegrityError:
                    careful[0] = True
                    raise Recheck() from None
                return
            existing = _rows_by_key(conn, tasks_table, keys)
            if existing:
                if len(existing) == len(keys) and all(
                    tuple(existing[k][c] for c in _TASK_COLUMNS) == r for k, r in zip(keys, rows, strict=True)
                ):
                    return  # stored already, identically: an earlier try committed
                tenant, tid = next(k for k in keys if k in existing)
                raise StoreError(f"{self.url_masked}: task {tid!r} (tenant {tenant!r}) already exists; nothing written")
            _INSERT_TASK.many(conn, rows)

        self._with_retry("insert tasks", run, conflicts_retry=True)

    def update_status(
        self,
        tenant: str,
        task_id: str,
        status: str,
        now_s: float,
        *,
        result: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Set a task's status (and result or error, if given); True when this call made the change.

        A terminal status (succeeded, failed) is final: if the task is already terminal, or does
        not exist, this returns False and changes nothing, so each task has exactly one terminal
        record. A write of the status the task has already (a duplicate) is False too. Any other
        change the task lifecycle does not allow (``waiting`` to ``running``, ``retrying`` to
        ``succeeded``, ...) raises :class:`IllegalTransition` and changes nothing.
        """
        check_status(status)
        values: dict[str, Any] = {"status": status, "updated_s": now_s}
        if result is not None:
            values["result"] = result
        if error is not None:
            values["error"] = error

        def run(conn: sa.Connection, retrying: bool) -> bool:
            c = tasks_table.c
            q = (
                tasks_table.update()
                .where(c.tenant == tenant, c.task_id == task_id, _may_become(status))
                .values(**values)
            )
            # MySQL reports matched rows (SQLAlchemy sets CLIENT_FOUND_ROWS), SQLite changed rows:
            # both 1 when the task was found in a status that may become this one.
            if conn.execute(q).rowcount == 1:
                return True
            row = (
                conn.execute(
                    sa.select(*(c[k] for k in values)).where(c.tenant == tenant, c.task_id == task_id).with_for_update()
                )
                .mappings()
                .first()
            )
            if row is None:
                return False
            if retrying and dict(row) == values:
                return True  # an earlier try committed this very update before the connection dropped
            current = row["status"]
            if current in TERMINAL or current == status:
                return False
            raise IllegalTransition(tenant, task_id, current, status)

        return self._with_retry("update status", run)

    def update_statuses(
        self, updates: Sequence[StatusUpdate], *, skip_illegal: bool = False
    ) -> list[IllegalTransition]:
        """Apply many :meth:`update_status` calls, in order, in one transaction (one executemany).

        The same rules hold (a terminal status is final; a duplicate status changes nothing; a
        missing result or error leaves the stored one), but which updates took effect is not
        reported: use :meth:`update_status` or :meth:`finish_many` when the caller acts on that. An
        update the task lifecycle does not allow raises :class:`IllegalTransition` and nothing of
        the batch is written; with ``skip_illegal`` such updates are left out instead, the rest
        written, and they are returned (what :class:`~executors.store.BatchWriter` does: one bad
        update must not block the buffer behind it).
        """
        if not updates:
            return []
        for u in updates:
            check_status(u.status)
        rows = [(u.status, float(u.now_s), u.result, u.error, u.tenant, u.task_id) for u in updates]
        careful = [False]

        def run(conn: sa.Connection, retrying: bool) -> list[IllegalTransition]:
            if not (retrying or careful[0]):
                # the usual case, every update a step the task may take: the executemany alone. Fewer
                # rows matched (a terminal task, a duplicate, an illegal step) rolls it back, and the
                # careful way reads the tasks first and works out which updates apply, in order.
                if _UPDATE_STATUS.many(conn, rows).rowcount == len(rows):
                    return []
                careful[0] = True
                raise Recheck()
            todo, refused = _statuses_to_apply(conn, updates, retrying)
            if refused and not skip_illegal:
                raise refused[0]
            if todo:
                _UPDATE_STATUS.many(conn, [rows[i] for i in todo])
            return refused

        return self._with_retry("update statuses", run)

    def finish_many(self, tenant: str, items: Sequence[tuple[str, str, str | None]], now_s: float) -> set[str]:
        """Write terminal statuses ``(task_id, status, error)`` in one transaction; return the ids
        that changed. A task already terminal is left alone (exactly one terminal record); of two
        items for one task in the batch, the first wins. A task whose status may not become the
        one given (``succeeded`` over ``waiting`` or ``retrying``: it is not running) is left alone
        too, not counted, and logged."""
        if not items:
            return set()
        first = _first_terminal(items)
        now_s = float(now_s)
        careful = [False]

        def run(conn: sa.Connection, retrying: bool) -> set[str]:
            return _finish_tx(conn, tenant, first, now_s, retrying, careful)

        return self._with_retry("finish tasks", run)

    # -- the cluster's durable steps --------------------------------------------------------
    def settle(
        self,
        tenant: str,
        attempts: Sequence[AttemptRecord],
        finished: Sequence[tuple[str, str, str | None]],
        retries: Sequence[tuple[str, int, float, str | None]],
        now_s: float,
    ) -> set[str]:
        """Settle a batch of attempt outcomes in ONE transaction, before their queue entries are
        acknowledged: the attempt rows, the terminal statuses ``(task_id, status, error)`` and the
        retries ``(task_id, next_attempt, due_s, error)`` (status ``retrying``, the attempt counter
        raised, the due time kept). Returns the ids whose terminal status this call wrote.

        One transaction, so a crash leaves either all of it or none: a task never has a terminal
        attempt row without its terminal status (the redelivered entry then finds it finished and
        is dropped), and a scheduled retry is never only in the driver's memory. The same rules as
        :meth:`record_attempts` (an attempt already stored is skipped) and :meth:`finish_many`
        (terminal is final, the first of two wins); a retry of a task that may not become
        ``retrying`` (already terminal, or retrying already) changes nothing."""
        for a in attempts:
            if a.outcome not in ATTEMPT_OUTCOMES:
                raise ValueError(f"attempt outcome must be one of {ATTEMPT_OUTCOMES}, got {a.outcome!r}")
            if a.tenant != tenant:
                raise ValueError(f"settle: attempt of task {a.task_id!r} is tenant {a.tenant!r}'s, not {tenant!r}'s")
        first = _first_terminal(finished) if finished else {}
        rows: list[tuple] = []
        unique: set[tuple[str, str, int]] = set()
        for a in attempts:
            key = (a.tenant, a.task_id, a.attempt)
            if key not in unique:
                unique.add(key)
                rows.append(_attempt_values(a))
        now_s = float(now_s)
        retry_rows = [(int(n), float(due), err, now_s, tenant, tid) for tid, n, due, err in retries if tid not in first]
        careful = [False]

        def run(conn: sa.Connection, retrying: bool) -> set[str]:
            if rows:
                if not (retrying or careful[0]):
                    try:
                        _INSERT_ATTEMPT.many(conn, rows)
                    except sa.exc.IntegrityError:
                        careful[0] = True
                        raise Recheck() from None
                else:
                    present = _attempt_keys(conn, attempts)
                    todo = [r for r in rows if (r[0], r[1], r[2]) not in present]
                    if todo:
                        _INSERT_ATTEMPT.many(conn, todo)
            changed = _finish_tx(conn, tenant, first, now_s, retrying, careful) if first else set()
            if retry_rows:
                _SCHEDULE_RETRY.many(conn, retry_rows)  # idempotent: the same values again
            return changed

        return self._with_retry("settle attempts", run, conflicts_retry=True)

    def claim_view(self, tenant: str, task_ids: Sequence[str]) -> dict[str, ClaimView]:
        """The stored record of each claimed task that exists (one read per 500 ids)."""
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return {}

        def run(conn: sa.Connection, _retrying: bool) -> dict[str, ClaimView]:
            out: dict[str, ClaimView] = {}
            loads = json.loads
            for chunk in chunks(ids):
                for tid, ttype, status, attempt, payload, deadline, created in _CLAIM_VIEW.one(conn, (tenant,), chunk):
                    out[tid] = ClaimView(tid, ttype, status, int(attempt or 0), loads(payload), deadline, created)
            return out

        return self._with_retry("read claimed tasks", run)

    def mark_queued(
        self, tenant: str, task_ids: Sequence[str], now_s: float, from_statuses: Sequence[str] = ("retrying", "waiting")
    ) -> set[str]:
        """Move tasks in ``from_statuses`` to ``queued`` (a retry came due, or the last dependency
        succeeded), BEFORE they are enqueued: the store is written first, so a crash in between
        leaves a queued task without an entry, which recovery enqueues, never an entry the store
        does not know of. Returns the ids moved (a task in another status is left alone). A status
        in ``from_statuses`` that may not become ``queued`` raises :class:`~core.domain.InvalidTransition`."""
        for st in from_statuses:
            check_status(st)
            if st not in priors("queued"):
                raise InvalidTransition(
                    f"mark_queued: a task cannot go from {st} to queued (allowed from: {', '.join(priors('queued'))})"
                )
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return set()
        from_statuses = tuple(from_statuses)
        now_s = float(now_s)
        c = tasks_table.c

        def run(conn: sa.Connection, retrying: bool) -> set[str]:
            moved: list[str] = []
            ours: set[str] = set()
            for chunk in chunks(ids):
                q = (
                    sa.select(c.task_id, c.status, c.updated_s)
                    .where(c.tenant == tenant, c.task_id.in_(chunk))
                    .with_for_update()
                )
                for tid, st, up in conn.execute(q):
                    if st in from_statuses:
                        moved.append(tid)
                    elif retrying and st == "queued" and up == now_s:
                        ours.add(tid)  # an earlier try committed before the connection dropped
            for chunk in chunks(moved):
                conn.execute(
                    tasks_table.update()
                    .where(c.tenant == tenant, c.task_id.in_(chunk), c.status.in_(from_statuses))
                    .values(status="queued", retry_at_s=None, updated_s=now_s)
                )
            return set(moved) | ours

        return self._with_retry("mark tasks queued", run)

    def statuses(self, tenant: str, task_ids: Iterable[str]) -> dict[str, str]:
        """The status of each of ``task_ids`` that exists."""
        ids = list(dict.fromkeys(task_ids))
        c = tasks_table.c

        def run(conn: sa.Connection, _retrying: bool) -> dict[str, str]:
            out: dict[str, str] = {}
            for chunk in chunks(ids):
                out.update(
                    conn.execute(sa.select(c.task_id, c.status).where(c.tenant == tenant, c.task_id.in_(chunk))).all()
                )
            return out

        return self._with_retry("read statuses", run) if ids else {}

    def unfinished(self, tenant: str) -> list[TaskRecord]:
        """Every task of ``tenant`` not yet terminal, oldest first: what a new driver continues."""
        return self.tasks_with_status(tenant, [s for s in TASK_STATUSES if s not in TERMINAL])

    def tenants_with_unfinished(self) -> list[str]:
        """The tenants that have tasks not yet terminal."""
        c = tasks_table.c
        q = sa.select(c.tenant).where(c.status.not_in(list(TERMINAL))).group_by(c.tenant).order_by(c.tenant)
        return self._with_retry("read tenants", lambda conn, _r: [t for (t,) in conn.execute(q)])

    # -- dead letters ------------------------------------------------------------------------
    def dead_letter(
        self, tenant: str, letters: Sequence[DeadLetter], fail: Sequence[tuple[str, str]], now_s: float
    ) -> set[str]:
        """Keep queue entries that could not be run (with the reason) and fail their tasks
        ``(task_id, error)`` where the store has them, in one transaction; returns the ids failed
        by this call. A retry after an ambiguous commit does not keep a letter twice."""
        rows = [(float(d.ts_s), d.tenant, d.task_id, str(d.message_id), d.reason, d.entry) for d in letters]
        first = _first_terminal([(tid, "failed", err) for tid, err in fail])
        now_s = float(now_s)
        careful = [False]
        c = dead_letters_table.c

        def run(conn: sa.Connection, retrying: bool) -> set[str]:
            todo = rows
            if retrying:
                stored = {
                    tuple(r)
                    for r in conn.execute(
                        sa.select(c.ts_s, c.tenant, c.task_id, c.message_id, c.reason, c.entry).where(
                            c.tenant == tenant, c.message_id.in_([r[3] for r in rows] or [""])
                        )
                    )
                }
                todo = [r for r in rows if r not in stored]
            if todo:
                conn.execute(
                    dead_letters_table.insert(),
                    [dict(zip(("ts_s", "tenant", "task_id", "message_id", "reason", "entry"), r)) for r in todo],
                )
            return _finish_tx(conn, tenant, first, now_s, True, careful) if first else set()

        return self._with_retry("dead-letter entries", run)

    def dead_letters(self, tenant: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Dead-lettered entries, newest first (of one tenant, or all)."""
        c = dead_letters_table.c
        q = sa.select(c.ts_s, c.tenant, c.task_id, c.message_id, c.reason, c.entry).order_by(c.id.desc()).limit(limit)
        if tenant is not None:
            q = q.where(c.tenant == tenant)
        return self._with_retry("read dead letters", lambda conn, _r: [DeadLetter(*r) for r in conn.execute(q)])

    def get_task(self, tenant: str, task_id: str) -> TaskRecord | None:
        q = sa.select(tasks_table).where(tasks_table.c.tenant == tenant, tasks_table.c.task_id == task_id)

        def run(conn: sa.Connection, _retrying: bool) -> TaskRecord | None:
            row = conn.execute(q).mappings().first()
            return task_record(row) if row else None

        return self._with_retry("read task", run)

    def tasks_with_status(self, tenant: str, statuses: Iterable[str]) -> list[TaskRecord]:
        """A tenant's tasks in the given statuses, oldest first (to rebuild a queue Redis lost)."""
        statuses = list(statuses)
        for s in statuses:
            check_status(s)
        q = (
            sa.select(tasks_table)
            .where(tasks_table.c.tenant == tenant, tasks_table.c.status.in_(statuses))
            .order_by(tasks_table.c.created_s, tasks_table.c.task_id)
        )
        return self._with_retry("read tasks", lambda c, _r: [task_record(r) for r in c.execute(q).mappings()])

    def status_counts(self, tenant: str, run_id: str | None = None) -> dict[str, int]:
        """Tasks per status of ``tenant`` (only those submitted by run ``run_id``, if given)."""
        q = (
            sa.select(tasks_table.c.status, sa.func.count())
            .where(tasks_table.c.tenant == tenant)
            .group_by(tasks_table.c.status)
        )
        if run_id is not None:
            q = q.where(tasks_table.c.run_id == run_id)
        return self._with_retry("count tasks", lambda c, _r: {s: int(n) for s, n in c.execute(q)})

    # -- attempts ----------------------------------------------------------------------------
    def record_attempts(self, attempts: Sequence[AttemptRecord]) -> int:
        """Write attempts in one transaction (one executemany); returns the rows this call wrote.

        An attempt already stored, or twice in the batch (a redelivery, a retried commit), is
        skipped, not an error: the first record of an attempt is the one kept.
        """
        if not attempts:
            return 0
        for a in attempts:
            if a.outcome not in ATTEMPT_OUTCOMES:
                raise ValueError(f"attempt outcome must be one of {ATTEMPT_OUTCOMES}, got {a.outcome!r}")

        rows: list[tuple] = []
        unique: set[tuple[str, str, int]] = set()
        for a in attempts:  # twice in the batch: the first record is the one kept
            key = (a.tenant, a.task_id, a.attempt)
            if key not in unique:
                unique.add(key)
                rows.append(_attempt_values(a))
        planned: list[set[tuple[str, str, int]]] = []  # the keys the first try set out to write
        careful = [False]

        def run(conn: sa.Connection, retrying: bool) -> int:
            if not (retrying or careful[0]):
                # new attempts, the usual case: just the INSERT; a key conflict (a redelivery, a
                # rebuilt queue) rolls it back and the careful way skips what is stored
                planned[:] = [unique]
                try:
                    _INSERT_ATTEMPT.many(conn, rows)
                except sa.exc.IntegrityError:
                    careful[0] = True
                    planned.clear()
                    raise Recheck() from None
                return len(rows)
            present = _attempt_keys(conn, attempts)
            # after an ambiguous commit, what the first try meant to write and is now there was ours
            ours = len(planned[0] & present) if retrying and planned else 0
            todo = []
            for row in rows:
                key = (row[0], row[1], row[2])
                if key not in present:
                    present.add(key)
                    todo.append(row)
            if not planned:
                planned.append({(r[0], r[1], r[2]) for r in todo})
            if todo:
                _INSERT_ATTEMPT.many(conn, todo)
            return len(todo) + ours

        return self._with_retry("record attempts", run, conflicts_retry=True)

    def next_attempts(self, tenant: str, task_ids: Sequence[str]) -> dict[str, int]:
        """For each task, the number its next attempt gets (1 + the highest recorded; 0 if none)."""
        ids = list(task_ids)

        def run(conn: sa.Connection, _retrying: bool) -> dict[str, int]:
            out = dict.fromkeys(ids, 0)
            for chunk in chunks(ids):
                q = (
                    sa.select(attempts_table.c.task_id, sa.func.max(attempts_table.c.attempt))
                    .where(attempts_table.c.tenant == tenant, attempts_table.c.task_id.in_(chunk))
                    .group_by(attempts_table.c.task_id)
                )
                out.update({tid: int(n) + 1 for tid, n in conn.execute(q)})
            return out

        return self._with_retry("read attempt numbers", run)

    def all_attempts(self, tenant: str) -> list[AttemptRecord]:
        """Every attempt row of ``tenant`` (for audits and the fault tests: not for the loop)."""
        q = (
            sa.select(attempts_table)
            .where(attempts_table.c.tenant == tenant)
            .order_by(attempts_table.c.task_id, attempts_table.c.attempt)
        )
        return self._with_retry(
            "read attempts", lambda c, _r: [AttemptRecord(**dict(r)) for r in c.execute(q).mappings()]
        )

    def attempts_for(self, tenant: str, task_id: str) -> list[AttemptRecord]:
        q = (
            sa.select(attempts_table)
            .where(attempts_table.c.tenant == tenant, attempts_table.c.task_id == task_id)
            .order_by(attempts_table.c.attempt)
        )
        return self._with_retry(
            "read attempts",
            lambda c, _r: [AttemptRecord(**dict(r)) for r in c.execute(q).mappings()],
        )


# -- helpers ---------------------------------------------------------------------------------------
def check_status(status: str) -> None:
    if status not in TASK_STATUSES:
        raise ValueError(f"task status must be one of {TASK_STATUSES}, got {status!r}")


def _first_terminal(items: Sequence[tuple[str, str, str | None]]) -> dict[str, tuple[str, str | None]]:
    """``{task_id: (status, error)}``, the first item of each task; every status terminal."""
    first: dict[str, tuple[str, str | None]] = {}
    for tid, status, error in items:
        if status not in TERMINAL:
            raise ValueError(f"terminal status must be one of {TERMINAL}, got {status!r}")
        first.setdefault(tid, (status, error))
    return first


def _finish_tx(
    conn: sa.Connection,
    tenant: str,
    first: dict[str, tuple[str, str | None]],
    now_s: float,
    retrying: bool,
    careful: list[bool],
) -> set[str]:
    """Terminal statuses inside a transaction; the ids this transaction changed (see
    :meth:`TaskStore.finish_many`). Raises :class:`Recheck` (the caller's transaction rolls back
    and is redone with ``careful[0]`` set) when the fast way finds a task terminal or missing."""
    if not (retrying or careful[0]):
        # the usual case, every task in a status that may end so: the UPDATEs alone. Each reports
        # the rows it changed (MySQL: matched, with the CLIENT_FOUND_ROWS flag SQLAlchemy sets); all
        # of them means every task changed. Fewer (a task already terminal, missing, or in a status
        # that may not end so) rolls back, and the careful way reads the tasks first.
        fast: dict[tuple[str, str | None], list[str]] = {}
        for tid, (status, error) in first.items():
            fast.setdefault((status, error), []).append(tid)
        for (status, error), tids in fast.items():
            for chunk in chunks(tids):
                if _FINISH_IN[status].one(conn, (now_s, error, tenant), chunk).rowcount != len(chunk):
                    careful[0] = True
                    raise Recheck()
        return set(first)
    current: dict[str, tuple[str, float, str | None]] = {}
    for chunk in chunks(list(first)):
        for tid, st, up, err in _SELECT_FOR_FINISH.one(conn, (tenant,), chunk).all():
            current[tid] = (st, up, err)
    changed: set[str] = set()
    # one UPDATE ... IN (...) per outcome and error (most batches: one, "succeeded"), not one
    # execution per task
    groups: dict[tuple[str, str | None], list[str]] = {}
    for tid, (status, error) in first.items():
        cur = current.get(tid)
        if cur is None:
            continue
        if cur[0] in priors(status):
            changed.add(tid)
            groups.setdefault((status, error), []).append(tid)
        elif retrying and cur == (status, now_s, error):
            changed.add(tid)  # written by an earlier try whose commit went through
        elif cur[0] not in TERMINAL:
            log.warning(
                "tenant %s: task %r is %s and cannot become %s (a stale attempt?): left %s",
                tenant,
                tid,
                cur[0],
                status,
                cur[0],
            )
    for (status, error), tids in groups.items():
        for chunk in chunks(tids):
            _FINISH_IN[status].one(conn, (now_s, error, tenant), chunk)
    return changed


def _statuses_to_apply(
    conn: sa.Connection, updates: Sequence[StatusUpdate], retrying: bool
) -> tuple[list[int], list[IllegalTransition]]:
    """Which of ``updates`` (in order) take effect on the tasks as stored now, by their positions,
    and the ones the task lifecycle refuses (see :meth:`TaskTables.update_statuses`). A task
    missing, terminal, or given the status it has already is skipped. After an ambiguous commit
    (``retrying``), a task found with the status and time of its last update in the batch took the
    whole batch's updates then, and is skipped."""
    c = tasks_table.c
    by_tenant: dict[str, set[str]] = {}
    for u in updates:
        by_tenant.setdefault(u.tenant, set()).add(u.task_id)
    state: dict[tuple[str, str], tuple[str, float]] = {}
    for tenant, tids in by_tenant.items():
        for chunk in chunks(sorted(tids)):
            q = (
                sa.select(c.task_id, c.status, c.updated_s)
                .where(c.tenant == tenant, c.task_id.in_(chunk))
                .with_for_update()
            )
            state.update({(tenant, tid): (st, up) for tid, st, up in conn.execute(q)})
    committed: set[tuple[str, str]] = set()
    if retrying:
        last = {(u.tenant, u.task_id): (u.status, float(u.now_s)) for u in updates}
        committed = {key for key, final in last.items() if state.get(key) == final}
    todo: list[int] = []
    refused: list[IllegalTransition] = []
    for i, u in enumerate(updates):
        key = (u.tenant, u.task_id)
        found = state.get(key)
        if found is None or key in committed:
            continue
        current = found[0]
        if current in TERMINAL or current == u.status:
            continue
        if current in priors(u.status):
            todo.append(i)
            state[key] = (u.status, float(u.now_s))
        else:
            refused.append(IllegalTransition(u.tenant, u.task_id, current, u.status))
    return todo, refused


def _rows_by_key(
    conn: sa.Connection, table: sa.Table, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """The stored rows of ``table`` among ``(tenant, task_id)`` keys, as dicts."""
    by_tenant: dict[str, list[str]] = {}
    for tenant, tid in keys:
        by_tenant.setdefault(tenant, []).append(tid)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for tenant, ids in by_tenant.items():
        for chunk in chunks(ids):
            q = sa.select(table).where(table.c.tenant == tenant, table.c.task_id.in_(chunk))
            for row in conn.execute(q).mappings():
                out[(row["tenant"], row["task_id"])] = dict(row)
    return out


def _attempt_keys(conn: sa.Connection, attempts: Sequence[AttemptRecord]) -> set[tuple[str, str, int]]:
    """The (tenant, task_id, attempt) keys already stored for the tasks of ``attempts``."""
    by_tenant: dict[str, set[str]] = {}
    for a in attempts:
        by_tenant.setdefault(a.tenant, set()).add(a.task_id)
    present: set[tuple[str, str, int]] = set()
    c = attempts_table.c
    for tenant, ids in by_tenant.items():
        for chunk in chunks(sorted(ids)):
            q = sa.select(c.tenant, c.task_id, c.attempt).where(c.tenant == tenant, c.task_id.in_(chunk))
            present.update((t, k, int(n)) for t, k, n in conn.execute(q))
    return present


def _task_values(t: TaskRecord) -> tuple:
    """A task's row in ``_TASK_COLUMNS`` order, as the DBAPI takes it."""
    return (
        t.tenant,
        t.task_id,
        t.type,
        t.status,
        float(t.priority),
        None if t.deadline_s is None else float(t.deadline_s),
        sorted_json(t.payload),
        json.dumps(list(t.dependencies)) if t.dependencies else "[]",
        t.submitted_by,
        float(t.created_s),
        float(t.updated_s),
        t.result,
        t.error,
        int(t.attempt),
        None if t.retry_at_s is None else float(t.retry_at_s),
        t.run_id,
    )


def _attempt_values(a: AttemptRecord) -> tuple:
    """An attempt's row in ``_ATTEMPT_COLUMNS`` order."""
    return (
        a.tenant,
        a.task_id,
        int(a.attempt),
        a.executor,
        float(a.started_s),
        None if a.ended_s is None else float(a.ended_s),
        a.outcome,
        a.error,
        a.result,
    )


_TASK_COLUMNS = tuple(c.name for c in tasks_table.columns)
_ATTEMPT_COLUMNS = tuple(c.name for c in attempts_table.columns)
_INSERT_TASK = prepared_insert(tasks_table, _TASK_COLUMNS)
_INSERT_ATTEMPT = prepared_insert(attempts_table, _ATTEMPT_COLUMNS)


def _status_literal(status: str) -> sa.ColumnElement[Any]:
    """A status as an SQL constant, not a parameter (it is part of the statement compiled once)."""
    return sa.literal_column(f"'{TaskStatus(status).value}'")


def _may_become(status: str) -> sa.ColumnElement[bool]:
    """WHERE: the task is in a status that may become ``status`` (:func:`priors`); false for none."""
    allowed = priors(status)
    return tasks_table.c.status.in_([_status_literal(s) for s in allowed]) if allowed else sa.false()


def _may_become_bound(target: sa.BindParameter[Any]) -> sa.ColumnElement[bool]:
    """WHERE: the task is in a status that may become the status bound as ``target`` (one branch
    per status; an unknown one matches nothing)."""
    return sa.or_(*(sa.and_(target == _status_literal(s), _may_become(s)) for s in TASK_STATUSES if priors(s)))


def _this_task() -> tuple[sa.ColumnElement[bool], ...]:
    """WHERE: the task of bind parameters ``b_tenant``, ``b_task_id``."""
    return (
        tasks_table.c.tenant == sa.bindparam("b_tenant"),
        tasks_table.c.task_id == sa.bindparam("b_task_id"),
    )


def _update_status() -> sa.Update:
    b_status = sa.bindparam("b_status", type_=sa.String)
    return (
        tasks_table.update()
        .where(*_this_task(), _may_become_bound(b_status))
        .values(
            status=b_status,
            updated_s=sa.bindparam("b_now_s"),
            result=sa.func.coalesce(sa.bindparam("b_result", type_=sa.Text), tasks_table.c.result),
            error=sa.func.coalesce(sa.bindparam("b_error", type_=sa.Text), tasks_table.c.error),
        )
    )


# update_statuses: a step of the lifecycle only; a NULL result or error leaves the stored one
_UPDATE_STATUS = Prepared(_update_status, ("b_status", "b_now_s", "b_result", "b_error", "b_tenant", "b_task_id"))
# finish_many: the tasks' current state (locked on MySQL), then one terminal status for many; the
# error is written as given (a success clears an earlier retry's error), the result left alone
_SELECT_FOR_FINISH = PreparedIn(
    lambda ids: (
        sa.select(tasks_table.c.task_id, tasks_table.c.status, tasks_table.c.updated_s, tasks_table.c.error)
        .where(tasks_table.c.tenant == sa.bindparam("b_tenant"), tasks_table.c.task_id.in_(ids))
        .with_for_update()
    ),
    ("b_tenant",),
)


def _finish_in(status: str) -> PreparedIn:
    """The UPDATE of many tasks to the terminal ``status``, of those that may become it."""
    return PreparedIn(
        lambda ids: (
            tasks_table.update()
            .where(
                tasks_table.c.tenant == sa.bindparam("b_tenant"),
                tasks_table.c.task_id.in_(ids),
                _may_become(status),
            )
            .values(
                status=_status_literal(status),
                updated_s=sa.bindparam("b_now_s"),
                error=sa.bindparam("b_error", type_=sa.Text),
            )
        ),
        ("b_now_s", "b_error", "b_tenant"),
    )


_FINISH_IN = {status: _finish_in(status) for status in TERMINAL}


# settle: a retry scheduled (status, attempt counter, due time), over a status that may become it
_SCHEDULE_RETRY = Prepared(
    lambda: (
        tasks_table.update()
        .where(*_this_task(), _may_become("retrying"))
        .values(
            status=_status_literal("retrying"),
            attempt=sa.bindparam("b_attempt"),
            retry_at_s=sa.bindparam("b_due_s"),
            error=sa.bindparam("b_error", type_=sa.Text),
            updated_s=sa.bindparam("b_now_s"),
        )
    ),
    ("b_attempt", "b_due_s", "b_error", "b_now_s", "b_tenant", "b_task_id"),
)
_CLAIM_VIEW = PreparedIn(
    lambda ids: sa.select(
        tasks_table.c.task_id,
        tasks_table.c.type,
        tasks_table.c.status,
        tasks_table.c.attempt,
        tasks_table.c.payload,
        tasks_table.c.deadline_s,
        tasks_table.c.created_s,
    ).where(tasks_table.c.tenant == sa.bindparam("b_tenant"), tasks_table.c.task_id.in_(ids)),
    ("b_tenant",),
)


def task_record(row: Any) -> TaskRecord:
    d = dict(row)
    d["payload"] = json.loads(d["payload"])
    d["dependencies"] = tuple(json.loads(d["dependencies"]))
    d["attempt"] = int(d.get("attempt") or 0)  # NULL: a row from before the column existed
    return TaskRecord(**d)
