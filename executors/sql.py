"""SQL helpers shared by the durable store (:mod:`executors.store`) and the SQL queue
(:mod:`executors.sqlite_queue`): one code path, SQLAlchemy Core, for SQLite and MySQL/MariaDB.

- :class:`Prepared` and :class:`PreparedIn`: Core statements compiled once per dialect (the
  statement cache) and run on plain tuples, for the hot paths (thousands of rows a second);
- :func:`chunks` and :data:`IN_CHUNK`: the one bound on ``IN (...)`` lists;
- :func:`create_engine`: the connection settings both use (SQLite: WAL, a busy timeout, one
  connection per thread; a server: pooled connections checked before use);
- :func:`is_transient` and :func:`mysql_code`: which errors mean "try the transaction again".
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL

IN_CHUNK = 500  # ids per IN (...) list: well under every backend's bound-parameter limit


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


class Prepared:
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


class PreparedIn:
    """A :class:`Prepared` with an ``IN (...)`` list of ids: ``build(ids)`` gets an expanding
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
        """Execute with ``head`` (the other parameters) and ``ids`` (1 to ``IN_CHUNK`` of them)."""
        n = len(ids)
        if not 0 < n <= IN_CHUNK:
            raise ValueError(f"an IN list of {n} ids; 1 to {IN_CHUNK} per statement")
        size = min(IN_CHUNK, 1 << (n - 1).bit_length())
        ids = tuple(ids)
        if size > n:
            ids += (ids[-1],) * (size - n)
        sql, conv = self._form(conn.dialect, size)
        row = head + ids
        return conn.exec_driver_sql(sql, conv(row) if conv is not None else row)


def prepared_insert(table: sa.Table, fields: Sequence[str]) -> Prepared:
    """The INSERT of ``fields`` into ``table``, prepared."""
    return Prepared(
        lambda: table.insert().values({f: sa.bindparam(f, type_=table.c[f].type) for f in fields}),
        fields,
    )


# MySQL/MariaDB error codes after which the transaction was rolled back and a retry can succeed.
# Lost connections (2006, 2013, ...) are flagged by SQLAlchemy already (``connection_invalidated``);
# these are the ones it does not flag: cannot connect (server restarting) and lock conflicts.
MYSQL_RETRYABLE = {
    2002,
    2003,  # can't connect (socket / TCP)
    1205,  # lock wait timeout exceeded
    1213,  # deadlock found; the transaction was rolled back
}


def mysql_code(err: BaseException) -> int | None:
    """The MySQL/MariaDB error code of a wrapped DBAPI error (None: not one, or SQLite's)."""
    orig = getattr(err, "orig", None)
    return orig.args[0] if orig is not None and orig.args and isinstance(orig.args[0], int) else None


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` means "try the whole transaction again", not "this write is wrong"."""
    if not isinstance(err, sa.exc.DBAPIError):
        return False
    if err.connection_invalidated:
        return True
    if mysql_code(err) in MYSQL_RETRYABLE:
        return True
    # SQLite: another writer held the lock for longer than the busy timeout.
    return isinstance(err, sa.exc.OperationalError) and "database is locked" in str(err.orig)


def create_engine(url: URL, *, busy_timeout_s: float = 30.0, **server_kw: Any) -> sa.Engine:
    """An engine for ``url`` with the settings the store and the SQL queue share.

    SQLite: one connection per thread in the pool (``check_same_thread`` off), a busy timeout of
    ``busy_timeout_s`` that waits out another writer, and WAL (:func:`sqlite_wal`). No pre-ping: a
    file has no server to drop the connection (it would cost a query per transaction). A server
    (MySQL/MariaDB): pre-ping, as a restart or KILL leaves dead pooled connections; ``server_kw``
    goes to :func:`sqlalchemy.create_engine` (e.g. an isolation level). Raises what
    :func:`sqlalchemy.create_engine` raises for a bad URL or a missing driver
    (``ArgumentError``, ``ImportError``), for the caller to name."""
    if url.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout_s})
        sa.event.listen(engine, "connect", sqlite_wal)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, **server_kw)


def sqlite_wal(dbapi_conn: Any, _record: Any) -> None:
    """WAL lets readers go on while a writer commits; NORMAL sync survives a process crash."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def chunks(ids: Sequence[Any]) -> Iterable[list[Any]]:
    """``ids`` in lists of at most ``IN_CHUNK`` (what one ``PreparedIn`` statement takes); the
    store and the SQL queue chunk by this one bound."""
    for i in range(0, len(ids), IN_CHUNK):
        yield list(ids[i : i + IN_CHUNK])
