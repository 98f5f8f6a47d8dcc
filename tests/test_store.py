"""The SQL store on both backends: SQLite (embedded default) and the real MariaDB at 127.0.0.1:3306.

Each session creates its own MariaDB database (``autotune_test_<pid>_<random>``) and drops it at the
end; each test starts from freshly created tables. An unreachable MariaDB fails the tests (it does
not skip them) with the command that starts it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid

import pymysql
import pytest
import sqlalchemy as sa

from core.retry import RetryPolicy
from executors.store import (
    AttemptRecord,
    AuditEvent,
    BatchWriter,
    StatusUpdate,
    StoreError,
    TaskRecord,
    TaskStore,
    attempts_table,
    audit_table,
    tasks_table,
)

MARIADB = dict(host="127.0.0.1", port=3306, user="root", password="")
START_MARIADB = (
    "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd (or run `bash .ci/services.sh`)"
)
FAST_RETRY = RetryPolicy(max_retries=5, base_s=0.005, jitter_s=0.005, cap_s=0.05)


def _admin_connection() -> pymysql.Connection:
    try:
        return pymysql.connect(**MARIADB, connect_timeout=5, autocommit=True)
    except pymysql.err.OperationalError as err:
        reason = str(err)
    # outside the except block, so the report is this one line and not the driver's traceback
    pytest.fail(
        f"MariaDB at 127.0.0.1:3306 is unreachable ({reason}); start it with: {START_MARIADB}",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def mariadb():
    """``(url, admin)``: this session's own database and a second root connection (for KILL)."""
    admin = _admin_connection()
    name = f"autotune_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    try:
        yield f"mysql+pymysql://root@127.0.0.1:3306/{name}", admin
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


class Sleeps(list):
    """Records the backoff delays instead of sleeping them."""

    def __call__(self, delay_s: float) -> None:
        self.append(delay_s)


@pytest.fixture(params=["sqlite", "mariadb"])
def store(request, tmp_path):
    sleeps = Sleeps()
    if request.param == "sqlite":
        s = TaskStore(f"sqlite:///{tmp_path / 'store.db'}", sleep=sleeps)
        s.admin = None
    else:
        url, admin = request.getfixturevalue("mariadb")
        s = TaskStore(url, sleep=sleeps)
        s.drop_schema()  # tables of the previous test in this session's database
        s.admin = admin
    s.create_schema()
    s.sleeps = sleeps
    yield s
    s.close()


def task(tid: str, **kw) -> TaskRecord:
    base = dict(
        tenant="shop",
        task_id=tid,
        type="order_processing",
        status="queued",
        priority=0.5,
        deadline_s=1_790_000_000.25,
        payload={"order": tid, "items": [1, 2], "note": "é ✓"},
        dependencies=("x", "y"),
        submitted_by="alice",
        created_s=1_790_000_000.125,
        updated_s=1_790_000_000.125,
    )
    base.update(kw)
    return TaskRecord(**base)


def attempt(tid: str, n: int, **kw) -> AttemptRecord:
    base = dict(
        tenant="shop",
        task_id=tid,
        attempt=n,
        executor="ex-1",
        started_s=1.0,
        ended_s=2.0,
        outcome="succeeded",
    )
    base.update(kw)
    return AttemptRecord(**base)


def count(store: TaskStore, table: sa.Table) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


# -- the record ------------------------------------------------------------------------------------
def test_schema_creation_is_idempotent(store):
    store.insert_tasks([task("a")])
    store.create_schema()
    store.create_schema()
    assert store.get_task("shop", "a") == task("a")  # existing data untouched
    assert set(sa.inspect(store.engine).get_table_names()) >= {"tasks", "attempts", "audit_log"}


def test_tasks_round_trip(store):
    store.insert_tasks([task("a"), task("b", dependencies=(), deadline_s=None, payload={})])
    assert store.get_task("shop", "a") == task("a")  # JSON payload, dependency tuple, DOUBLE fractions
    assert store.get_task("shop", "b") == task("b", dependencies=(), deadline_s=None, payload={})
    assert store.get_task("other", "a") is None
    store.insert_tasks([task("a"), task("b", dependencies=(), deadline_s=None, payload={})])  # retried commit


def test_a_bad_batch_writes_nothing(store):
    store.insert_tasks([task("a")])
    with pytest.raises(StoreError, match=r"task 'z' \(tenant 'shop'\) appears twice in one insert; nothing written"):
        store.insert_tasks([task("new"), task("z"), task("z")])
    with pytest.raises(StoreError, match=r"task 'a' \(tenant 'shop'\) already exists; nothing written"):
        store.insert_tasks([task("new"), task("a", priority=0.9)])
    assert store.get_task("shop", "new") is None and store.get_task("shop", "z") is None
    assert store.get_task("shop", "a") == task("a") and count(store, tasks_table) == 1


def test_terminal_status_is_final(store):
    store.insert_tasks([task("a")])
    assert store.update_status("shop", "a", "running", 1.0)
    assert store.update_status("shop", "a", "succeeded", 2.0, result="ok")
    assert not store.update_status("shop", "a", "failed", 3.0, error="late duplicate")
    assert not store.update_status("shop", "a", "succeeded", 4.0, result="again")
    assert not store.update_status("shop", "missing", "running", 1.0)
    rec = store.get_task("shop", "a")
    assert (rec.status, rec.result, rec.error, rec.updated_s) == ("succeeded", "ok", None, 2.0)
    assert store.status_counts("shop") == {"succeeded": 1}
    with pytest.raises(ValueError, match="task status must be one of"):
        store.update_status("shop", "a", "done", 5.0)


def test_redelivered_attempt_is_written_once(store):
    store.insert_tasks([task("a")])
    a0 = attempt("a", 0, outcome="lost", error="executor died")
    a1 = attempt("a", 1, executor="ex-2", started_s=3.0, ended_s=4.0)
    assert store.record_attempts([a0, a0]) == 1
    assert store.record_attempts([a0, a1]) == 1
    assert store.record_attempts([attempt("a", 1, executor="ex-3")]) == 0  # the first record is kept
    assert store.attempts_for("shop", "a") == [a0, a1]
    assert store.next_attempts("shop", ["a", "never-ran"]) == {"a": 2, "never-ran": 0}


def test_audit_is_append_only_and_newest_first(store):
    store.append_audit([AuditEvent(float(i), "shop", "alice", "submit", f"t{i}", {"i": i}) for i in range(5)])
    store.append_audit([AuditEvent(9.0, "other", "bob", "submit", "x", {})])
    store.append_audit([AuditEvent(5.0, "shop", "system", "queue_rebuilt", "shop", {"n": 3})])
    got = store.audit("shop", limit=3)
    assert [e.subject for e in got] == ["shop", "t4", "t3"] and got[1].detail == {"i": 4}
    assert len(store.audit("shop")) == 6 and [e.actor for e in store.audit("other")] == ["bob"]
    assert not [m for m in dir(store) if "audit" in m and m.startswith(("update", "delete", "remove"))]


def test_tasks_with_status_and_counts(store):
    store.insert_tasks([task(f"t{i}", created_s=100.0 - i) for i in range(6)])
    store.update_status("shop", "t0", "running", 1.0)
    store.update_status("shop", "t1", "retrying", 1.0, error="503")
    store.update_status("shop", "t2", "succeeded", 1.0)
    assert store.finish_many("shop", [("t3", "failed", "boom")], 2.0) == {"t3"}
    store.insert_tasks([task("t0", tenant="other")])
    got = store.tasks_with_status("shop", ["queued", "running", "retrying"])
    assert [t.task_id for t in got] == ["t5", "t4", "t1", "t0"]  # oldest first
    assert got[2].error == "503"
    assert store.tasks_with_status("shop", []) == []
    assert store.status_counts("shop") == {
        "queued": 2,
        "running": 1,
        "retrying": 1,
        "succeeded": 1,
        "failed": 1,
    }


def test_finish_many_writes_each_terminal_status_once(store):
    store.insert_tasks([task("a"), task("b"), task("c")])
    assert store.update_status("shop", "c", "failed", 1.0, error="earlier")
    changed = store.finish_many(
        "shop",
        [
            ("a", "succeeded", None),
            ("b", "failed", "boom"),
            ("c", "succeeded", None),
            ("a", "failed", "duplicate in batch"),
        ],
        2.0,
    )
    assert changed == {"a", "b"}
    assert [store.get_task("shop", t).status for t in "abc"] == ["succeeded", "failed", "failed"]
    assert store.get_task("shop", "b").error == "boom" and store.get_task("shop", "c").error == "earlier"
    assert store.finish_many("shop", [("a", "failed", None)], 3.0) == set()


def test_batches_larger_than_one_statement_write_every_row_once(store):
    """More tasks than one IN (...) list takes (500): several statements, the last one's list
    padded; each task still gets exactly one terminal status, each attempt one row."""
    n = 1_234
    store.insert_tasks([task(f"t{i}") for i in range(n)])
    assert store.update_status("shop", "t7", "failed", 1.0, error="earlier")
    assert store.record_attempts([attempt("t3", 0)]) == 1
    assert store.record_attempts([attempt(f"t{i}", 0) for i in range(n)]) == n - 1  # t3's was there
    items = [(f"t{i}", "failed" if i % 3 == 0 else "succeeded", "boom" if i % 3 == 0 else None) for i in range(n)]
    assert store.finish_many("shop", items + [("never-stored", "succeeded", None)], 2.0) == {
        f"t{i}" for i in range(n)
    } - {"t7"}
    counts = store.status_counts("shop")
    assert counts == {"failed": len(range(0, n, 3)) + 1, "succeeded": n - len(range(0, n, 3)) - 1}
    assert store.get_task("shop", "t7").error == "earlier" and store.get_task("shop", "t3").error == "boom"
    assert store.get_task("shop", "t4").status == "succeeded" and store.get_task("shop", "t4").updated_s == 2.0
    assert store.finish_many("shop", items, 3.0) == set()
    assert count(store, attempts_table) == n
    store.insert_tasks([task(f"u{i}") for i in range(n)])  # none terminal: the UPDATEs alone
    assert store.finish_many("shop", [(f"u{i}", "succeeded", None) for i in range(n)], 4.0) == {
        f"u{i}" for i in range(n)
    }
    assert store.status_counts("shop")["succeeded"] == 2 * n - len(range(0, n, 3)) - 1


def test_update_statuses_in_order_in_one_batch(store):
    store.insert_tasks([task("a"), task("b")])
    store.update_statuses(
        [
            StatusUpdate("shop", "a", "running", 1.0),
            StatusUpdate("shop", "a", "succeeded", 2.0, "ok"),
            StatusUpdate("shop", "a", "failed", 3.0, error="late"),
            StatusUpdate("shop", "b", "retrying", 1.0, error="503"),
            StatusUpdate("shop", "b", "queued", 2.0),  # a retry comes due (never straight to running)
        ]
    )
    a, b = store.get_task("shop", "a"), store.get_task("shop", "b")
    assert (a.status, a.result, a.error, a.updated_s) == ("succeeded", "ok", None, 2.0)
    assert (b.status, b.error) == ("queued", "503")  # a missing error keeps the stored one


# -- failures of the connection --------------------------------------------------------------------
def _ambiguous_commits(store: TaskStore, monkeypatch, times: int = 1) -> list[int]:
    """Make the next ``times`` COMMITs go through on the server and then report a lost connection,
    as when the connection drops after the server committed but before the client heard back."""
    real_commit = store.engine.dialect.do_commit
    fired: list[int] = []

    def commit_then_lose_connection(dbapi_conn):
        real_commit(dbapi_conn)
        if len(fired) < times:
            fired.append(1)
            if store.url.get_backend_name() == "sqlite":  # what sqlite3 raises on a closed connection
                raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
            raise pymysql.err.OperationalError(2013, "Lost connection to server during query")

    monkeypatch.setattr(store.engine.dialect, "do_commit", commit_then_lose_connection)
    return fired


def test_a_retry_after_an_ambiguous_commit_writes_nothing_twice(store, monkeypatch):
    fired = _ambiguous_commits(store, monkeypatch, times=5)
    store.insert_tasks([task("a"), task("b")])  # retried, finds both stored identically: success
    assert store.update_status("shop", "a", "succeeded", 2.0, result="ok")  # its own update, not "already terminal"
    assert store.record_attempts([attempt("a", 0), attempt("a", 1)]) == 2
    store.append_audit(
        [
            AuditEvent(1.0, "shop", "alice", "submit", "a", {}),
            AuditEvent(1.0, "shop", "alice", "submit", "b", {}),
        ]
    )
    assert store.finish_many("shop", [("b", "failed", "boom")], 3.0) == {"b"}
    assert len(fired) == 5 and len(store.sleeps) == 5  # every write above was retried once
    assert count(store, tasks_table) == 2 and count(store, attempts_table) == 2
    assert count(store, audit_table) == 2
    assert store.get_task("shop", "a").result == "ok" and store.get_task("shop", "b").error == "boom"


def _kill(admin: pymysql.Connection, connection_id: int) -> None:
    """KILL a server connection from the admin connection; wait until the server dropped it."""
    with admin.cursor() as cur:
        cur.execute(f"KILL {int(connection_id)}")
        for _ in range(200):
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.processlist WHERE id = %s",
                (connection_id,),
            )
            if cur.fetchone()[0] == 0:
                return
            time.sleep(0.01)
    raise AssertionError(f"connection {connection_id} still alive after KILL")


def _connection_id(store: TaskStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT CONNECTION_ID()")).scalar_one())


@pytest.mark.parametrize("store", ["mariadb"], indirect=True)  # SQLite has no server connection to drop
def test_a_killed_idle_connection_is_replaced(store):
    store.insert_tasks([task("a")])
    before = _connection_id(store)
    _kill(store.admin, before)  # the pool's one idle connection is now dead
    store.insert_tasks([task("b")])  # pre-ping finds it dead and reconnects
    assert store.record_attempts([attempt("b", 0)]) == 1
    assert _connection_id(store) != before
    assert [t.task_id for t in store.tasks_with_status("shop", ["queued"])] == ["a", "b"]
    assert count(store, tasks_table) == 2 and count(store, attempts_table) == 1


@pytest.mark.parametrize("store", ["mariadb"], indirect=True)
def test_a_connection_killed_inside_a_write_is_retried(store):
    """Kill the store's connection in the middle of its transaction (after the existence check,
    before the INSERT): the INSERT fails with a lost connection, the server rolls the transaction
    back, and the store retries the whole write on a new connection."""
    store.insert_tasks([task("a")])
    killed: list[int] = []

    @sa.event.listens_for(store.engine, "before_cursor_execute")
    def kill_own_connection(conn, cursor, statement, parameters, context, executemany):
        if not killed and statement.lstrip().upper().startswith(("INSERT INTO TASKS", "INSERT INTO ATTEMPTS")):
            raw = conn.connection.dbapi_connection.cursor()
            raw.execute("SELECT CONNECTION_ID()")
            killed.append(int(raw.fetchone()[0]))
            raw.close()
            _kill(store.admin, killed[-1])

    store.insert_tasks([task("b"), task("c")])
    assert len(killed) == 1 and len(store.sleeps) == 1  # one lost connection, one retry
    killed.clear()
    assert store.record_attempts([attempt("b", 0), attempt("c", 0)]) == 2
    assert len(killed) == 1 and len(store.sleeps) == 2
    sa.event.remove(store.engine, "before_cursor_execute", kill_own_connection)
    assert count(store, tasks_table) == 3 and count(store, attempts_table) == 2
    assert store.get_task("shop", "c") == task("c")


def test_disconnects_are_retried_and_other_errors_are_not(tmp_path):
    sleeps = Sleeps()
    s = TaskStore(f"sqlite:///{tmp_path / 'r.db'}", sleep=sleeps)
    calls = []

    def flaky(conn, maybe_committed):
        calls.append(maybe_committed)
        if len(calls) < 3:
            raise sa.exc.OperationalError("INSERT", {}, Exception("server has gone away"), connection_invalidated=True)
        return "done"

    assert s._with_retry("flaky write", flaky) == "done"
    assert calls == [False, True, True] and len(sleeps) == 2 and all(0 < x <= 2.0 for x in sleeps)

    def broken(conn, maybe_committed):
        raise sa.exc.IntegrityError("INSERT", {}, Exception("duplicate key"))

    with pytest.raises(StoreError, match=r"r\.db: broken write failed: IntegrityError"):
        s._with_retry("broken write", broken)
    with pytest.raises(StoreError, match=r"read task failed: OperationalError.*no such table"):
        s.get_task("shop", "a")  # a missing schema is not retried
    assert len(sleeps) == 2
    s.close()


def test_store_error_names_the_database_with_the_password_masked():
    sleeps = Sleeps()
    s = TaskStore("mysql+pymysql://root:s3cret@127.0.0.1:1/nowhere", connect_retries=2, sleep=sleeps)
    with pytest.raises(StoreError) as info:
        s.create_schema()
    msg = str(info.value)
    assert "s3cret" not in msg and "root:***@127.0.0.1:1/nowhere" in msg
    assert "create schema failed after 3 tries" in msg and len(sleeps) == 2  # can't connect: retried
    s.close()


# -- BatchWriter -----------------------------------------------------------------------------------
def test_batch_writer_loses_nothing_from_four_threads(store):
    store.insert_tasks([task(f"t{i}") for i in range(100)])
    writer = BatchWriter(store, max_batch=1000, max_delay_s=0.02)
    per_thread = 2500

    def produce(k: int) -> None:
        items = [attempt(f"w{k}-{i // 4}", i % 4, executor=f"ex-{k}") for i in range(per_thread)]
        for i in range(0, per_thread, 50):
            writer.add_attempts(items[i : i + 50])
        for i in range(25 * k, 25 * k + 25):
            writer.add_status("shop", f"t{i}", "running", 1.0)
            writer.add_status("shop", f"t{i}", "succeeded", 2.0, result=f"r{i}")
            writer.add_status("shop", f"t{i}", "failed", 3.0, error="late")  # refused: terminal is final
        writer.add_audit([AuditEvent(float(i), "shop", f"thread-{k}", "submit", f"s{i}", {}) for i in range(50)])

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    assert writer.pending == 0 and writer.written["attempts"] == 4 * per_thread
    assert count(store, attempts_table) == 4 * per_thread  # the primary key makes each one unique
    with store.engine.connect() as conn:
        distinct = conn.execute(sa.select(sa.func.count(sa.distinct(attempts_table.c.executor)))).scalar_one()
    assert distinct == 4
    assert store.status_counts("shop") == {"succeeded": 100}
    assert store.get_task("shop", "t42").result == "r42" and store.get_task("shop", "t42").error is None
    assert count(store, audit_table) == 200
    with pytest.raises(StoreError, match="closed"):
        writer.add_attempts([attempt("late", 0)])


def test_batch_writer_flushes_on_its_own_after_max_delay(store):
    with BatchWriter(store, max_batch=10_000, max_delay_s=0.02) as writer:
        writer.add_attempts([attempt("a", 0)])
        for _ in range(200):
            if writer.pending == 0 and count(store, attempts_table) == 1:
                break
            time.sleep(0.01)
        assert count(store, attempts_table) == 1


def test_a_failed_flush_is_retried_not_dropped(store, monkeypatch):
    real = store.record_attempts
    failures = []

    def fail_twice(attempts):
        if len(failures) < 2:
            failures.append(len(attempts))
            raise StoreError(f"{store.url_masked}: record attempts failed: database went away")
        return real(attempts)

    monkeypatch.setattr(store, "record_attempts", fail_twice)
    writer = BatchWriter(store, max_batch=100, max_delay_s=0.01, retry=FAST_RETRY)
    writer.add_attempts([attempt(f"t{i}", 0) for i in range(250)])
    writer.add_audit([AuditEvent(1.0, "shop", "alice", "submit", "t0", {})])
    for _ in range(300):  # the background thread fails twice, backs off, then gets through
        if writer.pending == 0:
            break
        time.sleep(0.01)
    writer.close()
    assert failures == [100, 100] and isinstance(writer.last_error, StoreError)
    assert count(store, attempts_table) == 250 and count(store, audit_table) == 1


def test_close_raises_and_keeps_items_when_the_store_stays_down(store, monkeypatch):
    def always_fail(attempts):
        raise StoreError(f"{store.url_masked}: record attempts failed: down")

    monkeypatch.setattr(store, "record_attempts", always_fail)
    sleeps = Sleeps()
    writer = BatchWriter(store, max_batch=100, max_delay_s=10.0, retry=FAST_RETRY, sleep=sleeps)
    writer.add_attempts([attempt(f"t{i}", 0) for i in range(5)])
    writer.add_audit([AuditEvent(1.0, "shop", "alice", "submit", "t0", {})])
    with pytest.raises(StoreError, match=r"BatchWriter.close: 6 items not written after 6 tries"):
        writer.close()
    assert writer.pending == 6 and len(sleeps) == 5  # nothing dropped; the caller can flush() again
    monkeypatch.undo()
    writer.flush()
    assert count(store, attempts_table) == 5 and count(store, audit_table) == 1


def test_batch_writer_is_bounded_while_the_store_is_down(store, monkeypatch):
    """Backpressure, not unbounded memory: a full buffer makes producers wait, then refuses what
    they add with one clear error; nothing accepted is dropped and it all lands once the store is back."""
    down = [True]
    real = store.record_attempts

    def maybe_fail(attempts):
        if down[0]:
            raise StoreError(f"{store.url_masked}: record attempts failed: database went away")
        return real(attempts)

    monkeypatch.setattr(store, "record_attempts", maybe_fail)
    writer = BatchWriter(store, max_batch=10, max_delay_s=0.01, max_pending=50, full_timeout_s=0.3, retry=FAST_RETRY)
    try:
        for i in range(5):
            writer.add_attempts([attempt(f"t{i}-{j}", 0) for j in range(10)])
        t0 = time.monotonic()
        with pytest.raises(StoreError, match=r"BatchWriter full: 50 items waiting .* 1 more refused"):
            writer.add_attempts([attempt("one-too-many", 0)])
        assert time.monotonic() - t0 >= 0.3  # it waited for room first
        assert writer.pending + writer._writing == 50
        down[0] = False
        writer.add_attempts([attempt("after", 0)])  # waits until the store takes the backlog, then fits
        writer.flush()
        assert count(store, attempts_table) == 51
    finally:
        down[0] = False
        writer.close()
    with pytest.raises(ValueError, match="max_pending must be an int >= max_batch"):
        BatchWriter(store, max_batch=10, max_pending=5)


# ---- the cluster's durable steps -------------------------------------------------------------------


def test_settle_writes_attempts_terminal_statuses_and_retries_in_one_go(store):
    from executors.store import StoreUnavailable  # noqa: F401 (the class a caller waits on)

    store.insert_tasks([task(t, dependencies=()) for t in ("ok", "bad", "again", "done")])
    assert store.finish_many("shop", [("done", "succeeded", None)], 1.0) == {"done"}
    changed = store.settle(
        "shop",
        [
            attempt("ok", 0),
            attempt("bad", 0, outcome="failed", error="402"),
            attempt("again", 2, outcome="retrying", error="503"),
            attempt("done", 1),
        ],
        [("ok", "succeeded", None), ("bad", "failed", "402"), ("done", "failed", "late")],
        [("again", 3, 1234.5, "503")],
        10.0,
    )
    assert changed == {"ok", "bad"}  # "done" was terminal already: left alone
    got = {t: store.get_task("shop", t) for t in ("ok", "bad", "again", "done")}
    assert (got["ok"].status, got["bad"].status, got["bad"].error) == ("succeeded", "failed", "402")
    assert (got["again"].status, got["again"].attempt, got["again"].retry_at_s) == ("retrying", 3, 1234.5)
    assert got["done"].status == "succeeded"
    assert [a.attempt for a in store.attempts_for("shop", "again")] == [2]
    # again, after an ambiguous commit: nothing twice, the same answer
    assert store.settle("shop", [attempt("ok", 0)], [("ok", "succeeded", None)], [], 11.0) == set()
    assert len(store.attempts_for("shop", "ok")) == 1
    # a retry never reopens a finished task
    store.settle("shop", [], [], [("ok", 5, 99.0, "x")], 12.0)
    assert store.get_task("shop", "ok").status == "succeeded"


def test_mark_queued_moves_only_tasks_in_the_given_statuses(store):
    store.insert_tasks([task("w", status="waiting"), task("q"), task("r", dependencies=())])
    store.settle("shop", [attempt("r", 0, outcome="retrying")], [], [("r", 1, 50.0, "503")], 1.0)
    assert store.mark_queued("shop", ["w", "q", "r", "missing"], 2.0) == {"w", "r"}
    assert {t: store.get_task("shop", t).status for t in ("w", "q", "r")} == {
        "w": "queued",
        "q": "queued",
        "r": "queued",
    }
    assert store.get_task("shop", "r").retry_at_s is None and store.get_task("shop", "r").attempt == 1
    assert store.mark_queued("shop", ["w"], 3.0, ("retrying",)) == set()


def test_claim_view_statuses_and_unfinished(store):
    store.insert_tasks(
        [
            task("a", payload={"type": "wire_money", "attempt": "abc"}),
            task("b", status="waiting"),
            task("c", dependencies=()),
        ]
    )
    store.finish_many("shop", [("c", "failed", "x")], 1.0)
    views = store.claim_view("shop", ["a", "b", "c", "zzz"])
    assert set(views) == {"a", "b", "c"}
    # the payload is data: the record's type and attempt are the columns
    assert (views["a"].type, views["a"].attempt, views["a"].payload) == (
        "order_processing",
        0,
        {"type": "wire_money", "attempt": "abc"},
    )
    assert store.statuses("shop", ["a", "b", "c", "zzz"]) == {"a": "queued", "b": "waiting", "c": "failed"}
    assert [t.task_id for t in store.unfinished("shop")] == ["a", "b"]
    assert store.tenants_with_unfinished() == ["shop"]


def test_dead_letters_are_kept_with_their_reason_and_fail_their_task(store):
    from executors.store import DeadLetter

    store.insert_tasks([task("a", dependencies=())])
    letters = [
        DeadLetter(5.0, "shop", "a", "17-0", "the entry is not JSON", "{not json"),
        DeadLetter(5.0, "shop", "ghost", "18-0", "no task 'ghost' in the store", "{}"),
    ]
    assert store.dead_letter("shop", letters, [("a", "dead-lettered: the entry is not JSON")], 5.0) == {"a"}
    assert store.get_task("shop", "a").status == "failed"
    assert [d.task_id for d in store.dead_letters("shop")] == ["ghost", "a"]
    assert store.dead_letters("other") == []


def test_a_database_made_by_an_earlier_version_gets_the_new_columns(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # the tasks table as the first release made it, with a row
        conn.exec_driver_sql(
            "CREATE TABLE tasks (tenant VARCHAR(64) NOT NULL, task_id VARCHAR(128) NOT NULL, type VARCHAR(64) "
            "NOT NULL, status VARCHAR(16) NOT NULL, priority FLOAT NOT NULL, deadline_s FLOAT, payload TEXT NOT NULL,"
            " dependencies TEXT NOT NULL, submitted_by VARCHAR(64) NOT NULL, created_s FLOAT NOT NULL, updated_s "
            "FLOAT NOT NULL, result TEXT, error TEXT, PRIMARY KEY (tenant, task_id))"
        )
        conn.exec_driver_sql(
            "INSERT INTO tasks VALUES ('shop', 'old', 'order_processing', 'queued', 0.5, NULL, "
            "'{}', '[]', 'alice', 1.0, 1.0, NULL, NULL)"
        )
    engine.dispose()
    s = TaskStore(url)
    s.create_schema()
    s.create_schema()  # idempotent
    old = s.get_task("shop", "old")
    assert (old.attempt, old.retry_at_s, old.run_id) == (0, None, None)
    s.insert_tasks([task("new", run_id="r1")])
    assert s.status_counts("shop", run_id="r1") == {"queued": 1} and s.status_counts("shop") == {"queued": 2}
    s.close()


def test_an_unreachable_database_is_an_outage_not_a_bad_write(tmp_path):
    from executors.store import StoreUnavailable

    s = TaskStore("mysql+pymysql://root@127.0.0.1:1/x", connect_retries=1, sleep=lambda _s: None)
    with pytest.raises(StoreUnavailable, match="127.0.0.1:1"):
        s.ping()
    with pytest.raises(StoreUnavailable, match="read task"):
        s.get_task("shop", "a")
