"""The live task queue and task statuses in a SQL database: SQLite (the embedded default) or MariaDB.

:class:`SQLTaskQueue` has the semantics of :class:`executors.redis_queue.RedisTaskQueue` (the
:class:`~executors.queue_types.TaskQueue` protocol; both pass the same behavioural tests), so a machine
without servers runs the main job on one SQLite file, ``autotune.db``, holding this queue next to the
durable store (:mod:`executors.store`: tables ``tasks``, ``attempts``, ``audit_log``; none of the
names below collide). One code path, SQLAlchemy Core, for SQLite and MariaDB/MySQL.

Tables (created by the queue itself)::

    queue_entries   one row per entry waiting or delivered: id (autoincrement, the message id),
                    tenant, task_id, priority_class, payload (JSON), enqueued_s, claimed_by,
                    claimed_s (NULL while waiting), deliveries
    task_status     tenant, task_id, status, updated_s, fields (JSON object of str -> str)
    queue_tenants   one row per tenant whose queue exists: what Redis's consumer group is to the
                    Redis queue. purge() deletes it, so is_empty_store() says True until rebuild().

``claim`` takes entries whose ``claimed_s`` is older than ``visibility_timeout_s`` (raising
``deliveries``), then waiting ones; class 0 first, FIFO (by id) within a class. It is atomic against
concurrent claimers, threads or processes: on SQLite every write transaction starts with
``BEGIN IMMEDIATE`` (it takes the write lock before reading, so claimers serialise); on MariaDB the
candidates are read with ``SELECT ... FOR UPDATE SKIP LOCKED`` (concurrent claimers take different
rows instead of queueing behind each other). Either way the ``UPDATE`` re-checks that every row is
still claimable and the transaction is redone if one is not. ``ack`` deletes. Delivery is at least
once, as with Redis: whoever stores outcomes keys them by task id and attempt.

Batches are single statements in one transaction (executemany), never a commit per task. Ids are
never reused (SQLite ``AUTOINCREMENT``; InnoDB keeps its counter), so a late ack of a reclaimed
entry cannot delete a newer entry. ``claimed_s`` is the claiming process's clock: executors that
share a MariaDB queue from several machines need clocks in step to well within the timeout.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from core.retry import RetryPolicy, retry_delay_s
from executors.queue_types import (
    N_CLASSES,
    Delivery,
    QueueError,
    QueueUnavailable,
    check_class,
    check_name,
    decode_delivery,
    encode_entry,
)
from executors.sql import Prepared, PreparedIn, chunks, create_engine, is_transient, mysql_code

T = TypeVar("T")

START_MARIADB_HINT = (
    "start it with: start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd "
    "(or: bash .ci/services.sh)"
)
_SWEEP_EVERY_S = 60.0  # how often expired statuses are deleted (reads ignore them anyway)

metadata = sa.MetaData()
_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER keys only
entries_table = sa.Table(
    "queue_entries",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("task_id", sa.String(128), nullable=False),
    sa.Column("priority_class", sa.SmallInteger, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # JSON object
    sa.Column("enqueued_s", sa.Double, nullable=False),
    sa.Column("claimed_by", sa.String(128), nullable=True),
    sa.Column("claimed_s", sa.Double, nullable=True),  # NULL: waiting
    sa.Column("deliveries", sa.Integer, nullable=False, default=0),
    # serves claim (tenant, claimed_s IS NULL, ORDER BY class, id), backlog and in_flight
    sa.Index("ix_queue_entries_claim", "tenant", "claimed_s", "priority_class", "id"),
    sqlite_autoincrement=True,  # never reuse an id: a stale ack must not hit a newer entry
)
status_table = sa.Table(
    "task_status",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("task_id", sa.String(128), primary_key=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("updated_s", sa.Double, nullable=False),
    sa.Column("fields", sa.Text, nullable=False),  # JSON object, str -> str
    sa.Index("ix_task_status_expiry", "tenant", "updated_s"),
)
tenants_table = sa.Table(
    "queue_tenants",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("created_s", sa.Double, nullable=False),
)


# The statements of the hot path, compiled once per dialect (see executors.sql.Prepared). FOR
# UPDATE renders as nothing on SQLite, whose BEGIN IMMEDIATE already excludes other writers.
_E = entries_table.c
_S = status_table.c
_ENTRY_FIELDS = ("tenant", "task_id", "priority_class", "payload", "enqueued_s", "deliveries")
_INSERT_ENTRY = Prepared(
    lambda: entries_table.insert().values({f: sa.bindparam(f, type_=_E[f].type) for f in _ENTRY_FIELDS}), _ENTRY_FIELDS
)
_MAX_ID = Prepared(lambda: sa.select(sa.func.coalesce(sa.func.max(_E.id), 0)), ())
_IDS_ABOVE = Prepared(lambda: sa.select(_E.id).where(_E.id > sa.bindparam("after")).order_by(_E.id), ("after",))
_TENANT = Prepared(lambda: sa.select(tenants_table.c.tenant).where(tenants_table.c.tenant == sa.bindparam("t")), ("t",))


def _candidates(condition: sa.ColumnElement[bool]) -> sa.Select:
    return (
        sa.select(_E.id, _E.task_id, _E.priority_class, _E.payload, _E.deliveries)
        .where(_E.tenant == sa.bindparam("t"), condition)
        .order_by(_E.priority_class, _E.id)
        .limit(sa.bindparam("limit", type_=sa.Integer))
        .with_for_update(skip_locked=True)
    )


_TIMED_OUT = Prepared(lambda: _candidates(_E.claimed_s < sa.bindparam("cutoff")), ("t", "cutoff", "limit"))
_WAITING = Prepared(lambda: _candidates(_E.claimed_s.is_(None)), ("t", "limit"))
_CLAIM_IN = PreparedIn(
    lambda ids: (
        entries_table.update()
        .where(_E.id.in_(ids), sa.or_(_E.claimed_s.is_(None), _E.claimed_s < sa.bindparam("cutoff")))
        .values(
            claimed_by=sa.bindparam("consumer"),
            claimed_s=sa.bindparam("now"),
            deliveries=_E.deliveries + sa.literal_column("1"),
        )
    ),
    ("consumer", "now", "cutoff"),
)
_PROMOTE = Prepared(
    lambda: (
        entries_table.update()
        .where(
            _E.tenant == sa.bindparam("t"),
            _E.id == sa.bindparam("eid"),
            _E.claimed_s.is_(None),
            _E.priority_class > sa.bindparam("above"),
        )
        .values(priority_class=sa.bindparam("cls"))
    ),
    ("cls", "t", "eid", "above"),
)
_ACK_IN = PreparedIn(lambda ids: entries_table.delete().where(_E.tenant == sa.bindparam("t"), _E.id.in_(ids)), ("t",))
_STATUS_IN = PreparedIn(
    lambda ids: (
        sa.select(_S.task_id, _S.fields, _S.updated_s)
        .where(_S.tenant == sa.bindparam("t"), _S.task_id.in_(ids))
        .with_for_update()
    ),
    ("t",),
)
_DELETE_STATUS_IN = PreparedIn(
    lambda ids: status_table.delete().where(_S.tenant == sa.bindparam("t"), _S.task_id.in_(ids)), ("t",)
)
_STATUS_FIELDS = ("tenant", "task_id", "status", "updated_s", "fields")
_compact_json = json.JSONEncoder(separators=(",", ":")).encode
_INSERT_STATUS = Prepared(
    lambda: status_table.insert().values({f: sa.bindparam(f, type_=_S[f].type) for f in _STATUS_FIELDS}), _STATUS_FIELDS
)


class _Contended(Exception):
    """A claimed row was taken by another claimer between read and update: redo the transaction."""


def _table_missing(err: BaseException) -> bool:
    return mysql_code(err) == 1146 or "no such table" in str(getattr(err, "orig", None))  # MySQL / SQLite


def _server_down(err: BaseException) -> bool:
    return mysql_code(err) in (2002, 2003, 2006, 2013)  # cannot connect; server gone away; lost


def _sqlite_manual_begin(dbapi_conn: Any, _record: Any) -> None:
    # pysqlite's own transaction handling begins lazily (before the first write, after our SELECT)
    # and only DEFERRED; take BEGIN into our hands (the recipe of SQLAlchemy's SQLite docs).
    dbapi_conn.isolation_level = None


def _sqlite_begin(conn: sa.Connection) -> None:
    # Write transactions take the lock up front: a deferred one that reads, then writes, fails with
    # SQLITE_BUSY under WAL instead of waiting for the busy timeout.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("autotune_write") else "BEGIN")


class SQLTaskQueue:
    """A tenant's queue and task statuses in one SQL database (see the module docstring).

    Arguments:
        url: a SQLAlchemy URL: ``sqlite:///autotune.db`` (the default) or
            ``mysql+pymysql://user:password@host:3306/database``.
        tenant: the tenant whose rows this object reads and writes, and no others.
        visibility_timeout_s: how long a claimed, unacked entry waits before another claim may take
            it over. Longer than the slowest attempt, or a live executor's task is run twice.
        status_ttl_s: a status not written for this long reads as absent and is deleted (the durable
            record is the store's); ``None`` keeps statuses forever.
        busy_timeout_s: SQLite: how long a writer waits for another's lock before failing.
        lock_retries: redo a transaction rolled back for a lock conflict (deadlock, lock wait, SQLite
            busy) or a lost connection up to this many times, with a short backoff.
        clock: the time source for ``claimed_s``, ``updated_s`` and expiries (tests pass a fake).

    Creating the object creates the tables (if missing) and the tenant's queue. Thread-safe: the
    engine's pool gives each thread its own connection.
    """

    def __init__(
        self,
        url: str = "sqlite:///autotune.db",
        tenant: str = "default",
        *,
        visibility_timeout_s: float = 30.0,
        status_ttl_s: float | None = 86_400.0,
        busy_timeout_s: float = 30.0,
        lock_retries: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tenant = check_name("tenant", tenant)
        if not visibility_timeout_s > 0:
            raise ValueError(f"visibility_timeout_s must be > 0, got {visibility_timeout_s!r}")
        if status_ttl_s is not None and not status_ttl_s > 0:
            raise ValueError(f"status_ttl_s must be > 0 or None, got {status_ttl_s!r}")
        if not busy_timeout_s > 0:
            raise ValueError(f"busy_timeout_s must be > 0, got {busy_timeout_s!r}")
        self.visibility_timeout_s = float(visibility_timeout_s)
        self.status_ttl_s = status_ttl_s
        self.retry = RetryPolicy(max_retries=lock_retries, base_s=0.01, jitter_s=0.01, cap_s=0.5)
        self._clock = clock
        self._rng = random.Random()
        self._last_sweep_s = float("-inf")
        try:
            self.url = make_url(url)
        except sa.exc.ArgumentError as err:
            raise QueueError(f"queue database {url!r}: not a SQLAlchemy URL: {err}") from None
        self.address = self.url.render_as_string(hide_password=True)
        self.sqlite = self.url.get_backend_name() == "sqlite"
        try:
            # a server: no gap locks (READ COMMITTED), so a claim's locking read does not block
            # enqueues behind it
            self.engine = create_engine(self.url, busy_timeout_s=busy_timeout_s, isolation_level="READ COMMITTED")
        except (sa.exc.ArgumentError, ImportError) as err:
            raise QueueError(f"queue database {self.address}: cannot open: {err}") from None
        if self.sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_manual_begin)
            sa.event.listen(self.engine, "begin", _sqlite_begin)
        self._writer = self.engine.execution_options(autotune_write=True)
        self._check_reachable()
        self._create_schema()
        self._write("create the tenant's queue", self._ensure_tenant)

    @classmethod
    def connect(cls, url: str, tenant: str, **kw: Any) -> SQLTaskQueue:
        """Open ``tenant``'s queue at ``url`` (``kw`` goes to the constructor). The constructor
        already checks that the database answers: an unreachable server or an unopenable SQLite
        file raises :class:`QueueError` naming the URL (password masked), at once, not after
        retries. The same call as :meth:`RedisTaskQueue.connect`, for :func:`executors.queue.open_queue`."""
        return cls(url, tenant, **kw)

    def _check_reachable(self) -> None:
        try:
            with self.engine.connect():
                pass
        except sa.exc.SQLAlchemyError as err:
            self.engine.dispose()
            first = str(getattr(err, "orig", None) or err).splitlines()[0]
            how = "cannot be opened" if self.sqlite else "unreachable"
            hint = f"; {START_MARIADB_HINT}" if _server_down(err) else ""
            raise (QueueUnavailable if _server_down(err) else QueueError)(
                f"queue database {self.address} {how}: {first}{hint}"
            ) from err

    def close(self) -> None:
        """Close the pooled connections."""
        self.engine.dispose()

    # ---- transactions -------------------------------------------------------------------------

    def _run(
        self, what: str, fn: Callable[[sa.Connection], T], *, write: bool, on_missing: Callable[[], T] | None = None
    ) -> T:
        """Run ``fn(conn)`` in one transaction, redone on lock conflicts and lost connections.

        A lost connection may come after the server committed; the redo is still safe, as every
        operation is idempotent (ack, status) or at-least-once anyway (enqueue, claim).
        ``on_missing`` answers instead when the queue's tables are gone (the database was lost)."""
        engine = self._writer if write else self.engine
        attempt = 0
        while True:
            try:
                with engine.begin() as conn:
                    return fn(conn)
            except QueueError:
                raise
            except (_Contended, sa.exc.SQLAlchemyError) as err:
                if isinstance(err, sa.exc.SQLAlchemyError) and _table_missing(err):
                    if on_missing is not None:
                        return on_missing()
                    raise QueueError(
                        f"queue database {self.address}: {what}: the queue's tables are gone "
                        f"(database lost or replaced); rebuild() from the store"
                    ) from err
                retryable = isinstance(err, _Contended) or is_transient(err)
                if not retryable or attempt >= self.retry.max_retries:
                    tries = f" after {attempt + 1} tries" if attempt else ""
                    first = str(err).splitlines()[0] if str(err) else ""
                    down = isinstance(err, sa.exc.SQLAlchemyError) and (_server_down(err) or is_transient(err))
                    hint = f"; {START_MARIADB_HINT}" if _server_down(err) else ""
                    raise (QueueUnavailable if down else QueueError)(
                        f"queue database {self.address}: {what} failed{tries}: {err.__class__.__name__}: {first}{hint}"
                    ) from err
                time.sleep(retry_delay_s(attempt, self._rng.random(), self.retry))
                attempt += 1

    def _write(self, what: str, fn: Callable[[sa.Connection], T], **kw: Any) -> T:
        return self._run(what, fn, write=True, **kw)

    def _read(self, what: str, fn: Callable[[sa.Connection], T], **kw: Any) -> T:
        return self._run(what, fn, write=False, **kw)

    def _create_schema(self) -> None:
        self._write("create tables", lambda c: metadata.create_all(c))

    def _ensure_tenant(self, conn: sa.Connection) -> None:
        t = tenants_table
        if conn.execute(sa.select(t.c.tenant).where(t.c.tenant == self.tenant)).first() is None:
            # another object creating the same tenant at the same moment (MariaDB; SQLite's
            # write lock serialises them) makes this insert conflict: the row is there, as wanted
            try:
                with conn.begin_nested():
                    conn.execute(t.insert(), {"tenant": self.tenant, "created_s": self._clock()})
            except sa.exc.IntegrityError:
                pass

    def _require_tenant(self, conn: sa.Connection, what: str) -> None:
        if _TENANT.one(conn, (self.tenant,)).first() is None:
            raise QueueError(
                f"queue database {self.address}: {what}: tenant {self.tenant!r}'s queue is gone "
                f"(purged, or the database was replaced); rebuild() from the store"
            )

    # ---- enqueue ------------------------------------------------------------------------------

    def enqueue(self, task_id: str, priority_class: int, payload: dict) -> str:
        """Append one task to its class; returns the entry id."""
        return self.enqueue_many([(task_id, priority_class, payload)])[0]

    def enqueue_many(self, items: Sequence[tuple[str, int, dict]]) -> list[str]:
        """Append many tasks in one transaction (one multi-row INSERT per page); returns their entry
        ids in order.

        Every payload is checked first, so a bad one (ValueError naming its task) enqueues nothing.
        If the tables are gone they are recreated, as Redis recreates a stream on XADD, but the
        tenant's queue stays missing (``is_empty_store()``) until :meth:`rebuild`."""
        now = float(self._clock())
        tenant = self.tenant
        rows = [
            (tenant, task_id, cls_, encode_entry(task_id, cls_, payload), now, 0) for task_id, cls_, payload in items
        ]
        if not rows:
            return []
        return self._write_recreating(f"enqueue {len(rows)} tasks", lambda conn: self._insert(conn, rows))

    def _write_recreating(self, what: str, fn: Callable[[sa.Connection], T]) -> T:
        """A write that recreates lost tables and goes ahead, as Redis recreates a key on write."""
        missing = object()
        out = self._write(what, fn, on_missing=lambda: missing)
        if out is missing:
            self._create_schema()
            out = self._write(what, fn)
        return out

    def _insert(self, conn: sa.Connection, rows: list[tuple]) -> list[str]:
        """Insert entry rows (tuples in ``_ENTRY_FIELDS`` order); their ids, in order."""
        e = entries_table.c
        if self.sqlite:
            # SQLAlchemy cannot batch an ordered RETURNING on SQLite (it would run one INSERT per
            # row, a third of the speed). Instead: this transaction holds the only write lock
            # (BEGIN IMMEDIATE) and AUTOINCREMENT ids only grow, so the rows above the previous
            # maximum are exactly ours, in insertion order.
            before = _MAX_ID.one(conn).scalar_one()
            _INSERT_ENTRY.many(conn, rows)
            new = _IDS_ABOVE.one(conn, (before,)).scalars().all()
            if len(new) != len(rows):  # another writer inside our lock: not possible; never guess
                raise QueueError(
                    f"queue database {self.address}: enqueue found {len(new)} new entries "
                    f"after inserting {len(rows)}; nothing enqueued"
                )
            return [str(i) for i in new]
        # MariaDB >= 10.5: multi-row INSERT ... RETURNING in pages, ids in the order of the rows.
        stmt = entries_table.insert().returning(e.id, sort_by_parameter_order=True)
        dicts = [dict(zip(_ENTRY_FIELDS, r)) for r in rows]
        return [str(i) for i in conn.execute(stmt, dicts).scalars()]

    # ---- claim / ack --------------------------------------------------------------------------

    def claim(self, consumer: str, count: int) -> list[Delivery]:
        """Up to ``count`` entries for ``consumer``, without blocking: timed-out entries first, then
        waiting ones, each class 0 first and FIFO within a class. Raises :class:`QueueError` if the
        tenant's queue is gone (then :meth:`rebuild`)."""
        if not isinstance(consumer, str) or not consumer or len(consumer) > 128:
            raise ValueError(f"consumer must be a string of 1-128 characters, got {consumer!r}")
        if count <= 0:
            return []
        return self._write(f"claim for consumer {consumer!r}", lambda conn: self._claim(conn, consumer, count))

    def _claim(self, conn: sa.Connection, consumer: str, count: int) -> list[Delivery]:
        self._require_tenant(conn, f"claim for consumer {consumer!r}")
        now = float(self._clock())
        cutoff = now - self.visibility_timeout_s
        tenant = self.tenant
        # timed-out entries first, then waiting ones (locked and skipped by concurrent claimers on
        # MariaDB; SQLite's BEGIN IMMEDIATE already excludes other writers)
        rows = _TIMED_OUT.one(conn, (tenant, cutoff, count)).all()
        if len(rows) < count:
            rows += _WAITING.one(conn, (tenant, count - len(rows))).all()
        if not rows:
            return []
        ids = [r[0] for r in rows]
        updated = sum(_CLAIM_IN.one(conn, (consumer, now, cutoff), chunk).rowcount for chunk in chunks(ids))
        if updated != len(ids):
            raise _Contended()  # rolled back by the caller's `begin()` and redone
        return [
            decode_delivery(task_id, cls_, payload, str(id_), deliveries + 1)
            for id_, task_id, cls_, payload, deliveries in rows
        ]

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Done with these entries: delete them, in one transaction. Acking an entry another consumer
        has since reclaimed removes it for both; acking one already gone does nothing."""
        ids = []
        for d in deliveries:
            try:
                ids.append(int(d.message_id))
            except ValueError:
                raise ValueError(
                    f"task {d.task_id!r}: message id {d.message_id!r} is not this queue's "
                    f"(a SQL queue's ids are integers)"
                ) from None
        if not ids:
            return

        def run(conn: sa.Connection) -> None:
            for chunk in chunks(ids):
                _ACK_IN.one(conn, (self.tenant,), chunk)

        self._write(f"ack {len(ids)} deliveries", run, on_missing=lambda: None)  # gone with the tables

    def promote(self, items: Sequence[tuple[str, int, int]]) -> dict[str, str]:
        """Move waiting entries ``(message_id, old_class, new_class)`` to a more urgent class; claimed
        or gone ones stay as they are. Returns ``{message id: message id}`` of the entries moved (the
        id stays: an entry keeps its place by enqueue time within the new class)."""
        rows = []
        for message_id, old, new in items:
            check_class(f"entry {message_id!r}", old)
            check_class(f"entry {message_id!r}", new)
            if new < old:
                try:
                    rows.append((new, self.tenant, int(message_id)))
                except ValueError:
                    raise ValueError(
                        f"message id {message_id!r} is not this queue's (a SQL queue's ids are integers)"
                    ) from None
        if not rows:
            return {}

        def run(conn: sa.Connection) -> dict[str, str]:
            self._require_tenant(conn, f"promote {len(rows)} entries")
            return {
                str(eid): str(eid) for cls_, t, eid in rows if _PROMOTE.one(conn, (cls_, t, eid, cls_)).rowcount == 1
            }

        return self._write(f"promote {len(rows)} entries", run)

    # ---- status -------------------------------------------------------------------------------

    def set_status(self, task_id: str, status: str, **fields: str) -> None:
        """Set a task's live status (and ``updated_s``, now) plus any other fields (attempt,
        executor, ...); fields not given keep their previous values."""
        self.set_status_many([(task_id, status, fields)])

    def set_status_many(self, items: Sequence[tuple[str, str, dict]]) -> None:
        """:meth:`set_status` for many tasks in one transaction (one read, one delete, one insert)."""
        if not items:
            return
        for task_id, _status, _fields in items:
            if not isinstance(task_id, str) or not task_id:
                raise ValueError(f"task id must be a non-empty string, got {task_id!r}")
        now = float(self._clock())
        ids = list(dict.fromkeys(task_id for task_id, _, _ in items))
        s = status_table.c
        tenant = self.tenant

        def run(conn: sa.Connection) -> None:
            merged: dict[str, dict[str, str]] = {}
            for chunk in chunks(ids):
                for task_id, fields, updated_s in _STATUS_IN.one(conn, (tenant,), chunk).all():
                    if not self._expired(updated_s, now):
                        merged[task_id] = json.loads(fields)
            statuses: dict[str, str] = {}
            for task_id, status, fields in items:
                merged.setdefault(task_id, {}).update({k: str(v) for k, v in fields.items()})
                statuses[task_id] = str(status)
            for chunk in chunks(ids):
                _DELETE_STATUS_IN.one(conn, (tenant,), chunk)
            _INSERT_STATUS.many(conn, [(tenant, tid, statuses[tid], now, _compact_json(merged[tid])) for tid in ids])
            if self.status_ttl_s is not None and now - self._last_sweep_s >= min(_SWEEP_EVERY_S, self.status_ttl_s):
                conn.execute(
                    status_table.delete().where(s.tenant == self.tenant, s.updated_s < now - self.status_ttl_s)
                )
                self._last_sweep_s = now

        self._write_recreating(f"set status of {len(ids)} tasks", run)

    def _expired(self, updated_s: float, now: float) -> bool:
        return self.status_ttl_s is not None and updated_s < now - self.status_ttl_s

    def get_status(self, task_id: str) -> dict[str, str] | None:
        """The task's status fields (``status``, ``updated_s`` and what the caller added, all
        strings), or None if this tenant has none for it, or it expired."""
        if not isinstance(task_id, str) or not task_id:
            raise ValueError(f"task id must be a non-empty string, got {task_id!r}")
        s = status_table.c
        q = sa.select(s.status, s.updated_s, s.fields).where(s.tenant == self.tenant, s.task_id == task_id)
        row = self._read(
            f"get status of task {task_id!r}", lambda conn: conn.execute(q).first(), on_missing=lambda: None
        )
        if row is None or self._expired(row.updated_s, self._clock()):
            return None
        return {**json.loads(row.fields), "status": row.status, "updated_s": f"{row.updated_s:.6f}"}

    # ---- gauges -------------------------------------------------------------------------------

    def backlog(self) -> tuple[int, int, int]:
        """Entries per class waiting to be claimed (claimed, unacked ones are :meth:`in_flight`);
        0 each if the tables are gone."""
        e = entries_table.c
        q = (
            sa.select(e.priority_class, sa.func.count())
            .where(e.tenant == self.tenant, e.claimed_s.is_(None))
            .group_by(e.priority_class)
        )
        counts: dict[int, int] = dict(self._read("read backlog", lambda conn: conn.execute(q).all(), on_missing=list))
        high, normal, low = (int(counts.get(c, 0)) for c in range(N_CLASSES))
        return high, normal, low

    def in_flight(self) -> int:
        """Entries claimed and not yet acked, all classes (0 if the tables are gone)."""
        e = entries_table.c
        q = sa.select(sa.func.count()).where(e.tenant == self.tenant, e.claimed_s.is_not(None))
        return int(self._read("read in-flight count", lambda conn: conn.execute(q).scalar_one(), on_missing=lambda: 0))

    # ---- loss and recovery --------------------------------------------------------------------

    def is_empty_store(self) -> bool:
        """True when the tenant's queue is gone: its tables are missing (a new, empty database) or it
        was purged. Then call :meth:`rebuild`."""
        t = tenants_table.c
        q = sa.select(t.tenant).where(t.tenant == self.tenant)
        return self._read(
            "check the tenant's queue", lambda conn: conn.execute(q).first() is None, on_missing=lambda: True
        )

    def rebuild(self, items: Iterable[tuple[str, int, dict]]) -> int:
        """Recreate the tables and the tenant's queue, and enqueue ``items`` (the tenant's unfinished
        tasks, from the durable store), all in one transaction; returns how many were enqueued.

        Entries enqueued after the loss and before this call are kept and delivered too, so a task
        may run twice (delivery is at least once anyway)."""
        items = list(items)
        now = self._clock()
        rows = [
            {
                "tenant": self.tenant,
                "task_id": task_id,
                "priority_class": cls_,
                "payload": encode_entry(task_id, cls_, payload),
                "enqueued_s": now,
                "deliveries": 0,
            }
            for task_id, cls_, payload in items
        ]
        self._create_schema()

        def run(conn: sa.Connection) -> None:
            for start in range(0, len(rows), 10_000):
                conn.execute(entries_table.insert(), rows[start : start + 10_000])
            self._ensure_tenant(conn)  # last: a rebuild cut short leaves the queue still "lost"

        self._write(f"rebuild with {len(rows)} tasks", run)
        return len(rows)

    def task_ids(self) -> set[str]:
        """Every task with an entry, waiting or claimed (for recovery)."""
        q = sa.select(_E.task_id).where(_E.tenant == self.tenant).distinct()
        return set(self._read("list entries", lambda conn: conn.execute(q).scalars().all(), on_missing=list))

    def extend(self, consumer: str, deliveries: Sequence[Delivery]) -> None:
        """Restart the visibility timeout of ``consumer``'s claimed entries (``claimed_s`` = now)."""
        ids = [int(d.message_id) for d in deliveries]
        if not ids:
            return
        now = float(self._clock())

        def run(conn: sa.Connection) -> None:
            for chunk in chunks(ids):
                conn.execute(
                    entries_table.update()
                    .where(_E.tenant == self.tenant, _E.id.in_(chunk), _E.claimed_s.is_not(None))
                    .values(claimed_s=now, claimed_by=consumer)
                )

        self._write(f"extend {len(ids)} deliveries", run, on_missing=lambda: None)

    def release(self, deliveries: Sequence[Delivery]) -> None:
        """Hand claimed entries back at once; the next claim takes them over as redeliveries."""
        self._release([int(d.message_id) for d in deliveries])

    def release_claimed(self) -> int:
        """Hand back every claimed entry of the tenant (a new driver taking over from a dead one);
        returns how many."""
        return self._release(None)

    def _release(self, ids: list[int] | None) -> int:
        # claimed_s far in the past: the next claim's timed-out sweep takes them (deliveries + 1)
        past = float(self._clock()) - self.visibility_timeout_s - 3600.0

        def run(conn: sa.Connection) -> int:
            cond = [_E.tenant == self.tenant, _E.claimed_s.is_not(None)]
            if ids is None:
                return int(conn.execute(entries_table.update().where(*cond).values(claimed_s=past)).rowcount)
            n = 0
            for chunk in chunks(ids):
                n += int(
                    conn.execute(entries_table.update().where(*cond, _E.id.in_(chunk)).values(claimed_s=past)).rowcount
                )
            return n

        if ids is not None and not ids:
            return 0
        return self._write("release claimed entries", run, on_missing=lambda: 0)

    def ping(self) -> None:
        """One round trip; :class:`QueueUnavailable` if the database does not answer."""
        self._read("ping", lambda conn: conn.exec_driver_sql("SELECT 1").scalar_one())

    def purge(self) -> None:
        """Delete every row of this tenant (entries, statuses, the queue itself). The object then
        reports :meth:`is_empty_store` until :meth:`rebuild`."""

        def run(conn: sa.Connection) -> None:
            for table in (entries_table, status_table, tenants_table):
                conn.execute(table.delete().where(table.c.tenant == self.tenant))

        self._write(f"purge tenant {self.tenant!r}", run, on_missing=lambda: None)
