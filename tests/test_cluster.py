"""The task cluster end to end on real servers: Ray (local), Redis and MariaDB.

Submission to stored result, with dependencies, retries and an executor killed mid-run: every task
ends with exactly one terminal record.
"""

from __future__ import annotations

import gc
import uuid

import pymysql
import pytest
import ray
import redis

from executors.cluster import TaskCluster, freeze_gc
from executors.intake import SubmissionError, Submitter
from executors.pool import ExecutorPool
from executors.queue import RedisTaskQueue
from executors.store import TaskStore
from tests.conftest import small_config

MARIADB = dict(host="127.0.0.1", port=3306, user="root", password="")
START_MARIADB = "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd (or bash .ci/services.sh)"
START_REDIS = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no (or bash .ci/services.sh)'
)


@pytest.fixture
def mysql_url():
    name = f"autotune_cluster_{uuid.uuid4().hex[:10]}"
    try:
        conn = pymysql.connect(**MARIADB, connect_timeout=5)
    except pymysql.err.OperationalError as err:
        pytest.fail(f"MariaDB at 127.0.0.1:3306 unreachable ({err}); start it with: {START_MARIADB}")
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    try:
        yield f"mysql+pymysql://root@127.0.0.1:3306/{name}"
    finally:
        conn.ping(reconnect=True)  # a fault test may have restarted the server under it
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


@pytest.fixture
def redis_client():
    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as err:
        pytest.fail(f"Redis at 127.0.0.1:6379 unreachable ({err}); start it with: {START_REDIS}")
    return client


@pytest.fixture
def cluster(ray_local, mysql_url, redis_client):
    cfg = small_config(intake={"tenants": ["shop", "books"]})
    store = TaskStore(mysql_url)
    store.create_schema()
    prefix = f"autotune-test-{uuid.uuid4().hex[:8]}"
    queues = []

    def queue_for(tenant):
        q = RedisTaskQueue(redis_client, tenant, prefix=prefix, visibility_timeout_s=1.0)
        queues.append(q)
        return q

    def pool_for(tenant):
        return ExecutorPool(cfg, namespace=tenant, slots_per_actor=8, time_scale=0.02)

    c = TaskCluster(cfg, store, queue_for, pool_for, concurrency=16)
    yield c
    c.close()
    for q in queues:
        q.purge()
    store.close()


ALICE = Submitter("alice", "shop")


def orders(n: int, prefix: str = "o"):
    return [{"id": f"{prefix}{i}", "type": "order_processing", "payload": {"order": i}} for i in range(n)]


def test_every_task_ends_once_with_dependencies_respected(cluster):
    chain = [
        {"id": "pay", "type": "order_processing"},
        {"id": "stock", "type": "order_processing", "dependencies": ["pay"]},
        {"id": "ship", "type": "order_processing", "dependencies": ["stock"]},
    ]
    ids = cluster.submit(orders(120) + chain, ALICE)
    assert cluster.run_until_idle(timeout_s=90)
    store = cluster.store
    records = {tid: store.get_task("shop", tid) for tid in ids}
    assert all(r is not None and r.status in ("succeeded", "failed") for r in records.values())
    counts = store.status_counts("shop")
    assert counts.get("succeeded", 0) + counts.get("failed", 0) == len(ids)
    # dependencies first: each dependent's first attempt starts after its dependency's last one ended
    end = {tid: max(a.ended_s for a in store.attempts_for("shop", tid)) for tid in ("pay", "stock")}
    start = {tid: min(a.started_s for a in store.attempts_for("shop", tid)) for tid in ("stock", "ship")}
    if records["pay"].status == "succeeded" and records["stock"].status == "succeeded":
        assert start["stock"] >= end["pay"] and start["ship"] >= end["stock"]
    assert len(store.audit("shop", limit=1000)) == len(ids)


def test_killed_executor_loses_nothing(cluster):
    ids = cluster.submit(orders(200, "k"), ALICE)
    for _ in range(3):
        cluster.run_once()
    victim = cluster.pools["shop"].members[0]
    ray.kill(victim.handle)
    assert cluster.run_until_idle(timeout_s=120)
    store = cluster.store
    for tid in ids:
        rec = store.get_task("shop", tid)
        assert rec is not None and rec.status in ("succeeded", "failed"), (tid, rec)
    attempts = [a for tid in ids for a in store.attempts_for("shop", tid)]
    lost = [a for a in attempts if a.outcome == "lost"]
    assert lost, "the killed executor had tasks in flight"
    assert all(any(b.task_id == a.task_id and b.attempt > a.attempt for b in attempts) for a in lost)


def test_cyclic_submission_is_refused_and_nothing_written(cluster):
    bad = [
        {"id": "a", "type": "order_processing", "dependencies": ["b"]},
        {"id": "b", "type": "order_processing", "dependencies": ["a"]},
    ]
    with pytest.raises(SubmissionError, match="dependency cycle"):
        cluster.submit(bad, ALICE)
    assert cluster.store.get_task("shop", "a") is None and cluster.store.get_task("shop", "b") is None
    assert not cluster.queues or sum(cluster.queues["shop"].backlog()) == 0


def test_redis_restarted_empty_queue_is_rebuilt_from_the_store(cluster):
    ids = cluster.submit(orders(150, "r"), ALICE)
    cluster.run_once()
    queue = cluster.queues["shop"]
    queue.purge()  # what a Redis restart without persistence leaves: nothing
    assert queue.is_empty_store()
    assert cluster.run_until_idle(timeout_s=120)
    store = cluster.store
    assert all(store.get_task("shop", t).status in ("succeeded", "failed") for t in ids)
    assert store.status_counts("shop").get("queued", 0) == 0
    assert any(e.action == "queue_rebuilt" for e in store.audit("shop", limit=1000))


def _kill_connections(db: str) -> int:
    admin = pymysql.connect(**MARIADB, autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()", (db,))
            ids = [row[0] for row in cur.fetchall()]
            for pid in ids:
                try:
                    cur.execute(f"KILL CONNECTION {int(pid)}")
                except pymysql.err.OperationalError:
                    pass  # ended on its own meanwhile
        return len(ids)
    finally:
        admin.close()


def test_mysql_connections_dropped_under_load_lose_nothing(cluster):
    db = cluster.store.engine.url.database
    ids = cluster.submit(orders(300, "m"), ALICE)
    killed = 0
    for i in range(40):
        cluster.run_once()
        if i % 8 == 3:  # the store's connections die mid-run, several times
            killed += _kill_connections(db)
        if i % 10 == 5:
            ids += cluster.submit(orders(20, f"m{i}-"), ALICE)  # intake keeps working between kills
    assert killed > 0, "the test did not kill any store connection"
    assert cluster.run_until_idle(timeout_s=120)
    store = cluster.store
    counts = store.status_counts("shop")
    assert counts.get("succeeded", 0) + counts.get("failed", 0) == len(ids) == len(set(ids))
    for tid in ids:
        attempts = store.attempts_for("shop", tid)
        assert attempts, f"task {tid} has no attempt row"
        assert len({a.attempt for a in attempts}) == len(attempts)


def test_tenants_run_on_their_own_executors(cluster):
    bob = Submitter("bob", "books")
    a = cluster.submit(orders(40, "s"), ALICE)
    b = cluster.submit(orders(40, "b"), bob)
    cluster.set_concurrency(32)
    assert set(cluster.pools) == {"shop", "books"}
    assert sum(p.target for p in cluster.pools.values()) == 32
    assert cluster.run_until_idle(timeout_s=90)
    store = cluster.store
    assert {store.get_task("shop", t).status for t in a} <= {"succeeded", "failed"}
    assert {store.get_task("books", t).status for t in b} <= {"succeeded", "failed"}
    assert store.get_task("books", a[0]) is None and store.get_task("shop", b[0]) is None
    executors = {
        tenant: {x.executor for t in ids for x in store.attempts_for(tenant, t)}
        for tenant, ids in (("shop", a), ("books", b))
    }
    assert executors["shop"] and executors["books"] and not executors["shop"] & executors["books"]


@pytest.fixture
def embedded_cluster(ray_local, tmp_path):
    """The embedded default: one SQLite file is both the store and the live queue; no servers."""
    from executors.queue import open_queue

    cfg = small_config(intake={"tenants": ["shop", "books"]})
    url = f"sqlite:///{tmp_path / 'autotune.db'}"
    store = TaskStore(url)
    store.create_schema()

    def pool_for(tenant):
        return ExecutorPool(cfg, namespace=tenant, slots_per_actor=8, time_scale=0.02)

    c = TaskCluster(
        cfg, store, lambda tenant: open_queue(url, tenant, visibility_timeout_s=1.0), pool_for, concurrency=16
    )
    yield c
    c.close()
    store.close()


def test_embedded_default_runs_dependencies_survives_a_killed_executor_and_a_lost_queue(embedded_cluster):
    c = embedded_cluster
    chain = [
        {"id": "pay", "type": "order_processing"},
        {"id": "ship", "type": "order_processing", "dependencies": ["pay"]},
    ]
    ids = c.submit(orders(150, "e") + chain, ALICE)
    for _ in range(3):
        c.run_once()
    ray.kill(c.pools["shop"].members[0].handle)
    c.run_once()
    c.queues["shop"].purge()  # the live queue's data is gone: rebuilt from the store
    assert c.run_until_idle(timeout_s=120)
    counts = c.store.status_counts("shop")
    assert counts.get("succeeded", 0) + counts.get("failed", 0) == len(ids)
    assert any(e.action == "queue_rebuilt" for e in c.store.audit("shop", limit=1000))
    pay, ship = c.store.get_task("shop", "pay"), c.store.get_task("shop", "ship")
    if pay.status == "succeeded":
        assert ship.status in ("succeeded", "failed")
        assert min(a.started_s for a in c.store.attempts_for("shop", "ship")) >= max(
            a.ended_s for a in c.store.attempts_for("shop", "pay")
        )
    else:
        assert ship.status == "failed"


def test_freeze_gc_exempts_what_is_alive_now_and_says_how_much():
    before = gc.get_freeze_count()
    try:
        keep = [{"x": [i]} for i in range(1000)]  # tracked containers, alive now
        frozen = freeze_gc()
        assert frozen == gc.get_freeze_count() >= before + 2000
        assert keep
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual


@pytest.mark.parametrize("queue_kind", ["redis", "sql"])
def test_queued_tasks_rise_in_class_as_their_deadline_nears(ray_local, redis_client, tmp_path, queue_kind):
    """Dynamic priority: a task is scored at submission and again while it waits."""
    from executors.queue import open_queue

    now = [1_800_000_000.0]
    cfg = small_config(intake={"tenants": ["shop"]})
    url = f"sqlite:///{tmp_path / 'c.db'}"
    store = TaskStore(url)
    store.create_schema()
    prefix = f"autotune-test-{uuid.uuid4().hex[:8]}"
    made = []

    def queue_for(tenant):
        q = RedisTaskQueue(redis_client, tenant, prefix=prefix) if queue_kind == "redis" else open_queue(url, tenant)
        made.append(q)
        return q

    c = TaskCluster(
        cfg,
        store,
        queue_for,
        lambda t: ExecutorPool(cfg, namespace=t, slots_per_actor=8, time_scale=0.02),
        concurrency=0,
        clock=lambda: now[0],
        rescore_every_s=5.0,
    )
    try:
        c.submit(
            [
                {"id": "soon", "type": "order_processing", "deadline_s": now[0] + 600},
                {"id": "later", "type": "order_processing", "deadline_s": now[0] + 3600},
                {"id": "never", "type": "order_processing"},
            ],
            ALICE,
        )
        (q,) = made
        assert q.backlog() == (0, 3, 0)
        c.run_once(collect_timeout_s=0.0)
        assert q.backlog() == (0, 3, 0)  # nothing changed yet
        now[0] += 500  # "soon" is 100 s from its deadline: urgent now
        c.run_once(collect_timeout_s=0.0)
        assert q.backlog() == (1, 2, 0)
        assert c.rescore() == 0  # scored again, nothing more to move
        c.set_concurrency(8)
        assert c.run_until_idle(timeout_s=60)
        counts = store.status_counts("shop")
        assert sum(counts.values()) == 3 and set(counts) <= {"succeeded", "failed"}
        assert not c.entries and not c.deadlines
    finally:
        c.close()
        for q in made:
            q.purge()
        store.close()
