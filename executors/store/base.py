"""What every part of the store shares: the schema's :data:`metadata`, the errors, and
:class:`StoreBase`, the connection to one database with its retried transactions.

The parts of the store (:mod:`~executors.store.tasks`, :mod:`~executors.store.audit`,
:mod:`~executors.store.decisions`, :mod:`~executors.store.control_requests`) are mixins over
:class:`StoreBase`, each with its own tables on :data:`metadata`; :class:`executors.store.TaskStore`
puts them together.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from core.retry import RetryPolicy, retry_delay_s
from executors.sql import create_engine, is_transient

log = logging.getLogger(__name__)

T = TypeVar("T")

metadata = sa.MetaData()  # every table of the store, whichever part defines it


class StoreError(RuntimeError):
    """A failed store operation; the message names the database (password masked) and the step."""


class StoreUnavailable(StoreError):
    """The database could not be reached (or kept dropping the connection) through every retry: an
    outage, which a caller may wait out, not a write that is wrong."""


class Recheck(Exception):
    """A fast write met a key conflict: roll back and redo the write its careful way, at once."""


class StoreBase:
    """One SQL database (MySQL/MariaDB or SQLite) and its retried transactions.

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
        try:
            self.engine = create_engine(self.url, busy_timeout_s=30.0)
        except (sa.exc.ArgumentError, ImportError) as err:
            raise StoreError(f"{self.url_masked}: cannot open the database: {err}") from None

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
            except Recheck:
                continue  # rolled back; fn takes its careful way now (not a failure: no backoff)
            except sa.exc.SQLAlchemyError as err:
                transient = is_transient(err)
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
        default (see :func:`executors.store.tasks.task_record`). Nothing is ever dropped or changed."""
        self._with_retry("create schema", lambda c, _r: _create_and_upgrade(c))

    def ping(self) -> None:
        """One round trip (``SELECT 1``) with no retry: :class:`StoreUnavailable` if the database
        does not answer. For a caller waiting out an outage."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except sa.exc.SQLAlchemyError as err:
            first = str(err).splitlines()[0] if str(err) else err.__class__.__name__
            raise (StoreUnavailable if is_transient(err) or isinstance(err, sa.exc.OperationalError) else StoreError)(
                f"{self.url_masked}: ping failed: {first}"
            ) from err

    def drop_schema(self) -> None:
        """Drop the store's tables (for tests)."""
        self._with_retry("drop schema", lambda c, _r: metadata.drop_all(c))

    def close(self) -> None:
        self.engine.dispose()


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


sorted_json = json.JSONEncoder(sort_keys=True).encode  # json.dumps(..., sort_keys=True), one encoder
