"""The live task queue on every backend: Redis (127.0.0.1:6379), and the SQL queue on SQLite (a file in
tmp_path) and on the real MariaDB (127.0.0.1:3306).

The behavioural tests run on all three (the ``make_queue`` fixture is parametrized), because the
cluster must not notice which one it got. Redis queues live under a random key prefix that is purged
afterwards; every MariaDB test gets its own database, created and dropped around it (the helper of
``tests/test_store.py``). An unreachable server fails the tests (they do not skip) saying how to
start it. Redis-only details (key names, key expiry, NOGROUP) and SQL-only ones (threads and
processes claiming at once, status expiry) have their own tests.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from redis.backoff import NoBackoff
from redis.retry import Retry

from executors.queue import START_HINT, Delivery, QueueError, RedisTaskQueue, TaskQueue, open_queue
from executors.sqlite_queue import SQLTaskQueue, entries_table, metadata, status_table, tenants_table
from tests.test_store import _admin_connection

REDIS_URL = "redis://127.0.0.1:6379/0"

_client: redis.Redis | None = None
_client_error: str | None = None


def _redis() -> redis.Redis:
    """One client for the module; connection failure fails the test (once tried, fails fast after)."""
    global _client, _client_error
    if _client is None and _client_error is None:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
        try:
            client.ping()
            _client = client
        except redis.RedisError as e:
            _client_error = f"Redis at 127.0.0.1:6379 is not reachable ({e}); {START_HINT}"
    if _client_error is not None:
        pytest.fail(_client_error, pytrace=False)
    return _client


# ---- backends ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mariadb_admin():
    admin = _admin_connection()  # fails the test, naming how to start MariaDB, if it is not there
    yield admin
    admin.close()


@pytest.fixture
def sql_url(request, tmp_path):
    """A SQLAlchemy URL of an empty database: a SQLite file, or a MariaDB database of this test only."""
    return f"sqlite:///{tmp_path / 'queue.db'}" if request.param == "sqlite" else _mariadb_database(request)


class RedisBackend:
    """Queues under one random key prefix; ``lose`` is Redis restarting empty."""

    name = "redis"

    def __init__(self) -> None:
        self.prefix = f"autotune-test-{uuid.uuid4().hex}"
        self.made: list[RedisTaskQueue] = []

    def make(self, tenant: str = "t", **kw: Any) -> RedisTaskQueue:
        queue = RedisTaskQueue(_redis(), tenant, prefix=self.prefix, **kw)
        self.made.append(queue)
        return queue

    def lose(self, q: RedisTaskQueue, *, streams_only: bool = False) -> None:
        r = _redis()
        keys = q.streams if streams_only else list(r.scan_iter(match=f"{q.key_prefix}*", count=1000))
        r.delete(*keys)

    def owners(self, q: RedisTaskQueue) -> list[str]:
        """Consumers holding delivered, unacked entries, class 0 first, oldest first."""
        r = _redis()
        return [p["consumer"].decode() for s in q.streams for p in r.xpending_range(s, q.group, "-", "+", 1000)]

    def close(self) -> None:
        if _client is None:
            return
        for queue in self.made:
            queue.purge()
        assert not list(_client.scan_iter(match=f"{self.prefix}:*", count=1000)), "purge left keys behind"


class SQLBackend:
    """Queues in one database; ``lose`` is the database replaced by an empty one (tables gone)."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        self.made: list[SQLTaskQueue] = []

    def make(self, tenant: str = "t", **kw: Any) -> SQLTaskQueue:
        queue = SQLTaskQueue(self.url, tenant, **kw)
        self.made.append(queue)
        return queue

    def lose(self, q: SQLTaskQueue, *, streams_only: bool = False) -> None:
        with q.engine.begin() as conn:
            metadata.drop_all(conn)

    def owners(self, q: SQLTaskQueue) -> list[str]:
        e = entries_table.c
        with q.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(e.claimed_by)
                    .where(e.tenant == q.tenant, e.claimed_by.is_not(None))
                    .order_by(e.priority_class, e.id)
                ).scalars()
            )

    def close(self) -> None:
        for queue in self.made:
            queue.purge()
            with queue.engine.connect() as conn:
                for table in (entries_table, status_table, tenants_table):
                    if sa.inspect(conn).has_table(table.name):
                        left = conn.execute(
                            sa.select(sa.func.count()).select_from(table).where(table.c.tenant == queue.tenant)
                        ).scalar_one()
                        assert left == 0, f"purge left {left} rows in {table.name}"
            queue.close()


@pytest.fixture(params=["redis", "sqlite", "mariadb"])
def backend(request, tmp_path):
    if request.param == "redis":
        b: RedisBackend | SQLBackend = RedisBackend()
    elif request.param == "sqlite":
        b = SQLBackend("sqlite", f"sqlite:///{tmp_path / 'queue.db'}")
    else:
        b = SQLBackend("mariadb", _mariadb_database(request))
    yield b
    b.close()


def _mariadb_database(request) -> str:
    """A database for this test only, dropped at its end."""
    admin = request.getfixturevalue("mariadb_admin")
    name = f"autotune_queue_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")

    def drop() -> None:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")

    request.addfinalizer(drop)
    return f"mysql+pymysql://root@127.0.0.1:3306/{name}"


@pytest.fixture
def make_queue(backend):
    """``make_queue(tenant="t", **kw)``: a queue of this test's backend; purged at teardown."""
    return backend.make


def ids(deliveries: list[Delivery]) -> list[str]:
    return [d.task_id for d in deliveries]


# ---- behaviour, every backend --------------------------------------------------------------------


def test_round_trip_with_payload(make_queue):
    q = make_queue()
    assert isinstance(q, TaskQueue)
    payload = {"order": 17, "items": [{"sku": "a-1", "qty": 2}], "note": "zwölf €", "ok": True, "x": None}
    message_id = q.enqueue("task-1", 1, payload)
    [d] = q.claim("exec-1", 10)
    assert d == Delivery("task-1", 1, payload, message_id, 1)
    assert q.in_flight() == 1
    q.ack([d])
    assert q.claim("exec-1", 10) == []
    assert q.backlog() == (0, 0, 0) and q.in_flight() == 0


def test_strict_priority_and_fifo_within_a_class(make_queue):
    q = make_queue()
    q.enqueue_many(
        [("low-1", 2, {}), ("norm-1", 1, {}), ("high-1", 0, {}), ("low-2", 2, {}), ("norm-2", 1, {}), ("high-2", 0, {})]
    )
    first = q.claim("exec-1", 3)
    assert ids(first) == ["high-1", "high-2", "norm-1"]
    assert [d.priority_class for d in first] == [0, 0, 1]
    q.enqueue("high-3", 0, {})  # arrives later but still goes before everything of lower classes
    assert ids(q.claim("exec-1", 10)) == ["high-3", "norm-2", "low-1", "low-2"]
    assert q.claim("exec-1", 0) == []


def test_promote_moves_waiting_entries_up_and_leaves_delivered_ones(make_queue):
    q = make_queue()
    mids = q.enqueue_many([("low-1", 2, {"d": 1}), ("norm-1", 1, {}), ("low-2", 2, {}), ("norm-2", 1, {})])
    [taken] = q.claim("exec-1", 1)  # norm-1 is delivered: it stays where it is
    assert taken.task_id == "norm-1"
    moved = q.promote([(mids[0], 2, 0), (mids[1], 1, 0), (mids[2], 2, 2), (mids[3], 1, 2)])
    assert set(moved) == {mids[0]}  # not the delivered one, not a same-class or downward move
    assert q.backlog() == (1, 1, 1) and q.in_flight() == 1
    first = q.claim("exec-1", 10)
    assert ids(first) == ["low-1", "norm-2", "low-2"] and first[0].priority_class == 0
    assert first[0].payload == {"d": 1} and first[0].message_id == moved[mids[0]]
    q.ack([taken, *first])
    assert q.promote([(moved[mids[0]], 0, 0)]) == {} and q.promote([(mids[3], 2, 0)]) == {}  # gone
    with pytest.raises(ValueError, match="priority class must be 0, 1 or 2"):
        q.promote([(mids[0], 3, 0)])


def test_unacked_delivery_comes_back_only_after_the_visibility_timeout(backend, make_queue):
    q = make_queue(visibility_timeout_s=0.2)
    q.enqueue_many([("t-1", 1, {"n": 1}), ("t-2", 0, {"n": 2})])
    taken = q.claim("exec-dies", 10)
    assert ids(taken) == ["t-2", "t-1"] and all(d.deliveries == 1 for d in taken)

    assert q.claim("exec-other", 10) == []  # not before the timeout
    time.sleep(0.3)  # exec-dies never acks
    again = q.claim("exec-other", 10)
    assert ids(again) == ["t-2", "t-1"]  # high class first on the reclaim path too
    assert [d.deliveries for d in again] == [2, 2]
    assert [d.message_id for d in again] == [d.message_id for d in taken]
    assert [d.payload for d in again] == [{"n": 2}, {"n": 1}]
    assert backend.owners(q) == ["exec-other", "exec-other"]  # ownership moved

    q.ack(again)
    assert q.in_flight() == 0 and q.backlog() == (0, 0, 0)
    time.sleep(0.3)
    assert q.claim("exec-third", 10) == []  # acked entries never come back


def test_reclaimed_entries_count_towards_count_and_go_first(make_queue):
    q = make_queue(visibility_timeout_s=0.2)
    q.enqueue("old-low", 2, {})
    q.claim("exec-dies", 1)
    q.enqueue_many([("new-high", 0, {}), ("new-norm", 1, {})])
    time.sleep(0.3)
    got = q.claim("exec-2", 2)
    assert [(d.task_id, d.deliveries) for d in got] == [("old-low", 2), ("new-high", 1)]
    assert ids(q.claim("exec-2", 5)) == ["new-norm"]


def test_a_late_ack_of_a_reclaimed_entry_removes_it_for_both(make_queue):
    q = make_queue(visibility_timeout_s=0.2)
    q.enqueue("slow", 1, {})
    [first] = q.claim("exec-slow", 1)
    time.sleep(0.3)
    [second] = q.claim("exec-fast", 1)
    q.ack([first])  # the slow executor finishes after all
    assert q.in_flight() == 0
    q.ack([second])  # already gone: nothing happens
    time.sleep(0.3)
    assert q.claim("exec-third", 5) == []


def test_message_ids_are_never_reused(make_queue):
    q = make_queue()
    first = q.enqueue("a", 1, {})
    q.ack(q.claim("exec-1", 1))  # the newest entry is gone: an id counter could step back
    second = q.enqueue("b", 1, {})
    assert second != first
    # a stale ack carrying the first id must not remove the new entry
    q.ack([Delivery("a", 1, {}, first, 2)])
    assert ids(q.claim("exec-1", 5)) == ["b"]


def test_tenants_are_isolated(make_queue):
    a, b = make_queue("tenant-a"), make_queue("tenant-b")
    a.enqueue_many([("a-1", 0, {"secret": 1}), ("a-2", 2, {})])
    a.set_status("a-1", "queued")

    assert b.claim("exec-b", 100) == []
    assert b.backlog() == (0, 0, 0) and b.in_flight() == 0
    assert b.get_status("a-1") is None
    [d] = a.claim("exec-a", 1)
    b.ack([d])  # another tenant's ack does not touch a's entries
    assert a.in_flight() == 1
    a.ack([d])
    b.purge()
    assert a.backlog() == (0, 0, 1) and a.get_status("a-1")["status"] == "queued"
    assert not a.is_empty_store() and b.is_empty_store()
    assert ids(a.claim("exec-a", 100)) == ["a-2"]


@pytest.mark.parametrize("tenant", ["a:b", "a*", "", "a b", "x" * 65])
def test_tenant_names_that_could_reach_other_tenants_are_refused(make_queue, tenant):
    with pytest.raises(ValueError, match="tenant"):
        make_queue(tenant)


def test_backlog_counts_waiting_entries_and_in_flight_the_running_ones(make_queue):
    q = make_queue()
    q.enqueue_many([("h1", 0, {}), ("h2", 0, {}), ("h3", 0, {}), ("n1", 1, {}), ("n2", 1, {}), ("l1", 2, {})])
    assert q.backlog() == (3, 2, 1) and q.in_flight() == 0
    taken = q.claim("exec-1", 4)
    assert ids(taken) == ["h1", "h2", "h3", "n1"]
    assert q.backlog() == (0, 1, 1) and q.in_flight() == 4  # running tasks are not backlog
    q.ack(taken[:2])
    assert q.backlog() == (0, 1, 1) and q.in_flight() == 2
    q.ack(taken[2:])
    assert q.backlog() == (0, 1, 1) and q.in_flight() == 0
    q.enqueue("h4", 0, {})
    assert q.backlog() == (1, 1, 1)


def test_five_thousand_in_batches_each_delivered_exactly_once(make_queue):
    q = make_queue()
    n = 5_000
    message_ids = q.enqueue_many([(f"t{i}", i % 3, {"i": i}) for i in range(n)])
    assert len(set(zip([i % 3 for i in range(n)], message_ids))) == n  # ids are unique per class
    assert q.backlog() == (1667, 1667, 1666)
    seen: list[Delivery] = []
    for k in range(20):
        batch = q.claim(f"exec-{k % 2}", 500)
        if not batch:
            break
        assert len(batch) <= 500
        q.ack(batch)
        seen.extend(batch)
    counts = Counter(ids(seen))
    assert len(counts) == n and set(counts.values()) == {1}
    assert all(d.payload == {"i": int(d.task_id[1:])} and d.deliveries == 1 for d in seen)
    classes = [d.priority_class for d in seen]
    assert classes == sorted(classes)  # strictly by class across batches
    assert q.backlog() == (0, 0, 0) and q.in_flight() == 0 and q.claim("exec-0", 500) == []


def test_batches_larger_than_one_statement_claim_ack_and_set_status_every_entry(make_queue):
    """Claims, acks and statuses of more ids than one IN (...) list takes (500) go in several
    statements, the last one's list padded; none is lost, none doubled."""
    q = make_queue()
    n = 1_234
    q.enqueue_many([(f"t{i}", i % 3, {"i": i}) for i in range(n)])
    got = q.claim("exec-1", n + 10)
    assert sorted(ids(got)) == sorted(f"t{i}" for i in range(n)) and q.in_flight() == n
    q.set_status_many([(d.task_id, "running", {"attempt": "0"}) for d in got])
    q.set_status_many([(d.task_id, "succeeded", {"executor": "e"}) for d in got[: n // 2]])
    first, last = got[0].task_id, got[-1].task_id
    assert q.get_status(first) == {
        "status": "succeeded",
        "attempt": "0",
        "executor": "e",
        "updated_s": q.get_status(first)["updated_s"],
    }  # merged
    assert q.get_status(last) == {"status": "running", "attempt": "0", "updated_s": q.get_status(last)["updated_s"]}
    q.ack(got[:-1])
    assert q.in_flight() == 1 and q.backlog() == (0, 0, 0)
    q.ack(got)  # one of them not acked yet, the rest already gone: no error
    assert q.in_flight() == 0 and q.claim("exec-1", 10) == []


def test_status(make_queue):
    q = make_queue()
    assert q.get_status("t-1") is None
    before = time.time()
    q.set_status("t-1", "running", attempt="1", executor="exec-7")
    s = q.get_status("t-1")
    assert s["status"] == "running" and s["attempt"] == "1" and s["executor"] == "exec-7"
    assert before - 1 <= float(s["updated_s"]) <= time.time() + 1
    q.set_status("t-1", "succeeded", attempt="1")
    s = q.get_status("t-1")
    assert s["status"] == "succeeded" and s["executor"] == "exec-7"  # fields not given are kept

    q.set_status_many([(f"b{i}", "queued", {"attempt": "0"}) for i in range(3)])
    assert [q.get_status(f"b{i}")["status"] for i in range(3)] == ["queued"] * 3
    q.set_status_many([("b0", "running", {"attempt": "1"}), ("b0", "retrying", {"error": "503"})])
    assert q.get_status("b0") == {
        "status": "retrying",
        "attempt": "1",
        "error": "503",
        "updated_s": q.get_status("b0")["updated_s"],
    }  # in order, merged


def test_lost_store_is_detected_and_rebuilt(backend, make_queue):
    q = make_queue(visibility_timeout_s=0.2)
    assert not q.is_empty_store()
    q.enqueue_many([("t-1", 0, {"a": 1}), ("t-2", 2, {"b": 2})])
    q.claim("exec-1", 1)  # one in flight when the server loses everything

    backend.lose(q)
    assert q.is_empty_store()
    assert q.backlog() == (0, 0, 0) and q.in_flight() == 0
    assert q.get_status("t-1") is None
    with pytest.raises(QueueError, match="rebuild"):
        q.claim("exec-1", 10)

    unfinished = [("t-1", 0, {"a": 1}), ("t-2", 2, {"b": 2})]  # as the SQL store would list them
    assert q.rebuild(iter(unfinished)) == 2
    assert not q.is_empty_store()
    got = q.claim("exec-2", 10)
    assert [(d.task_id, d.priority_class, d.payload, d.deliveries) for d in got] == [
        ("t-1", 0, {"a": 1}, 1),
        ("t-2", 2, {"b": 2}, 1),
    ]


def test_an_enqueue_after_the_loss_is_still_served_after_rebuild(backend, make_queue):
    q = make_queue()
    backend.lose(q, streams_only=True)
    q.enqueue("arrived-after-restart", 1, {})  # recreates the stream (without its group) / the tables
    assert q.is_empty_store()
    q.rebuild([("from-store", 1, {})])
    assert ids(q.claim("exec-1", 10)) == ["arrived-after-restart", "from-store"]


def test_purged_queue_is_empty_until_rebuilt(make_queue):
    q = make_queue()
    q.enqueue("t-1", 1, {})
    q.set_status("t-1", "queued")
    q.purge()
    assert q.is_empty_store() and q.backlog() == (0, 0, 0) and q.get_status("t-1") is None
    with pytest.raises(QueueError, match="rebuild"):
        q.claim("exec-1", 10)
    assert q.rebuild([]) == 0
    assert not q.is_empty_store() and q.claim("exec-1", 10) == []


def test_unencodable_payload_is_refused_naming_the_task(make_queue):
    q = make_queue()
    with pytest.raises(ValueError, match="bad-7"):
        q.enqueue("bad-7", 1, {"when": object()})
    with pytest.raises(ValueError, match="nan-1"):
        q.enqueue("nan-1", 1, {"x": math.nan})
    with pytest.raises(ValueError, match="bad-2"):
        q.enqueue_many([("good-1", 0, {}), ("bad-2", 0, {"s": {1, 2}}), ("good-3", 0, {})])
    with pytest.raises(ValueError, match="priority class"):
        q.enqueue("t", 3, {})
    assert q.backlog() == (0, 0, 0)  # a refused batch enqueues nothing


# ---- Redis only ----------------------------------------------------------------------------------


@pytest.fixture
def redis_backend():
    b = RedisBackend()
    yield b
    b.close()


def test_redis_keys_stay_under_the_tenant_prefix(redis_backend):
    a, b = redis_backend.make("tenant-a"), redis_backend.make("tenant-b")
    a.enqueue("a-1", 0, {})
    a.set_status("a-1", "queued")
    b.purge()
    keys = [k.decode() for k in _redis().scan_iter(match=f"{redis_backend.prefix}:*", count=1000)]
    assert keys and all(k.startswith(f"{redis_backend.prefix}:tenant-a:") for k in keys)


def test_redis_status_keys_expire(redis_backend):
    q = redis_backend.make()
    q.set_status("t-1", "running")
    assert 0 < _redis().ttl(f"{q.key_prefix}status:t-1") <= 86_400


def test_redis_batches_survive_a_lost_script_cache(redis_backend):
    """Enqueues and statuses are server-side scripts; a restarted Redis has none cached, and the
    next call loads them again instead of failing."""
    q = redis_backend.make()
    q.enqueue_many([("a", 0, {"n": 1}), ("b", 2, {})])
    _redis().script_flush()
    q.enqueue_many([("c", 1, {})])
    q.set_status_many([("a", "running", {"attempt": "0"}), ("a", "succeeded", {})])
    assert ids(q.claim("exec-1", 10)) == ["a", "c", "b"]
    assert q.get_status("a")["status"] == "succeeded" and q.get_status("a")["attempt"] == "0"


def test_redis_flushed_streams_raise_nogroup_as_queue_error(redis_backend):
    q = redis_backend.make()
    _redis().delete(*q.streams)
    with pytest.raises(QueueError, match=r"consumer group 'executors' are gone .*rebuild"):
        q.claim("exec-1", 1)


def test_unreachable_redis_raises_queue_error_with_a_hint():
    started = time.time()
    with pytest.raises(QueueError) as info:
        RedisTaskQueue.connect("redis://127.0.0.1:1/0", "t")
    message = str(info.value)
    assert "127.0.0.1:1" in message and "unreachable" in message and "redis-server --daemonize yes" in message
    # No retries: redis-py's default retry policy backs off for seconds before giving up.
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    with pytest.raises(QueueError, match="127.0.0.1:1"):
        RedisTaskQueue(client, "t")
    assert time.time() - started < 10


# ---- SQL only ------------------------------------------------------------------------------------


def _claim_in_rounds(q: SQLTaskQueue, consumer: str, rounds: int, each_round: Any, out: list) -> None:
    """Claim 20 per round, both claimers starting each round together. Lockstep, because SQLite's
    busy handler is not fair: left alone, one claimer can take every lock while the other sleeps,
    and the test would pass without any race having taken place."""
    for _ in range(rounds):
        each_round.wait()
        out.extend(q.claim(consumer, 20))


@pytest.mark.parametrize("sql_url", ["sqlite", "mariadb"], indirect=True)
def test_two_threads_claiming_from_one_queue_never_share_an_entry(sql_url):
    q = SQLTaskQueue(sql_url, "t", visibility_timeout_s=600)  # no redelivery during the test
    try:
        n = 2_000
        q.enqueue_many([(f"t{i}", i % 3, {"i": i}) for i in range(n)])
        got: list[list[Delivery]] = [[], []]
        each_round = threading.Barrier(2)
        threads = [
            threading.Thread(target=_claim_in_rounds, args=(q, f"exec-{k}", 55, each_round, got[k])) for k in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        first, second = ({d.message_id for d in g} for g in got)
        assert first and second, "both threads claimed (the race took place)"
        assert not first & second
        assert len(got[0]) + len(got[1]) == n and len(first | second) == n
        assert q.in_flight() == n and q.backlog() == (0, 0, 0)
    finally:
        q.close()


def _claim_in_process(url: str, consumer: str, rounds: int, each_round: Any, results: Any) -> None:
    q = SQLTaskQueue(url, "t", visibility_timeout_s=600)
    out: list[Delivery] = []
    _claim_in_rounds(q, consumer, rounds, each_round, out)
    results.put((consumer, [d.message_id for d in out]))
    q.close()


def test_two_processes_claiming_from_one_sqlite_file_never_share_an_entry(tmp_path):
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    q = SQLTaskQueue(url, "t", visibility_timeout_s=600)
    n = 2_000
    q.enqueue_many([(f"t{i}", 1, {}) for i in range(n)])
    ctx = multiprocessing.get_context("spawn")
    each_round, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_claim_in_process, args=(url, f"proc-{k}", 55, each_round, results)) for k in range(2)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0, 0]
    first, second = (set(v) for v in got.values())
    assert first and second, "both processes claimed (the race took place)"
    assert not first & second
    assert sum(len(v) for v in got.values()) == n and len(first | second) == n
    q.close()


def test_sql_status_expires_after_its_ttl(tmp_path):
    now = [1_000.0]
    q = SQLTaskQueue(f"sqlite:///{tmp_path / 'q.db'}", "t", status_ttl_s=60, clock=lambda: now[0])
    q.set_status("old", "running", executor="e-1")
    now[0] += 61
    assert q.get_status("old") is None
    q.set_status("old", "queued")  # an expired status is not merged into
    assert q.get_status("old") == {"status": "queued", "updated_s": "1061.000000"}
    q.set_status("other", "running")  # the sweep deleted expired rows meanwhile
    now[0] += 61
    q.set_status("new", "queued")
    with q.engine.connect() as conn:
        left = conn.execute(sa.select(status_table.c.task_id)).scalars().all()
    assert left == ["new"]
    q.close()


def test_sql_queue_and_store_share_one_sqlite_file(tmp_path):
    from executors.store import TaskStore

    url = f"sqlite:///{tmp_path / 'autotune.db'}"
    store = TaskStore(url)
    store.create_schema()
    q = SQLTaskQueue(url, "t")
    q.enqueue("t-1", 0, {})
    assert set(sa.inspect(q.engine).get_table_names()) >= {
        "tasks",
        "attempts",
        "audit_log",
        "queue_entries",
        "task_status",
        "queue_tenants",
    }
    assert ids(q.claim("exec-1", 5)) == ["t-1"]
    q.close()
    store.close()


@pytest.mark.parametrize(
    "url, words",
    [
        ("mysql+pymysql://root:s3cret@127.0.0.1:1/autotune", ["127.0.0.1:1/autotune", "unreachable", "mariadbd"]),
        ("sqlite:////nonexistent-dir/autotune.db", ["/nonexistent-dir/autotune.db", "cannot be opened"]),
    ],
)
def test_unreachable_database_raises_queue_error_naming_the_url(url, words):
    with pytest.raises(QueueError) as info:
        SQLTaskQueue.connect(url, "t")
    message = str(info.value)
    assert all(w in message for w in words), message
    assert "s3cret" not in message


# ---- open_queue --------------------------------------------------------------------------------


def test_open_queue_picks_the_backend_from_the_url(tmp_path, monkeypatch):
    _redis()
    prefix = f"autotune-test-{uuid.uuid4().hex}"
    r = open_queue(REDIS_URL, "t", prefix=prefix, visibility_timeout_s=5)
    try:
        assert isinstance(r, RedisTaskQueue) and r.visibility_timeout_s == 5 and r.prefix == prefix
    finally:
        r.purge()
    s = open_queue(f"sqlite:///{tmp_path / 'q.db'}", "t", visibility_timeout_s=7)
    assert isinstance(s, SQLTaskQueue) and s.visibility_timeout_s == 7 and s.tenant == "t"
    s.close()
    monkeypatch.chdir(tmp_path)
    d = open_queue(None, "t")
    assert isinstance(d, SQLTaskQueue) and (tmp_path / "autotune.db").exists()
    d.close()
    d = open_queue(None, "t", default_path=str(tmp_path / "elsewhere.db"))
    assert (tmp_path / "elsewhere.db").exists()
    d.close()
    with pytest.raises(QueueError, match="127.0.0.1:1"):
        open_queue("redis://127.0.0.1:1/0", "t")


# ---- recovery and long work: task_ids, extend, release, undecodable entries ---------------------------


def test_task_ids_names_waiting_and_claimed_entries(make_queue):
    q = make_queue()
    q.enqueue_many([(f"t{i}", i % 3, {}) for i in range(5)])
    taken = q.claim("exec-1", 2)
    assert q.task_ids() == {f"t{i}" for i in range(5)}
    q.ack(taken)
    assert q.task_ids() == {f"t{i}" for i in range(5)} - {d.task_id for d in taken}


def test_extend_keeps_a_long_running_entry_from_being_handed_out_again(make_queue):
    q = make_queue(visibility_timeout_s=0.4)
    q.enqueue("long", 1, {})
    [d] = q.claim("exec-1", 1)
    for _ in range(3):  # 0.75 s in all, well past the timeout, extended every 0.25 s
        time.sleep(0.25)
        q.extend("exec-1", [d])
        assert q.claim("exec-2", 10) == []
    time.sleep(0.5)  # no more extensions: it times out as usual, as a redelivery
    [again] = q.claim("exec-2", 10)
    assert again.task_id == "long" and again.deliveries == 2


def test_release_hands_entries_back_at_once_as_redeliveries(make_queue):
    q = make_queue(visibility_timeout_s=60.0)
    q.enqueue_many([("a", 1, {}), ("b", 1, {}), ("c", 0, {})])
    taken = q.claim("driver-that-died", 3)
    assert q.claim("driver-2", 10) == []
    q.release([d for d in taken if d.task_id == "a"])
    assert [(d.task_id, d.deliveries) for d in q.claim("driver-2", 10)] == [("a", 2)]
    assert q.release_claimed() == 3  # b and c of the dead driver, and a again
    got = q.claim("driver-2", 10)
    assert sorted((d.task_id, d.deliveries) for d in got) == [("a", 3), ("b", 2), ("c", 2)]
    q.ack(got)
    assert q.release_claimed() == 0 and q.in_flight() == 0


def test_an_undecodable_entry_is_delivered_with_its_error_not_raised(backend, make_queue):
    q = make_queue()
    q.enqueue_many([("good-1", 1, {"attempt": 0})])
    if backend.name == "redis":
        _redis().xadd(q.streams[1], {"task_id": "bad", "payload": b"{not json"})
        _redis().xadd(q.streams[1], {"payload": b"{}"})  # no task id at all
    else:
        with q.engine.begin() as conn:
            for tid in ("bad", ""):
                conn.execute(
                    entries_table.insert(),
                    {
                        "tenant": q.tenant,
                        "task_id": tid,
                        "priority_class": 1,
                        "payload": "{not json" if tid else "[1]",
                        "enqueued_s": 0.0,
                        "deliveries": 0,
                    },
                )
    q.enqueue("good-2", 1, {"attempt": 0})
    got = q.claim("exec-1", 10)
    assert [d.task_id for d in got] == ["good-1", "bad", "", "good-2"]
    assert got[0].error is None and got[3].error is None
    assert "not JSON" in got[1].error and got[1].payload == {}
    assert got[2].error == "the entry has no task id"
    q.ack(got)
    assert q.in_flight() == 0


def test_ping_and_an_unreachable_server_is_unavailable(make_queue):
    from executors.queue import QueueUnavailable

    make_queue().ping()
    with pytest.raises(QueueUnavailable, match="unreachable"):
        RedisTaskQueue.connect("redis://127.0.0.1:1/0", "t", socket_timeout_s=0.5)
    with pytest.raises(QueueUnavailable, match="unreachable"):
        SQLTaskQueue("mysql+pymysql://root@127.0.0.1:1/x", "t")
