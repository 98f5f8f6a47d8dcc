"""The store changes a task's status only along the domain's lifecycle (core.domain.ALLOWED_TRANSITIONS),
on SQLite and on the real MariaDB (127.0.0.1:3306).

Every allowed step is taken; every other one is refused with the row unchanged in the database:
``update_status`` and ``update_statuses`` raise :class:`IllegalTransition` (a terminal status over a
terminal one, or the status a task has already, is a no-op, never an error); the cluster's batch
steps (settle, finish_many, mark_queued, dead_letter) leave such a task alone and do not count it.
Then the cluster itself, on the embedded default, runs its normal paths without one refusal.
"""

from __future__ import annotations

import itertools
import logging
import uuid

import pytest
import ray
import sqlalchemy as sa

from core.domain import ALLOWED_TRANSITIONS, InvalidTransition, TaskStatus
from executors.store import (
    TASK_STATUSES,
    TERMINAL,
    AttemptRecord,
    BatchWriter,
    DeadLetter,
    IllegalTransition,
    StatusUpdate,
    TaskRecord,
    TaskStore,
    tasks_table,
)
from tests.test_store import _admin_connection, _ambiguous_commits

ALLOWED = sorted((a.value, b.value) for a, nexts in ALLOWED_TRANSITIONS.items() for b in nexts)
REFUSED = sorted(set(itertools.product(TASK_STATUSES, TASK_STATUSES)) - set(ALLOWED))


def _pair_id(pair: tuple[str, str]) -> str:
    return f"{pair[0]}->{pair[1]}"


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def store(request, tmp_path_factory):
    """One store per backend for the module (each test uses its own tenant); MariaDB gets a database
    of its own, so other modules' fixtures dropping tables cannot reach it."""
    admin = name = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('transitions') / 'store.db'}"
    else:
        admin = _admin_connection()
        name = f"autotune_transitions_{uuid.uuid4().hex[:10]}"
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
        url = f"mysql+pymysql://root@127.0.0.1:3306/{name}"
    s = TaskStore(url, sleep=lambda _s: None)
    s.create_schema()
    yield s
    s.close()
    if admin is not None:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@pytest.fixture
def tenant() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def task(tenant: str, tid: str, status: str = "queued", **kw) -> TaskRecord:
    base = dict(
        tenant=tenant,
        task_id=tid,
        type="order_processing",
        status=status,
        priority=0.5,
        deadline_s=None,
        payload={},
        dependencies=(),
        submitted_by="alice",
        created_s=1.0,
        updated_s=1.0,
    )
    base.update(kw)
    return TaskRecord(**base)


def stored(store: TaskStore, tenant: str, tid: str) -> tuple[str, float, str | None]:
    """(status, updated_s, error) as the database holds them, read with SQL of the test's own."""
    c = tasks_table.c
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(c.status, c.updated_s, c.error).where(c.tenant == tenant, c.task_id == tid)).one()
    return row.status, row.updated_s, row.error


# -- every step, one at a time -------------------------------------------------------------------
def test_the_table_covers_every_pair_of_statuses():
    assert len(ALLOWED) + len(REFUSED) == len(TASK_STATUSES) ** 2
    assert {s.value for s in TaskStatus} == set(TASK_STATUSES)


@pytest.mark.parametrize("pair", ALLOWED, ids=_pair_id)
def test_every_allowed_transition_is_taken(store, tenant, pair):
    prior, target = pair
    store.insert_tasks([task(tenant, "a", prior)])
    assert store.update_status(tenant, "a", target, 2.0, error="e") is True
    assert stored(store, tenant, "a") == (target, 2.0, "e")


@pytest.mark.parametrize("pair", REFUSED, ids=_pair_id)
def test_every_other_transition_is_refused_and_changes_nothing(store, tenant, pair):
    prior, target = pair
    store.insert_tasks([task(tenant, "a", prior)])
    before = stored(store, tenant, "a")
    if prior in TERMINAL or prior == target:
        # a terminal status is final, and a duplicate changes nothing: False, not an error
        assert store.update_status(tenant, "a", target, 2.0, error="late") is False
    else:
        with pytest.raises(
            IllegalTransition, match=f"task 'a' \\(tenant '{tenant}'\\) is {prior} and cannot become {target}"
        ) as info:
            store.update_status(tenant, "a", target, 2.0, error="late")
        err = info.value
        assert (err.tenant, err.task_id, err.current, err.requested) == (tenant, "a", prior, target)
        assert isinstance(err, InvalidTransition) and isinstance(err, ValueError)
    assert stored(store, tenant, "a") == before


def test_a_missing_task_is_false_not_an_error(store, tenant):
    assert store.update_status(tenant, "nobody", "running", 1.0) is False


# -- batches of updates ---------------------------------------------------------------------------
def test_an_illegal_update_in_a_batch_writes_nothing_of_it(store, tenant):
    store.insert_tasks([task(tenant, "a"), task(tenant, "w", "waiting")])
    batch = [
        StatusUpdate(tenant, "a", "running", 2.0),
        StatusUpdate(tenant, "w", "running", 2.0),  # waiting -> running: not a step
        StatusUpdate(tenant, "a", "succeeded", 3.0),
    ]
    with pytest.raises(IllegalTransition, match="is waiting and cannot become running"):
        store.update_statuses(batch)
    assert stored(store, tenant, "a") == ("queued", 1.0, None)
    assert stored(store, tenant, "w") == ("waiting", 1.0, None)
    # told to skip, the lifecycle's steps are written in order and the refused one returned
    (refused,) = store.update_statuses(batch, skip_illegal=True)
    assert (refused.task_id, refused.current, refused.requested) == ("w", "waiting", "running")
    assert stored(store, tenant, "a") == ("succeeded", 3.0, None)
    assert stored(store, tenant, "w") == ("waiting", 1.0, None)


def test_a_batch_follows_each_task_through_its_steps_in_order(store, tenant):
    store.insert_tasks([task(tenant, "a"), task(tenant, "b", "waiting")])
    store.update_statuses(
        [
            StatusUpdate(tenant, "b", "queued", 2.0),
            StatusUpdate(tenant, "a", "running", 2.0),
            StatusUpdate(tenant, "a", "retrying", 3.0, error="503"),
            StatusUpdate(tenant, "b", "running", 3.0),
            StatusUpdate(tenant, "a", "queued", 4.0),
            StatusUpdate(tenant, "a", "running", 5.0),  # a duplicate below changes nothing
            StatusUpdate(tenant, "a", "running", 6.0),
            StatusUpdate(tenant, "b", "succeeded", 7.0),
            StatusUpdate(tenant, "b", "failed", 8.0, error="late"),  # terminal is final
        ]
    )
    assert stored(store, tenant, "a") == ("running", 5.0, "503")
    assert stored(store, tenant, "b") == ("succeeded", 7.0, None)


def test_a_batch_retried_after_an_ambiguous_commit_is_not_refused(store, tenant, monkeypatch):
    """The first try committed; the retry finds every task at its last update and writes nothing
    (queued -> running -> retrying again would otherwise read as retrying -> running)."""
    store.insert_tasks([task(tenant, "a"), task(tenant, "b")])
    fired = _ambiguous_commits(store, monkeypatch, times=1)
    store.update_statuses(
        [
            StatusUpdate(tenant, "a", "running", 2.0),
            StatusUpdate(tenant, "a", "retrying", 3.0, error="503"),
            StatusUpdate(tenant, "b", "succeeded", 2.0),
        ]
    )
    assert fired == [1]
    assert stored(store, tenant, "a") == ("retrying", 3.0, "503")
    assert stored(store, tenant, "b") == ("succeeded", 2.0, None)


def test_the_batch_writer_drops_a_refused_update_and_writes_the_rest(store, tenant, caplog):
    store.insert_tasks([task(tenant, "a"), task(tenant, "w", "waiting")])
    with caplog.at_level(logging.WARNING, logger="executors.store.batch"), BatchWriter(store, max_delay_s=0.01) as w:
        w.add_status(tenant, "w", "succeeded", 2.0)  # waiting -> succeeded: refused
        w.add_status(tenant, "a", "running", 2.0)
        w.add_status(tenant, "a", "succeeded", 3.0, result="ok")
        w.flush()
        assert w.pending == 0 and w.refused == 1
    assert "cannot become succeeded" in caplog.text
    assert stored(store, tenant, "a") == ("succeeded", 3.0, None)
    assert stored(store, tenant, "w") == ("waiting", 1.0, None)


# -- the cluster's batch steps: "if it still may" --------------------------------------------------
def attempt(tenant: str, tid: str, n: int, outcome: str = "succeeded") -> AttemptRecord:
    return AttemptRecord(tenant, tid, n, "ex-1", 1.0, 2.0, outcome)


def test_finish_many_ends_only_tasks_that_may_end_so(store, tenant, caplog):
    store.insert_tasks(
        [task(tenant, "q"), task(tenant, "w", "waiting"), task(tenant, "r", "retrying"), task(tenant, "x", "running")]
    )
    with caplog.at_level(logging.WARNING, logger="executors.store.tasks"):
        changed = store.finish_many(
            tenant,
            [("q", "succeeded", None), ("w", "succeeded", None), ("r", "succeeded", None), ("x", "failed", "boom")],
            2.0,
        )
    assert changed == {"q", "x"}
    assert [stored(store, tenant, t)[0] for t in "qwrx"] == ["succeeded", "waiting", "retrying", "failed"]
    assert "is waiting and cannot become succeeded" in caplog.text
    # a failure may end any unfinished task: a waiting one whose dependency failed, a retrying one
    assert store.finish_many(tenant, [("w", "failed", "dependency"), ("r", "failed", None)], 3.0) == {"w", "r"}


def test_settle_refuses_a_stale_attempt_but_keeps_its_record(store, tenant):
    store.insert_tasks([task(tenant, "r", "retrying"), task(tenant, "w", "waiting"), task(tenant, "q")])
    changed = store.settle(
        tenant,
        [attempt(tenant, "r", 0), attempt(tenant, "q", 0, "retrying")],
        [("r", "succeeded", None)],  # retrying -> succeeded: the task is not running
        [("w", 1, 50.0, "503"), ("q", 1, 60.0, "503")],  # waiting -> retrying: refused; queued -> retrying
        2.0,
    )
    assert changed == set()
    assert stored(store, tenant, "r")[0] == "retrying" and stored(store, tenant, "w")[0] == "waiting"
    q = store.get_task(tenant, "q")
    assert (q.status, q.attempt, q.retry_at_s) == ("retrying", 1, 60.0)
    assert [a.attempt for a in store.attempts_for(tenant, "r")] == [0]  # what ran is recorded all the same
    # the same retry again (a duplicate): nothing changes
    store.settle(tenant, [], [], [("q", 2, 70.0, "again")], 3.0)
    q = store.get_task(tenant, "q")
    assert (q.status, q.attempt, q.retry_at_s, q.updated_s) == ("retrying", 1, 60.0, 2.0)


def test_mark_queued_takes_only_statuses_that_may_be_queued(store, tenant):
    store.insert_tasks([task(tenant, "x", "running"), task(tenant, "s", "succeeded")])
    for bad in ("queued", "succeeded", "failed"):
        with pytest.raises(InvalidTransition, match=f"cannot go from {bad} to queued"):
            store.mark_queued(tenant, ["x", "s"], 2.0, (bad,))
    assert store.mark_queued(tenant, ["x", "s"], 2.0, ("running",)) == {"x"}  # redelivery after a crash
    assert stored(store, tenant, "x")[0] == "queued" and stored(store, tenant, "s")[0] == "succeeded"


def test_a_dead_letter_fails_an_unfinished_task_and_leaves_a_finished_one(store, tenant):
    store.insert_tasks([task(tenant, "w", "waiting"), task(tenant, "s", "succeeded")])
    letters = [DeadLetter(2.0, tenant, t, f"{i}-0", "the entry is not JSON", "{") for i, t in enumerate("ws")]
    assert store.dead_letter(tenant, letters, [("w", "dead-lettered"), ("s", "dead-lettered")], 2.0) == {"w"}
    assert stored(store, tenant, "w") == ("failed", 2.0, "dead-lettered")
    assert stored(store, tenant, "s") == ("succeeded", 1.0, None)


def test_the_cluster_paths_through_the_store(store, tenant):
    """The steps executors.cluster takes, in its order: submit (queued, or waiting on a dependency),
    a retryable failure settled (queued -> retrying), the retry due (-> queued), success settled
    (queued -> succeeded), the dependent released (waiting -> queued) and settled; a dependent of a
    failed task failed (waiting -> failed)."""
    store.insert_tasks([task(tenant, "pay"), task(tenant, "ship", "waiting"), task(tenant, "doomed", "waiting")])
    store.settle(tenant, [attempt(tenant, "pay", 0, "retrying")], [], [("pay", 1, 5.0, "503")], 2.0)
    assert store.mark_queued(tenant, ["pay"], 5.0, ("retrying",)) == {"pay"}
    assert store.settle(tenant, [attempt(tenant, "pay", 1)], [("pay", "succeeded", None)], [], 6.0) == {"pay"}
    assert store.mark_queued(tenant, ["ship"], 6.0, ("waiting",)) == {"ship"}
    assert store.settle(tenant, [attempt(tenant, "ship", 0, "failed")], [("ship", "failed", "402")], [], 7.0) == {
        "ship"
    }
    assert store.finish_many(tenant, [("doomed", "failed", "dependency 'ship' failed")], 7.0) == {"doomed"}
    assert store.status_counts(tenant) == {"succeeded": 1, "failed": 2}
    # a late duplicate of each final write is a no-op
    assert store.settle(tenant, [attempt(tenant, "pay", 1)], [("pay", "succeeded", None)], [], 8.0) == set()
    assert store.finish_many(tenant, [("doomed", "failed", "again")], 8.0) == set()
    assert stored(store, tenant, "doomed") == ("failed", 7.0, "dependency 'ship' failed")


# -- the cluster, end to end -----------------------------------------------------------------------
def test_the_cluster_runs_its_normal_paths_without_a_refused_transition(ray_local, tmp_path, caplog):
    """Dependencies, retries, an executor killed mid-run and a lost queue on the embedded default
    (one SQLite file for the store and the queue): every task ends once, and the store never had
    to refuse a step."""
    from executors.cluster import TaskCluster
    from executors.intake import Submitter
    from executors.pool import ExecutorPool
    from executors.queue import open_queue
    from tests.conftest import small_config

    cfg = small_config(intake={"tenants": ["shop"]})
    url = f"sqlite:///{tmp_path / 'autotune.db'}"
    store = TaskStore(url)
    store.create_schema()
    cluster = TaskCluster(
        cfg,
        store,
        lambda t: open_queue(url, t, visibility_timeout_s=1.0),
        lambda t: ExecutorPool(cfg, namespace=t, slots_per_actor=8, time_scale=0.02),
        concurrency=16,
    )
    try:
        tasks = [{"id": f"o{i}", "type": "order_processing", "payload": {"order": i}} for i in range(120)]
        tasks += [
            {"id": "pay", "type": "order_processing"},
            {"id": "stock", "type": "order_processing", "dependencies": ["pay"]},
            {"id": "ship", "type": "order_processing", "dependencies": ["stock"]},
        ]
        with caplog.at_level(logging.WARNING, logger="executors.store"):
            ids = cluster.submit(tasks, Submitter("alice", "shop"))
            for _ in range(3):
                cluster.run_once()
            ray.kill(cluster.pools["shop"].members[0].handle)
            cluster.run_once()
            cluster.queues["shop"].purge()  # rebuilt from the store
            assert cluster.run_until_idle(timeout_s=120)
        counts = store.status_counts("shop")
        assert counts.get("succeeded", 0) + counts.get("failed", 0) == len(ids)
        attempts = store.all_attempts("shop")
        assert any(a.outcome in ("retrying", "lost") for a in attempts), "no retry path was taken"
        assert "cannot become" not in caplog.text
    finally:
        cluster.close()
        store.close()


def test_the_sql_store_is_a_lifecycle_store():
    """The cluster is written against executors.store.LifecycleStore; TaskStore provides all of it
    (mypy checks the signatures where a TaskStore is passed to the cluster; this checks the names)."""
    import inspect

    from executors.store import LifecycleStore, TaskStore

    wanted = {n for n, _ in inspect.getmembers(LifecycleStore) if not n.startswith("_")}
    assert wanted <= {n for n, _ in inspect.getmembers(TaskStore)}
    assert {"settle", "mark_queued", "dead_letter", "update_statuses"} <= wanted
