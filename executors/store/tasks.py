"""The durable record: tasks, every attempt, and an append-only audit log.

One code path (SQLAlchemy Core) for MySQL/MariaDB (``mysql+pymysql://...``) and SQLite (the embedded
default, so the main job runs without servers). The store creates its own schema. The statements of
the task path (thousands of rows a second) are Core statements compiled once per dialect and run on
plain tuples (:class:`_Prepared`), which skips most of SQLAlchemy's per-execution Python work.

Writes survive a dropped connection. Each write runs in one transaction that is retried, with the
shared retry policy (:mod:`core.retry`), when the connection was lost, the server could not be
reached, or the transaction was rolled back for a lock (deadlock, lock wait, SQLite busy). A lost
connection during COMMIT is ambiguous (the commit may or may not have happened), so every write is
idempotent and the retry writes nothing twice:

- tasks and attempts by their primary keys (a task batch found already stored, identically, is a
  success; an attempt already stored is skipped). A first try just inserts; only a key conflict
  (or a retry) makes it look for what is stored, in a new transaction;
- a terminal status is final, and a retry that finds exactly the values it meant to write reports
  the update as its own;
- audit events have no natural key, so a retry first looks for the whole batch (same timestamps,
  tenant, actor, action, subject and detail) and writes it only if it is not there.

:class:`BatchWriter` buffers attempts, status updates and audit events in front of a store and
writes them in batches from a background thread, so the database sees a few large transactions per
second rather than one per task.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import random
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from core.retry import RetryPolicy, retry_delay_s

log = logging.getLogger(__name__)

T = TypeVar("T")
# waiting: accepted, held back until its dependencies have succeeded (no queue entry yet)
TASK_STATUSES = ("waiting", "queued", "running", "retrying", "succeeded", "failed")
TERMINAL = ("succeeded", "failed")
ATTEMPT_OUTCOMES = ("succeeded", "failed", "retrying", "lost")
_IN_CHUNK = 500  # ids per IN (...) list: well under every backend's bound-parameter limit

metadata = sa.MetaData()
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
audit_table = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts_s", sa.Double, nullable=False),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("subject", sa.String(128), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),  # JSON object
    sa.Index("ix_audit_tenant", "tenant", "id"),
)


decisions_table = sa.Table(
    "decisions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("cluster", sa.String(64), nullable=False),
    sa.Column("time_s", sa.Double, nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("policy", sa.String(255), nullable=False),
    sa.Column("controller", sa.String(255), nullable=False),
    sa.Column("observation", sa.Text, nullable=True),  # JSON list of floats
    sa.Column("policy_output", sa.Double, nullable=True),
    sa.Column("guard_applied", sa.Integer, nullable=True),
    sa.Column("guard_reasons", sa.Text, nullable=False),  # JSON list
    sa.Column("applied", sa.Integer, nullable=False),
    sa.Column("previous", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("fallback", sa.Boolean, nullable=False),
    sa.Column("who", sa.String(64), nullable=False),
    sa.Column("emergency", sa.Boolean, nullable=False),
    sa.Column("extra", sa.Text, nullable=False),  # JSON object
    sa.Index("ix_decisions_cluster", "cluster", "id"),
)

control_table = sa.Table(
    "control_requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("cluster", sa.String(64), nullable=False),
    sa.Column("time_s", sa.Double, nullable=False),
    sa.Column("user", sa.String(64), nullable=False),
    sa.Column("roles", sa.Text, nullable=False),  # JSON list, as asserted by whoever authenticated the user
    sa.Column("action", sa.String(16), nullable=False),  # mode | override
    sa.Column("value", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending | applied | refused
    sa.Column("detail", sa.Text, nullable=True),
    # the signed request (autotune.operator_auth); nullable: tables made by older versions lack them
    sa.Column("run_id", sa.String(64), nullable=True),  # the tuner run it is bound to
    sa.Column("nonce", sa.String(64), nullable=True),
    sa.Column("issued_s", sa.Double, nullable=True),
    sa.Column("expires_s", sa.Double, nullable=True),
    sa.Column("signature", sa.String(128), nullable=True),
    sa.Index("ix_control_cluster_status", "cluster", "status"),
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

tuner_runs_table = sa.Table(  # which tuner runs a cluster now: control requests are bound to its run_id
    "tuner_runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("cluster", sa.String(64), nullable=False),
    sa.Column("started_s", sa.Double, nullable=False),
    sa.Column("heartbeat_s", sa.Double, nullable=False),  # beats once a control interval
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # running | ended
    sa.Column("interval_s", sa.Double, nullable=True),  # how often it beats
    sa.Column("run_dir", sa.Text, nullable=True),  # where its default operator keys are
    sa.Index("ix_tuner_runs_cluster", "cluster", "status"),
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
class AuditEvent:
    ts_s: float
    tenant: str
    actor: str
    action: str
    subject: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class StatusUpdate:
    """One buffered :meth:`TaskStore.update_status` call (see :meth:`TaskStore.update_statuses`)."""

    tenant: str
    task_id: str
    status: str
    now_s: float
    result: str | None = None
    error: str | None = None


class StoreError(RuntimeError):
    """A failed store operation; the message names the database (password masked) and the step."""


class StoreUnavailable(StoreError):
    """The database could not be reached (or kept dropping the connection) through every retry: an
    outage, which a caller may wait out, not a write that is wrong."""


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


class _Recheck(Exception):
    """A fast write met a key conflict: roll back and redo the write its careful way, at once."""


def _driver_form(
    sql: str, positional: bool, names: Sequence[str], fields: Sequence[str], values: dict[str, Any]
) -> tuple[str, Callable[[tuple], Any] | None]:
    """The SQL string and the conversion of a row (a tuple in ``fields`` order) into the DBAPI's
    parameters (None: the row as it is), for a statement whose parameters are ``names`` (in
    placeholder order when ``positional``). A name that is not a field is a constant: it keeps
    ``values[name]``, the value it was compiled with."""
    slot = {f: i for i, f in enumerate(fields)}
    missing = [n for n in names if n not in slot and values.get(n) is None]
    if missing:
        raise TypeError(f"prepared statement binds {missing} that are neither fields nor constants")
    if not positional:  # a named paramstyle: rows become dicts
        consts = {n: values[n] for n in names if n not in slot}

        def as_dict(r: tuple) -> dict[str, Any]:
            return {**consts, **dict(zip(fields, r))}

        return sql, as_dict
    order: list[int] = []
    extra: list[Any] = []
    for name in names:
        if name in slot:
            order.append(slot[name])
        else:  # a constant, placed after the row's own values
            order.append(len(fields) + len(extra))
            extra.append(values[name])
    if order == list(range(len(fields))):
        return sql, None
    get = operator.itemgetter(*order)
    tail = tuple(extra)
    if len(order) == 1:  # itemgetter of one index returns the item, not a tuple
        return sql, (lambda r: (get(r + tail),)) if tail else (lambda r: (get(r),))
    return sql, (lambda r: get(r + tail)) if tail else get


class _PerDialect:
    """What a statement compiles to, kept per dialect (weakly: an engine's dialect goes with it),
    with the last one looked up answered at once (a statement serves one engine, as a rule)."""

    __slots__ = ("_by_dialect", "_last")

    def __init__(self) -> None:
        self._by_dialect: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._last: tuple[Any, Any] = (None, None)

    def get(self, dialect: Any, make: Callable[[Any], Any]) -> Any:
        last = self._last
        if last[0] is dialect:
            return last[1]
        value = self._by_dialect.get(dialect)
        if value is None:
            value = self._by_dialect[dialect] = make(dialect)
        self._last = (dialect, value)
        return value


class _Prepared:
    """A Core statement compiled once per dialect into the DBAPI's SQL string and parameter order.

    The hot writes and reads (thousands of rows a second) run it with
    :meth:`sqlalchemy.engine.Connection.exec_driver_sql` on tuples of plain values in ``fields``
    order. That skips SQLAlchemy's per-execution parameter processing (most of the Python time of an
    executemany), while the statement is still written once, in Core, for SQLite and MySQL alike;
    transactions, error wrapping (lost connections), events and pooling stay SQLAlchemy's. Binds
    that are not fields (literals Core made parameters, such as ``LIMIT``'s offset) keep the
    values they were compiled with. Type bind processors are not applied: values must be what the
    DBAPI takes as they are (str, int, float, None), so callers pass floats for DOUBLE columns.
    """

    __slots__ = ("_cache", "build", "fields")

    def __init__(self, build: Callable[[], Any], fields: Sequence[str]) -> None:
        self.build = build
        self.fields = tuple(fields)
        self._cache = _PerDialect()

    def _compile(self, dialect: Any) -> tuple[str, Callable[[tuple], Any] | None]:
        compiled = self.build().compile(dialect=dialect)
        values = compiled.construct_params(_check=False)
        names = compiled.positiontup if compiled.positional else list(values)
        return _driver_form(compiled.string, compiled.positional, names, self.fields, values)

    def many(self, conn: sa.Connection, rows: Sequence[tuple]) -> Any:
        """Execute for every row (one executemany); ``rows`` must not be empty."""
        sql, conv = self._cache.get(conn.dialect, self._compile)
        return conn.exec_driver_sql(sql, [conv(r) for r in rows] if conv is not None else list(rows))

    def one(self, conn: sa.Connection, row: tuple = ()) -> Any:
        """Execute once with ``row``; returns the cursor result (rows come back as tuples)."""
        sql, conv = self._cache.get(conn.dialect, self._compile)
        return conn.exec_driver_sql(sql, conv(row) if conv is not None else row)


class _PreparedIn:
    """A :class:`_Prepared` with an ``IN (...)`` list of ids: ``build(ids)`` gets an expanding
    bind parameter, compiled once per dialect and rendered once per list length (SQLAlchemy's own
    expansion, done ahead instead of at every execution).

    Lengths are rounded up to a power of two (the list padded with its last id, which changes
    nothing in an IN list), so a few strings serve every chunk size."""

    __slots__ = ("_cache", "build", "fields")

    def __init__(self, build: Callable[[sa.BindParameter], Any], fields: Sequence[str]) -> None:
        self.build = build
        self.fields = tuple(fields)  # the other parameters, given before the ids
        self._cache = _PerDialect()

    def _compile(self, dialect: Any) -> tuple[Any, dict[int, tuple[str, Callable[[tuple], Any] | None]]]:
        return self.build(sa.bindparam("in_ids", expanding=True)).compile(dialect=dialect), {}

    def _form(self, dialect: Any, n: int) -> tuple[str, Callable[[tuple], Any] | None]:
        compiled, by_n = self._cache.get(dialect, self._compile)
        form = by_n.get(n)
        if form is None:
            state = compiled.construct_expanded_state({**dict.fromkeys(self.fields), "in_ids": [""] * n})
            fields = self.fields + tuple(f"in_ids_{k}" for k in range(1, n + 1))
            names = state.positiontup if compiled.positional else list(state.parameters)
            form = by_n[n] = _driver_form(state.statement, compiled.positional, names, fields, state.parameters)
        return form

    def one(self, conn: sa.Connection, head: tuple, ids: Sequence[Any]) -> Any:
        """Execute with ``head`` (the other parameters) and ``ids`` (1 to ``_IN_CHUNK`` of them)."""
        n = len(ids)
        if not 0 < n <= _IN_CHUNK:
            raise ValueError(f"an IN list of {n} ids; 1 to {_IN_CHUNK} per statement")
        size = min(_IN_CHUNK, 1 << (n - 1).bit_length())
        ids = tuple(ids)
        if size > n:
            ids += (ids[-1],) * (size - n)
        sql, conv = self._form(conn.dialect, size)
        row = head + ids
        return conn.exec_driver_sql(sql, conv(row) if conv is not None else row)


# MySQL/MariaDB error codes after which the transaction was rolled back and a retry can succeed.
# Lost connections (2006, 2013, ...) are flagged by SQLAlchemy already (``connection_invalidated``);
# these are the ones it does not flag: cannot connect (server restarting) and lock conflicts.
_MYSQL_RETRYABLE = {
    2002,
    2003,  # can't connect (socket / TCP)
    1205,  # lock wait timeout exceeded
    1213,  # deadlock found; the transaction was rolled back
}


def _is_transient(err: BaseException) -> bool:
    """Whether ``err`` means "try the whole transaction again", not "this write is wrong"."""
    if not isinstance(err, sa.exc.DBAPIError):
        return False
    if err.connection_invalidated:
        return True
    orig = err.orig
    code = orig.args[0] if orig is not None and orig.args and isinstance(orig.args[0], int) else None
    if code in _MYSQL_RETRYABLE:
        return True
    # SQLite: another writer held the lock for longer than the busy timeout.
    return isinstance(err, sa.exc.OperationalError) and "database is locked" in str(orig)


class TaskStore:
    """Tasks, attempts and the audit log in one SQL database (MySQL/MariaDB or SQLite).

    Arguments:
        url: a SQLAlchemy URL; ``sqlite:///path.db`` (default ``sqlite:///autotune.db``) or
            ``mysql+pymysql://user:password@host:3306/database``.
        connect_retries: retries of a write (or read) after a lost connection or a lock conflict,
            with the shared exponential backoff (0.05 s base, 2 s cap); 0 disables retrying.
        sleep: called with each backoff delay; tests inject a recorder.
        rng: the jitter draws of the backoff.
    """

    def __init__(
        self,
        url: str = "sqlite:///autotune.db",
        *,
        connect_retries: int = 5,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        try:
            self.url = make_url(url)
        except sa.exc.ArgumentError as err:
            raise StoreError(f"database {url!r}: not a SQLAlchemy URL ({err})") from None
        self.retry = RetryPolicy(max_retries=connect_retries, base_s=0.05, jitter_s=0.05, cap_s=2.0)
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._rng_lock = threading.Lock()
        kw: dict[str, Any] = {}
        if self.url.get_backend_name() == "sqlite":
            # one connection per thread in the pool; the busy timeout waits out another writer. No
            # pre-ping: a file has no server to drop the connection (it would cost a query per write)
            kw["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kw["pool_pre_ping"] = True  # a server restart or KILL leaves dead pooled connections
        try:
            self.engine = sa.create_engine(self.url, **kw)
        except (sa.exc.ArgumentError, ImportError) as err:
            raise StoreError(f"{self.url_masked}: cannot open the database: {err}") from None
        if self.url.get_backend_name() == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_wal)

    @property
    def url_masked(self) -> str:
        return self.url.render_as_string(hide_password=True)

    def _with_retry(self, what: str, fn: Callable[..., T], *, conflicts_retry: bool = False) -> T:
        """Run ``fn(conn, retrying)`` in one transaction, retried on transient errors.

        ``retrying`` is True once an earlier try ended in a lost connection, which may have come
        during COMMIT after the server committed: ``fn`` must check before it writes.
        ``conflicts_retry`` also retries an IntegrityError: for a write that checks its keys first,
        that error means a concurrent writer stored the same key in between, and the next try sees
        it.
        """
        attempt = 0
        maybe_committed = False
        while True:
            try:
                with self.engine.begin() as conn:
                    return fn(conn, maybe_committed)
            except StoreError:
                raise
            except _Recheck:
                continue  # rolled back; fn takes its careful way now (not a failure: no backoff)
            except sa.exc.SQLAlchemyError as err:
                transient = _is_transient(err)
                maybe_committed = maybe_committed or transient
                retryable = transient or (conflicts_retry and isinstance(err, sa.exc.IntegrityError))
                if not retryable or attempt >= self.retry.max_retries:
                    tries = f" after {attempt + 1} tries" if attempt else ""
                    first_line = str(err).splitlines()[0] if str(err) else ""
                    raise (StoreUnavailable if transient else StoreError)(
                        f"{self.url_masked}: {what} failed{tries}: {err.__class__.__name__}: {first_line}"
                    ) from err
                with self._rng_lock:
                    u = self._rng.random()
                delay_s = retry_delay_s(attempt, u, self.retry)
                log.warning(
                    "%s: %s: %s; retry %d in %.2f s",
                    self.url_masked,
                    what,
                    err.__class__.__name__,
                    attempt + 1,
                    delay_s,
                )
                self._sleep(delay_s)
                attempt += 1

    # -- schema ----------------------------------------------------------------------------------
    def create_schema(self) -> None:
        """Create the tables and indexes that do not exist yet, and add the columns and indexes a
        database made by an earlier version lacks (idempotent).

        Columns added after the first release are nullable, so adding them to a table with rows is
        safe on every backend (``ALTER TABLE ... ADD COLUMN``); a NULL reads as the column's
        default (see :func:`_task_record`). Nothing is ever dropped or changed."""
        self._with_retry("create schema", lambda c, _r: _create_and_upgrade(c))

    def ping(self) -> None:
        """One round trip (``SELECT 1``) with no retry: :class:`StoreUnavailable` if the database
        does not answer. For a caller waiting out an outage."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except sa.exc.SQLAlchemyError as err:
            first = str(err).splitlines()[0] if str(err) else err.__class__.__name__
            raise (StoreUnavailable if _is_transient(err) or isinstance(err, sa.exc.OperationalError) else StoreError)(
                f"{self.url_masked}: ping failed: {first}"
            ) from err

    def drop_schema(self) -> None:
        """Drop the store's tables (for tests)."""
        self._with_retry("drop schema", lambda c, _r: metadata.drop_all(c))

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
                    raise _Recheck() from None
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
        """Set a task's status (and result or error, if given).

        A terminal status (succeeded, failed) is final: if the task is already terminal, or does
        not exist, this returns False and changes nothing, so each task has exactly one terminal
        record. True when this call made the change.
        """
        _check_status(status)
        values: dict[str, Any] = {"status": status, "updated_s": now_s}
        if result is not None:
            values["result"] = result
        if error is not None:
            values["error"] = error

        def run(conn: sa.Connection, retrying: bool) -> bool:
            q = (
                tasks_table.update()
                .where(
                    tasks_table.c.tenant == tenant,
                    tasks_table.c.task_id == task_id,
                    tasks_table.c.status.not_in(TERMINAL),
                )
                .values(**values)
            )
            # MySQL reports matched rows (SQLAlchemy sets CLIENT_FOUND_ROWS), SQLite changed rows:
            # both 1 when the task was found non-terminal.
            if conn.execute(q).rowcount == 1:
                return True
            if not retrying:
                return False
            # an earlier try may have committed this very update before the connection dropped
            row = (
                conn.execute(
                    sa.select(*(tasks_table.c[k] for k in values)).where(
                        tasks_table.c.tenant == tenant, tasks_table.c.task_id == task_id
                    )
                )
                .mappings()
                .first()
            )
            return row is not None and status in TERMINAL and dict(row) == values

        return self._with_retry("update status", run)

    def update_statuses(self, updates: Sequence[StatusUpdate]) -> None:
        """Apply many :meth:`update_status` calls, in order, in one transaction (one executemany).

        The same rules hold (a terminal status is final; a missing result or error leaves the stored
        one), but which updates took effect is not reported: use :meth:`update_status` or
        :meth:`finish_many` when the caller acts on that.
        """
        if not updates:
            return
        for u in updates:
            _check_status(u.status)
        rows = [(u.status, float(u.now_s), u.result, u.error, u.tenant, u.task_id) for u in updates]
        # Re-running after an ambiguous commit is harmless: terminal rows refuse every update, and a
        # non-terminal update re-applied writes the same values again.
        self._with_retry("update statuses", lambda c, _r: _UPDATE_STATUS.many(c, rows))

    def finish_many(self, tenant: str, items: Sequence[tuple[str, str, str | None]], now_s: float) -> set[str]:
        """Write terminal statuses ``(task_id, status, error)`` in one transaction; return the ids
        that changed. A task already terminal is left alone (exactly one terminal record); of two
        items for one task in the batch, the first wins."""
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
        (terminal is final, the first of two wins); a retry of a task already terminal changes
        nothing."""
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
                        raise _Recheck() from None
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
            for chunk in _chunks(ids):
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
        does not know of. Returns the ids moved (a task in another status is left alone)."""
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return set()
        for st in from_statuses:
            _check_status(st)
        now_s = float(now_s)
        c = tasks_table.c

        def run(conn: sa.Connection, retrying: bool) -> set[str]:
            moved: list[str] = []
            ours: set[str] = set()
            for chunk in _chunks(ids):
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
            for chunk in _chunks(moved):
                conn.execute(
                    tasks_table.update()
                    .where(c.tenant == tenant, c.task_id.in_(chunk), c.status.in_(list(from_statuses)))
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
            for chunk in _chunks(ids):
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
            return _task_record(row) if row else None

        return self._with_retry("read task", run)

    def tasks_with_status(self, tenant: str, statuses: Iterable[str]) -> list[TaskRecord]:
        """A tenant's tasks in the given statuses, oldest first (to rebuild a queue Redis lost)."""
        statuses = list(statuses)
        for s in statuses:
            _check_status(s)
        q = (
            sa.select(tasks_table)
            .where(tasks_table.c.tenant == tenant, tasks_table.c.status.in_(statuses))
            .order_by(tasks_table.c.created_s, tasks_table.c.task_id)
        )
        return self._with_retry("read tasks", lambda c, _r: [_task_record(r) for r in c.execute(q).mappings()])

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
                    raise _Recheck() from None
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
            for chunk in _chunks(ids):
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

    # -- audit -------------------------------------------------------------------------------
    def append_audit(self, events: Sequence[AuditEvent]) -> None:
        """Append events in one transaction. The log is append-only: there is no update or delete.

        On a retry the batch is first looked for (see the module docstring): an identical batch
        already in the log within the same time span counts as written.
        """
        if not events:
            return
        rows = [_audit_values(e) for e in events]

        def run(conn: sa.Connection, retrying: bool) -> None:
            if retrying and _audit_batch_present(conn, rows):
                return
            _INSERT_AUDIT.many(conn, rows)

        self._with_retry("append audit", run)

    def audit(self, tenant: str, limit: int = 100) -> list[AuditEvent]:
        """A tenant's audit events, newest first."""
        q = sa.select(audit_table).where(audit_table.c.tenant == tenant).order_by(audit_table.c.id.desc()).limit(limit)
        return self._with_retry(
            "read audit",
            lambda c, _r: [
                AuditEvent(
                    r["ts_s"],
                    r["tenant"],
                    r["actor"],
                    r["action"],
                    r["subject"],
                    json.loads(r["detail"]),
                )
                for r in c.execute(q).mappings()
            ],
        )

    # -- the tuner's decisions ------------------------------------------------------------------
    def record_decisions(self, records: Sequence[Any], cluster: str = "autotune") -> None:
        """Append the tuner's decisions (control.tuner.DecisionRecord) in one transaction; like the
        audit log, a retried batch already present counts as written."""
        if not records:
            return
        rows = [_decision_row(r, cluster) for r in records]

        def run(conn: sa.Connection, retrying: bool) -> None:
            if retrying:
                first, last = rows[0], rows[-1]
                present = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(decisions_table)
                    .where(
                        decisions_table.c.cluster == cluster,
                        decisions_table.c.time_s.between(first["time_s"], last["time_s"]),
                        decisions_table.c.reason.in_({r["reason"] for r in rows}),
                    )
                ).scalar_one()
                if present >= len(rows):
                    return
            conn.execute(decisions_table.insert(), rows)

        self._with_retry("record decisions", run)

    def last_decisions(self, n: int, cluster: str = "autotune") -> list[Any]:
        """The newest ``n`` decisions of ``cluster``, newest first."""
        from control.tuner import DecisionRecord

        q = (
            sa.select(decisions_table)
            .where(decisions_table.c.cluster == cluster)
            .order_by(decisions_table.c.id.desc())
            .limit(n)
        )

        def run(conn: sa.Connection, _retrying: bool) -> list[Any]:
            out = []
            for r in conn.execute(q).mappings():
                out.append(
                    DecisionRecord(
                        time_s=r["time_s"],
                        mode=r["mode"],
                        policy=r["policy"],
                        controller=r["controller"],
                        observation=None if r["observation"] is None else json.loads(r["observation"]),
                        policy_output=r["policy_output"],
                        guard_applied=r["guard_applied"],
                        guard_reasons=tuple(json.loads(r["guard_reasons"])),
                        applied=r["applied"],
                        previous=r["previous"],
                        reason=r["reason"],
                        fallback=bool(r["fallback"]),
                        who=r["who"],
                        emergency=bool(r["emergency"]),
                        extra=json.loads(r["extra"]),
                    )
                )
            return out

        return self._with_retry("read decisions", run)

    # -- operator requests to a running tuner ---------------------------------------------------
    def request_control(
        self,
        cluster: str,
        user: str,
        roles: Iterable[str],
        action: str,
        value: str,
        now_s: float,
        *,
        run_id: str | None = None,
        nonce: str | None = None,
        issued_s: float | None = None,
        expires_s: float | None = None,
        signature: str | None = None,
    ) -> int:
        """Queue an operator action (``mode`` or ``override``) for the running tuner of ``cluster``,
        which applies or refuses it at its next interval (:meth:`finish_control`); returns its id.
        The keyword fields are the signed request (:mod:`autotune.operator_auth`); the tuner refuses
        a row without them. ``roles`` is kept for older readers; the tuner ignores it."""
        if action not in ("mode", "override"):
            raise ValueError(f"control action must be 'mode' or 'override', got {action!r}")
        row = {
            "cluster": cluster,
            "time_s": now_s,
            "user": user,
            "roles": json.dumps(sorted(roles)),
            "action": action,
            "value": str(value),
            "status": "pending",
            "detail": None,
            "run_id": run_id,
            "nonce": nonce,
            "issued_s": issued_s,
            "expires_s": expires_s,
            "signature": signature,
        }
        return self._with_retry(
            "request control", lambda c, _r: int(c.execute(control_table.insert(), row).inserted_primary_key[0])
        )

    def pending_control(self, cluster: str) -> list[dict[str, Any]]:
        """The cluster's pending operator requests, oldest first."""
        q = (
            sa.select(control_table)
            .where(control_table.c.cluster == cluster, control_table.c.status == "pending")
            .order_by(control_table.c.id)
        )
        return self._with_retry(
            "read control requests",
            lambda c, _r: [{**dict(r), "roles": json.loads(r["roles"])} for r in c.execute(q).mappings()],
        )

    def finish_control(self, request_id: int, status: str, detail: str | None = None) -> None:
        if status not in ("applied", "refused"):
            raise ValueError(f"control request status must be applied or refused, got {status!r}")
        stmt = control_table.update().where(control_table.c.id == request_id).values(status=status, detail=detail)
        self._with_retry("finish control request", lambda c, _r: c.execute(stmt))

    def control_request(self, request_id: int) -> dict[str, Any] | None:
        q = sa.select(control_table).where(control_table.c.id == request_id)
        row = self._with_retry("read control request", lambda c, _r: c.execute(q).mappings().first())
        return None if row is None else {**dict(row), "roles": json.loads(row["roles"])}

    def finished_control_with_nonces(self, cluster: str, nonces: Iterable[str]) -> list[dict[str, Any]]:
        """The cluster's applied or refused requests carrying one of ``nonces`` (to catch replays)."""
        wanted = sorted({n for n in nonces if n})

        def run(conn: sa.Connection, _retrying: bool) -> list[dict[str, Any]]:
            out = []
            for chunk in _chunks(wanted):
                q = sa.select(control_table).where(
                    control_table.c.cluster == cluster,
                    control_table.c.status != "pending",
                    control_table.c.nonce.in_(chunk),
                )
                out += [{**dict(r), "roles": json.loads(r["roles"])} for r in conn.execute(q).mappings()]
            return out

        return self._with_retry("read finished control requests", run) if wanted else []

    # -- the tuner runs that control requests are bound to ---------------------------------------
    def register_tuner(
        self,
        cluster: str,
        run_id: str,
        now_s: float,
        *,
        host: str,
        pid: int,
        interval_s: float | None = None,
        run_dir: str | None = None,
    ) -> None:
        """Record that tuner run ``run_id`` of ``cluster`` is running (again, on a resumed run)."""
        row = {
            "run_id": run_id,
            "cluster": cluster,
            "started_s": now_s,
            "heartbeat_s": now_s,
            "host": host,
            "pid": pid,
            "status": "running",
            "interval_s": interval_s,
            "run_dir": run_dir,
        }

        def run(conn: sa.Connection, _retrying: bool) -> None:
            t = tuner_runs_table
            found = conn.execute(sa.select(t.c.run_id).where(t.c.run_id == run_id)).first()
            if found is None:
                conn.execute(t.insert(), row)
            else:  # the same run again: it keeps its start, the rest is now
                conn.execute(
                    t.update()
                    .where(t.c.run_id == run_id)
                    .values({k: v for k, v in row.items() if k not in ("run_id", "started_s")})
                )

        self._with_retry("register tuner", run)

    def tuner_heartbeat(self, run_id: str, now_s: float, status: str = "running") -> None:
        """The tuner is still there (``running``) or has stopped (``ended``)."""
        if status not in ("running", "ended"):
            raise ValueError(f"tuner status must be running or ended, got {status!r}")
        stmt = (
            tuner_runs_table.update()
            .where(tuner_runs_table.c.run_id == run_id)
            .values(heartbeat_s=now_s, status=status)
        )
        self._with_retry("tuner heartbeat", lambda c, _r: c.execute(stmt))

    def tuner_runs(self, cluster: str, limit: int = 20) -> list[dict[str, Any]]:
        """The cluster's tuner runs, the last heard from first."""
        q = (
            sa.select(tuner_runs_table)
            .where(tuner_runs_table.c.cluster == cluster)
            .order_by(tuner_runs_table.c.heartbeat_s.desc())
            .limit(limit)
        )
        return self._with_retry("read tuner runs", lambda c, _r: [dict(r) for r in c.execute(q).mappings()])

    def close(self) -> None:
        self.engine.dispose()


class BatchWriter:
    """A thread-safe buffer in front of a :class:`TaskStore` that writes in batches.

    ``add_attempts``, ``add_status`` and ``add_audit`` only append to memory. A background thread
    writes what is pending when ``max_batch`` items are waiting or the oldest has waited
    ``max_delay_s``: attempts first, then status updates in the order they were added, then audit
    events, each kind in transactions of at most ``max_batch`` rows. Every store write is
    idempotent, so a batch whose write failed goes back to the front of the buffer and is tried
    again after the shared backoff; nothing is dropped. :meth:`flush` writes everything now (raising
    :class:`StoreError` if that fails, the items staying buffered); :meth:`close` flushes, retrying
    up to ``retry.max_retries`` times, and stops the thread.

    Buffered status updates do not report whether they took effect (see
    :meth:`TaskStore.update_statuses`). While the database is down the buffer grows up to about
    ``max_pending`` items, those being written included; then producers wait for room (backpressure:
    the cluster loop stops settling, so it stops claiming) and, after ``full_timeout_s``, get a
    :class:`StoreError` for what they tried to add. What was accepted is never dropped.
    """

    def __init__(
        self,
        store: TaskStore,
        *,
        max_batch: int = 1000,
        max_delay_s: float = 0.05,
        max_pending: int = 200_000,
        full_timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not (isinstance(max_batch, int) and max_batch >= 1):
            raise ValueError(f"BatchWriter.max_batch must be an int >= 1, got {max_batch!r}")
        if not max_delay_s > 0:
            raise ValueError(f"BatchWriter.max_delay_s must be > 0, got {max_delay_s!r}")
        if not (isinstance(max_pending, int) and max_pending >= max_batch):
            raise ValueError(f"BatchWriter.max_pending must be an int >= max_batch ({max_batch}), got {max_pending!r}")
        if not full_timeout_s >= 0:
            raise ValueError(f"BatchWriter.full_timeout_s must be >= 0, got {full_timeout_s!r}")
        self.store = store
        self.max_pending = max_pending
        self.full_timeout_s = float(full_timeout_s)
        self.max_batch = max_batch
        self.max_delay_s = float(max_delay_s)
        self.retry = retry if retry is not None else RetryPolicy(max_retries=5, base_s=0.05, jitter_s=0.05, cap_s=2.0)
        self._sleep = sleep
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._cond = threading.Condition()
        self._flush_lock = threading.Lock()  # one writer at a time keeps the order of status updates
        self._attempts: list[AttemptRecord] = []
        self._statuses: list[StatusUpdate] = []
        self._audit: list[AuditEvent] = []
        self._oldest_s: float | None = None
        self._writing = 0  # items a flush has taken out of the buffer and is writing
        self._retry_at: float | None = None  # clock time before which the thread does not retry
        self._closing = False
        self._closed = False
        self.failures = 0  # consecutive failed background flushes
        self.last_error: BaseException | None = None
        self.written: Counter[str] = Counter()  # items handed to the store, by kind
        self._thread = threading.Thread(target=self._run, name="store-batch-writer", daemon=True)
        self._thread.start()

    # -- producers ---------------------------------------------------------------------------
    def add_attempts(self, attempts: Iterable[AttemptRecord]) -> None:
        self._add("_attempts", list(attempts))

    def add_status(
        self,
        tenant: str,
        task_id: str,
        status: str,
        now_s: float,
        *,
        result: str | None = None,
        error: str | None = None,
    ) -> None:
        _check_status(status)
        self._add("_statuses", [StatusUpdate(tenant, task_id, status, now_s, result, error)])

    def add_audit(self, events: Iterable[AuditEvent]) -> None:
        self._add("_audit", list(events))

    def _add(self, buffer_name: str, items: list) -> None:
        if not items:
            return
        with self._cond:
            # looked up under the lock: flush() swaps in new lists, and a list fetched before the
            # lock could be one flush() already took, whose late additions would never be written
            buffer = getattr(self, buffer_name)
            if self._closing:
                raise StoreError(f"{self.store.url_masked}: BatchWriter is closed; {len(items)} items refused")
            if self._held_locked() and self._held_locked() + len(items) > self.max_pending:
                self._wait_for_room(len(items))
                buffer = getattr(self, buffer_name)  # flush() may have swapped the lists meanwhile
            was_empty = self._pending_locked() == 0
            buffer.extend(items)
            if was_empty:
                self._oldest_s = self._clock()
            if was_empty or self._pending_locked() >= self.max_batch:
                self._cond.notify_all()

    def _wait_for_room(self, n: int) -> None:
        """Under the lock: wait until ``n`` more items fit (or the buffer is empty); StoreError after
        ``full_timeout_s``."""
        deadline = time.monotonic() + self.full_timeout_s
        while self._held_locked() and self._held_locked() + n > self.max_pending:
            self._cond.notify_all()  # the writer thread may be waiting for its delay
            left = deadline - time.monotonic()
            if left <= 0:
                why = f" (last error: {self.last_error})" if self.last_error is not None else ""
                raise StoreError(
                    f"{self.store.url_masked}: BatchWriter full: {self._held_locked()} items "
                    f"waiting to be written for over {self.full_timeout_s:g} s{why}; "
                    f"{n} more refused"
                )
            self._cond.wait(min(left, 0.5))

    @property
    def pending(self) -> int:
        with self._cond:
            return self._pending_locked()

    def _pending_locked(self) -> int:
        return len(self._attempts) + len(self._statuses) + len(self._audit)

    def _held_locked(self) -> int:
        """Items buffered or being written: what the ``max_pending`` bound counts."""
        return self._pending_locked() + self._writing

    # -- writing -----------------------------------------------------------------------------
    def flush(self) -> None:
        """Write everything buffered now; on failure raise :class:`StoreError`, items kept."""
        with self._flush_lock:
            with self._cond:
                attempts, statuses, audit = self._attempts, self._statuses, self._audit
                self._attempts, self._statuses, self._audit = [], [], []
                self._oldest_s = None
                self._writing = len(attempts) + len(statuses) + len(audit)
            if attempts or statuses or audit:
                try:
                    self._write(attempts, statuses, audit)
                finally:
                    with self._cond:
                        self._writing = 0  # written, or put back into the buffer by _write
                        self._cond.notify_all()  # producers waiting for room

    def _write(self, attempts: list, statuses: list, audit: list) -> None:
        """Write the three lists in chunks; on failure put back what was not written, in order."""
        done = {"attempts": 0, "statuses": 0, "audit": 0}
        try:
            for kind, items, write in (
                ("attempts", attempts, self.store.record_attempts),
                ("statuses", statuses, self.store.update_statuses),
                ("audit", audit, self.store.append_audit),
            ):
                for i in range(0, len(items), self.max_batch):
                    write(items[i : i + self.max_batch])
                    done[kind] = min(len(items), i + self.max_batch)
                    self.written[kind] += done[kind] - i
        except BaseException:
            with self._cond:
                self._attempts[:0] = attempts[done["attempts"] :]
                self._statuses[:0] = statuses[done["statuses"] :]
                self._audit[:0] = audit[done["audit"] :]
                if self._pending_locked():
                    self._oldest_s = self._clock() if self._oldest_s is None else self._oldest_s
            raise

    def _due_in_s(self) -> float | None:
        """Seconds until a flush is due (0: now); None when nothing is pending. Under the lock."""
        pending = self._pending_locked()
        if pending == 0:
            return None
        now = self._clock()
        if self._retry_at is not None and now < self._retry_at:
            return self._retry_at - now  # backing off after a failed flush, however full the buffer
        if pending >= self.max_batch or self._oldest_s is None:
            return 0.0
        return max(0.0, self._oldest_s + self.max_delay_s - now)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closing:
                    due = self._due_in_s()
                    if due == 0.0:
                        break
                    self._cond.wait(due)
                if self._closing:
                    return  # close() does the last flush in the caller's thread, so it can raise
            try:
                self.flush()
                self.failures = 0
                self._retry_at = None
            except Exception as err:
                self.last_error = err
                delay_s = retry_delay_s(min(self.failures, 30), self._rng.random(), self.retry)
                self.failures += 1
                log.warning(
                    "BatchWriter: flush failed (%s); %d items kept, retry in %.2f s",
                    err,
                    self.pending,
                    delay_s,
                )
                with self._cond:
                    self._retry_at = self._clock() + delay_s

    def close(self) -> None:
        """Stop the background thread and write everything still buffered.

        Retries a failing flush up to ``retry.max_retries`` times with the shared backoff; if it
        still fails, raises :class:`StoreError` saying how many items were not written (they stay in
        :attr:`pending`, so a caller can try :meth:`flush` again). Does not close the store.
        """
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        for attempt in range(self.retry.max_retries + 1):
            try:
                self.flush()
                break
            except Exception as err:
                self.last_error = err
                if attempt == self.retry.max_retries:
                    raise StoreError(
                        f"{self.store.url_masked}: BatchWriter.close: {self.pending} items not "
                        f"written after {attempt + 1} tries: {err}"
                    ) from err
                self._sleep(retry_delay_s(attempt, self._rng.random(), self.retry))
        self._closed = True

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- helpers ---------------------------------------------------------------------------------------
def _decision_row(r: Any, cluster: str) -> dict[str, Any]:
    out = r.policy_output
    return {
        "cluster": cluster,
        "time_s": float(r.time_s),
        "mode": str(r.mode),
        "policy": r.policy,
        "controller": r.controller,
        "observation": None if r.observation is None else json.dumps([float(x) for x in r.observation]),
        # NaN is not storable (nor JSON): a NaN proposal is kept as NULL, its guard reason says why
        "policy_output": None if out is None or not math.isfinite(out) else float(out),
        "guard_applied": r.guard_applied,
        "guard_reasons": json.dumps(list(r.guard_reasons)),
        "applied": int(r.applied),
        "previous": int(r.previous),
        "reason": r.reason,
        "fallback": bool(r.fallback),
        "who": r.who,
        "emergency": bool(r.emergency),
        "extra": json.dumps(r.extra, default=str, sort_keys=True),
    }


def _create_and_upgrade(conn: sa.Connection) -> None:
    """``create_all``, then the nullable columns and the indexes existing tables lack."""
    metadata.create_all(conn)
    inspector = sa.inspect(conn)
    for table in metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            if not column.nullable:  # a NOT NULL column is never added later; this is a bug here
                raise StoreError(f"table {table.name!r} lacks column {column.name!r}, which cannot be added")
            ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {conn.dialect.identifier_preparer.format_table(table)} ADD COLUMN {ddl}")
        indexes = {ix["name"] for ix in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(conn)


def _sqlite_wal(dbapi_conn: Any, _record: Any) -> None:
    """WAL lets readers go on while a writer commits; NORMAL sync survives a process crash."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _check_status(status: str) -> None:
    if status not in TASK_STATUSES:
        raise ValueError(f"task status must be one of {TASK_STATUSES}, got {status!r}")


def _chunks(ids: Sequence[Any]) -> Iterable[list[Any]]:
    """``ids`` in lists of at most ``_IN_CHUNK`` (what one ``_PreparedIn`` statement takes); the
    store and the SQL queue chunk by this one bound."""
    for i in range(0, len(ids), _IN_CHUNK):
        yield list(ids[i : i + _IN_CHUNK])


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
    :meth:`TaskStore.finish_many`). Raises :class:`_Recheck` (the caller's transaction rolls back
    and is redone with ``careful[0]`` set) when the fast way finds a task terminal or missing."""
    if not (retrying or careful[0]):
        # the usual case, none of the tasks terminal yet: the UPDATEs alone. Each reports the rows
        # it changed (MySQL: matched, with the CLIENT_FOUND_ROWS flag SQLAlchemy sets); all of them
        # means every task changed. Fewer (a task already terminal, or missing) rolls back, and the
        # careful way reads the tasks first.
        fast: dict[tuple[str, str | None], list[str]] = {}
        for tid, (status, error) in first.items():
            fast.setdefault((status, error), []).append(tid)
        for (status, error), tids in fast.items():
            for chunk in _chunks(tids):
                if _FINISH_IN.one(conn, (status, now_s, error, tenant), chunk).rowcount != len(chunk):
                    careful[0] = True
                    raise _Recheck()
        return set(first)
    current: dict[str, tuple[str, float, str | None]] = {}
    for chunk in _chunks(list(first)):
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
        if cur[0] not in TERMINAL:
            changed.add(tid)
            groups.setdefault((status, error), []).append(tid)
        elif retrying and cur == (status, now_s, error):
            changed.add(tid)  # written by an earlier try whose commit went through
    for (status, error), tids in groups.items():
        for chunk in _chunks(tids):
            _FINISH_IN.one(conn, (status, now_s, error, tenant), chunk)
    return changed


def _rows_by_key(
    conn: sa.Connection, table: sa.Table, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """The stored rows of ``table`` among ``(tenant, task_id)`` keys, as dicts."""
    by_tenant: dict[str, list[str]] = {}
    for tenant, tid in keys:
        by_tenant.setdefault(tenant, []).append(tid)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for tenant, ids in by_tenant.items():
        for chunk in _chunks(ids):
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
        for chunk in _chunks(sorted(ids)):
            q = sa.select(c.tenant, c.task_id, c.attempt).where(c.tenant == tenant, c.task_id.in_(chunk))
            present.update((t, k, int(n)) for t, k, n in conn.execute(q))
    return present


def _audit_batch_present(conn: sa.Connection, rows: list[tuple]) -> bool:
    """Whether every row of an audit batch (tuples in ``_AUDIT_FIELDS`` order) is in the log
    already (an earlier try committed)."""
    wanted = Counter(rows)
    c = audit_table.c
    found: Counter = Counter()
    for tenant in {r[1] for r in rows}:
        ts = [r[0] for r in rows if r[1] == tenant]
        q = sa.select(*(c[f] for f in _AUDIT_FIELDS)).where(c.tenant == tenant, c.ts_s >= min(ts), c.ts_s <= max(ts))
        found.update(tuple(r) for r in conn.execute(q))
    return all(found[k] >= n for k, n in wanted.items())


_sorted_json = json.JSONEncoder(sort_keys=True).encode  # json.dumps(..., sort_keys=True), one encoder


def _task_values(t: TaskRecord) -> tuple:
    """A task's row in ``_TASK_COLUMNS`` order, as the DBAPI takes it."""
    return (
        t.tenant,
        t.task_id,
        t.type,
        t.status,
        float(t.priority),
        None if t.deadline_s is None else float(t.deadline_s),
        _sorted_json(t.payload),
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


def _audit_values(e: AuditEvent) -> tuple:
    """An audit event's row in ``_AUDIT_FIELDS`` order."""
    return (
        float(e.ts_s),
        e.tenant,
        e.actor,
        e.action,
        e.subject,
        _sorted_json(e.detail),
    )


def _insert_of(table: sa.Table, fields: Sequence[str]) -> _Prepared:
    """The INSERT of ``fields`` into ``table``, prepared."""
    return _Prepared(
        lambda: table.insert().values({f: sa.bindparam(f, type_=table.c[f].type) for f in fields}),
        fields,
    )


_TERMINAL_LITERALS: list[sa.ColumnClause[Any]] = [
    sa.literal_column(f"'{s}'") for s in TERMINAL
]  # constants, not parameters
_TASK_COLUMNS = tuple(c.name for c in tasks_table.columns)
_ATTEMPT_COLUMNS = tuple(c.name for c in attempts_table.columns)
_AUDIT_FIELDS = ("ts_s", "tenant", "actor", "action", "subject", "detail")
_INSERT_TASK = _insert_of(tasks_table, _TASK_COLUMNS)
_INSERT_ATTEMPT = _insert_of(attempts_table, _ATTEMPT_COLUMNS)
_INSERT_AUDIT = _insert_of(audit_table, _AUDIT_FIELDS)


def _unfinished_task() -> tuple:
    """WHERE: the task of bind parameters ``b_tenant``, ``b_task_id``, if not terminal yet."""
    return (
        tasks_table.c.tenant == sa.bindparam("b_tenant"),
        tasks_table.c.task_id == sa.bindparam("b_task_id"),
        tasks_table.c.status.not_in(_TERMINAL_LITERALS),
    )


# update_statuses: a NULL result or error leaves the stored one; a terminal task is left alone
_UPDATE_STATUS = _Prepared(
    lambda: (
        tasks_table.update()
        .where(*_unfinished_task())
        .values(
            status=sa.bindparam("b_status"),
            updated_s=sa.bindparam("b_now_s"),
            result=sa.func.coalesce(sa.bindparam("b_result", type_=sa.Text), tasks_table.c.result),
            error=sa.func.coalesce(sa.bindparam("b_error", type_=sa.Text), tasks_table.c.error),
        )
    ),
    ("b_status", "b_now_s", "b_result", "b_error", "b_tenant", "b_task_id"),
)
# finish_many: the tasks' current state (locked on MySQL), then one terminal status for many; the
# error is written as given (a success clears an earlier retry's error), the result left alone
_SELECT_FOR_FINISH = _PreparedIn(
    lambda ids: (
        sa.select(tasks_table.c.task_id, tasks_table.c.status, tasks_table.c.updated_s, tasks_table.c.error)
        .where(tasks_table.c.tenant == sa.bindparam("b_tenant"), tasks_table.c.task_id.in_(ids))
        .with_for_update()
    ),
    ("b_tenant",),
)
_FINISH_IN = _PreparedIn(
    lambda ids: (
        tasks_table.update()
        .where(
            tasks_table.c.tenant == sa.bindparam("b_tenant"),
            tasks_table.c.task_id.in_(ids),
            tasks_table.c.status.not_in(_TERMINAL_LITERALS),
        )
        .values(
            status=sa.bindparam("b_status"),
            updated_s=sa.bindparam("b_now_s"),
            error=sa.bindparam("b_error", type_=sa.Text),
        )
    ),
    ("b_status", "b_now_s", "b_error", "b_tenant"),
)


# settle: a retry scheduled (status, attempt counter, due time), never over a terminal status
_SCHEDULE_RETRY = _Prepared(
    lambda: (
        tasks_table.update()
        .where(*_unfinished_task())
        .values(
            status=sa.literal_column("'retrying'"),
            attempt=sa.bindparam("b_attempt"),
            retry_at_s=sa.bindparam("b_due_s"),
            error=sa.bindparam("b_error", type_=sa.Text),
            updated_s=sa.bindparam("b_now_s"),
        )
    ),
    ("b_attempt", "b_due_s", "b_error", "b_now_s", "b_tenant", "b_task_id"),
)
_CLAIM_VIEW = _PreparedIn(
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


def _task_record(row: Any) -> TaskRecord:
    d = dict(row)
    d["payload"] = json.loads(d["payload"])
    d["dependencies"] = tuple(json.loads(d["dependencies"]))
    d["attempt"] = int(d.get("attempt") or 0)  # NULL: a row from before the column existed
    return TaskRecord(**d)
