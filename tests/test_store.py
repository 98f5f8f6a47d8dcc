"""The SQL store on both backends: SQLite (embedded default) and the real MariaDB."""

from __future__ import annotations

import uuid

import pymysql
import pytest
import sqlalchemy as sa

from executors.store import AttemptRecord, AuditEvent, StoreError, TaskRecord, TaskStore

MARIADB = dict(host="127.0.0.1", port=3306, user="root", password="")
START_MARIADB = "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd (or bash .ci/services.sh)"


@pytest.fixture(params=["sqlite", "mariadb"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = TaskStore(f"sqlite:///{tmp_path / 'store.db'}")
        s.create_schema()
        yield s
        s.close()
        return
    name = f"autotune_store_{uuid.uuid4().hex[:10]}"
    try:
        conn = pymysql.connect(**MARIADB, connect_timeout=5, autocommit=True)
    except pymysql.err.OperationalError as err:
        pytest.fail(f"MariaDB at 127.0.0.1:3306 unreachable ({err}); start it with: {START_MARIADB}")
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    s = TaskStore(f"mysql+pymysql://root@127.0.0.1:3306/{name}", sleep=lambda _s: None)
    s.create_schema()
    s.admin = conn  # a second connection, for killing the store's
    yield s
    s.close()
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


def task(tid: str, **kw) -> TaskRecord:
    base = dict(tenant="shop", task_id=tid, type="order_processing", status="queued", priority=0.5,
                deadline_s=1_790_000_000.25, payload={"order": tid, "items": [1, 2]}, dependencies=("x",),
                submitted_by="alice", created_s=1_790_000_000.125, updated_s=1_790_000_000.125)
    base.update(kw)
    return TaskRecord(**base)


def test_schema_is_idempotent_and_tasks_round_trip(store):
    store.create_schema()
    store.insert_tasks([task("a"), task("b", dependencies=())])
    assert store.get_task("shop", "a") == task("a")  # epoch seconds keep their fractions (DOUBLE)
    assert store.get_task("other", "a") is None
    assert [t.task_id for t in store.tasks_with_status("shop", ["queued"])] == ["a", "b"]
    store.insert_tasks([task("a"), task("b", dependencies=())])  # a retried commit: not an error


def test_a_bad_batch_writes_nothing(store):
    store.insert_tasks([task("a")])
    with pytest.raises(StoreError, match="'a' already exists; nothing written"):
        store.insert_tasks([task("new"), task("a", priority=0.9)])
    assert store.get_task("shop", "new") is None
    with pytest.raises(StoreError, match="appears twice"):
        store.insert_tasks([task("z"), task("z")])
    assert store.get_task("shop", "z") is None


def test_terminal_status_is_final(store):
    store.insert_tasks([task("a")])
    assert store.update_status("shop", "a", "running", 1.0)
    assert store.update_status("shop", "a", "succeeded", 2.0, result="ok")
    assert not store.update_status("shop", "a", "failed", 3.0, error="late duplicate")
    rec = store.get_task("shop", "a")
    assert (rec.status, rec.result, rec.error, rec.updated_s) == ("succeeded", "ok", None, 2.0)
    assert store.status_counts("shop") == {"succeeded": 1}


def test_redelivered_attempt_is_written_once(store):
    store.insert_tasks([task("a")])
    a0 = AttemptRecord("shop", "a", 0, "ex-1", 1.0, 2.0, "lost", "executor died")
    a1 = AttemptRecord("shop", "a", 1, "ex-2", 3.0, 4.0, "succeeded")
    assert store.record_attempts([a0, a0]) == 1
    assert store.record_attempts([a0, a1]) == 1
    assert store.attempts_for("shop", "a") == [a0, a1]
    assert store.next_attempts("shop", ["a", "never-ran"]) == {"a": 2, "never-ran": 0}


def test_audit_is_newest_first(store):
    store.append_audit([AuditEvent(float(i), "shop", "alice", "submit", f"t{i}", {"i": i}) for i in range(5)])
    got = store.audit("shop", limit=3)
    assert [e.subject for e in got] == ["t4", "t3", "t2"] and got[0].detail == {"i": 4}
    assert not hasattr(store, "delete_audit") and not hasattr(store, "update_audit")


@pytest.mark.parametrize("store", ["mariadb"], indirect=True)  # SQLite has no connection to drop
def test_dropped_connection_is_retried_without_loss(store):
    store.insert_tasks([task("a")])
    with store.engine.connect() as conn:
        conn_id = conn.execute(sa.text("SELECT CONNECTION_ID()")).scalar()
    with store.admin.cursor() as cur:
        cur.execute(f"KILL {int(conn_id)}")
    store.insert_tasks([task("b")])  # the pooled connection is dead: pre-ping or retry reconnects
    assert store.record_attempts([AttemptRecord("shop", "b", 0, "ex", 1.0, 2.0, "succeeded")]) == 1
    assert store.get_task("shop", "b") is not None
    assert len(store.attempts_for("shop", "b")) == 1


def test_disconnects_are_retried_and_other_errors_are_not(tmp_path):
    sleeps = []
    s = TaskStore(f"sqlite:///{tmp_path / 'r.db'}", sleep=sleeps.append)
    calls = {"n": 0}

    def flaky(conn):
        calls["n"] += 1
        if calls["n"] < 3:
            raise sa.exc.OperationalError("INSERT", {}, Exception("server has gone away"), connection_invalidated=True)
        return "done"

    assert s._with_retry("flaky write", flaky) == "done"
    assert calls["n"] == 3 and len(sleeps) == 2 and all(0 < x <= 2.0 for x in sleeps)

    def broken(conn):
        raise sa.exc.IntegrityError("INSERT", {}, Exception("duplicate key"))

    with pytest.raises(StoreError, match=r"r.db: broken write failed: IntegrityError"):
        s._with_retry("broken write", broken)
    s.close()


def test_finish_many_writes_each_terminal_status_once(store):
    store.insert_tasks([task("a"), task("b"), task("c")])
    assert store.update_status("shop", "c", "failed", 1.0, error="earlier")
    changed = store.finish_many("shop", [("a", "succeeded", None), ("b", "failed", "boom"), ("c", "succeeded", None),
                                         ("a", "failed", "duplicate in batch")], 2.0)
    assert changed == {"a", "b"}
    assert [store.get_task("shop", t).status for t in "abc"] == ["succeeded", "failed", "failed"]
    assert store.get_task("shop", "b").error == "boom" and store.get_task("shop", "c").error == "earlier"
    assert store.finish_many("shop", [("a", "failed", None)], 3.0) == set()
