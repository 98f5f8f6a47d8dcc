"""The Redis Streams task queue against the real Redis at 127.0.0.1:6379.

Every test works under its own random key prefix and purges it afterwards, so runs never collide and
leave nothing behind. Without a reachable Redis the tests fail (they do not skip) and say how to start one.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from executors.queue import START_HINT, Delivery, QueueError, RedisTaskQueue

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


@pytest.fixture
def make_queue():
    """``make_queue(tenant="t", **kw)``: a queue under this test's random prefix; purged at teardown."""
    prefix = f"autotune-test-{uuid.uuid4().hex}"
    made: list[RedisTaskQueue] = []

    def make(tenant: str = "t", **kw) -> RedisTaskQueue:
        queue = RedisTaskQueue(_redis(), tenant, prefix=prefix, **kw)
        made.append(queue)
        return queue

    make.prefix = prefix
    yield make
    if _client is not None:
        for queue in made:
            queue.purge()
        assert not list(_client.scan_iter(match=f"{prefix}:*", count=1000)), "purge left keys behind"


def ids(deliveries: list[Delivery]) -> list[str]:
    return [d.task_id for d in deliveries]


def test_round_trip_with_payload(make_queue):
    q = make_queue()
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
    q.enqueue_many([("low-1", 2, {}), ("norm-1", 1, {}), ("high-1", 0, {}),
                    ("low-2", 2, {}), ("norm-2", 1, {}), ("high-2", 0, {})])
    first = q.claim("exec-1", 3)
    assert ids(first) == ["high-1", "high-2", "norm-1"]
    assert [d.priority_class for d in first] == [0, 0, 1]
    q.enqueue("high-3", 0, {})  # arrives later but still goes before everything of lower classes
    assert ids(q.claim("exec-1", 10)) == ["high-3", "norm-2", "low-1", "low-2"]
    assert q.claim("exec-1", 0) == []


def test_unacked_delivery_comes_back_only_after_the_visibility_timeout(make_queue):
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
    pending = _redis().xpending_range(q.streams[0], q.group, "-", "+", 10)
    assert [p["consumer"] for p in pending] == [b"exec-other"]  # ownership moved

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


def test_tenants_are_isolated(make_queue):
    a, b = make_queue("tenant-a"), make_queue("tenant-b")
    a.enqueue_many([("a-1", 0, {"secret": 1}), ("a-2", 2, {})])
    a.set_status("a-1", "queued")

    assert b.claim("exec-b", 100) == []
    assert b.backlog() == (0, 0, 0) and b.in_flight() == 0
    assert b.get_status("a-1") is None
    b.purge()
    assert a.backlog() == (1, 0, 1) and a.get_status("a-1")["status"] == "queued"
    assert ids(a.claim("exec-a", 100)) == ["a-1", "a-2"]

    keys = [k.decode() for k in _redis().scan_iter(match=f"{make_queue.prefix}:*", count=1000)]
    assert keys and all(k.startswith(f"{make_queue.prefix}:tenant-a:") for k in keys)


@pytest.mark.parametrize("tenant", ["a:b", "a*", "", "a b", "x" * 65])
def test_tenant_names_that_could_reach_other_tenants_are_refused(make_queue, tenant):
    with pytest.raises(ValueError, match="tenant"):
        make_queue(tenant)


def test_backlog_and_in_flight(make_queue):
    q = make_queue()
    q.enqueue_many([("h1", 0, {}), ("h2", 0, {}), ("h3", 0, {}), ("n1", 1, {}), ("n2", 1, {}), ("l1", 2, {})])
    assert q.backlog() == (3, 2, 1) and q.in_flight() == 0
    taken = q.claim("exec-1", 4)
    assert ids(taken) == ["h1", "h2", "h3", "n1"]
    assert q.backlog() == (3, 2, 1) and q.in_flight() == 4  # running tasks are still backlog
    q.ack(taken[:2])
    assert q.backlog() == (1, 2, 1) and q.in_flight() == 2
    q.ack(taken[2:])
    assert q.backlog() == (0, 1, 1) and q.in_flight() == 0


def test_five_thousand_in_batches_each_delivered_exactly_once(make_queue):
    q = make_queue()
    n = 5_000
    message_ids = q.enqueue_many([(f"t{i}", i % 3, {"i": i}) for i in range(n)])
    assert len(set(zip([i % 3 for i in range(n)], message_ids))) == n  # ids are unique per stream
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


def test_status_hash(make_queue):
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
    assert 0 < _redis().ttl(f"{q.key_prefix}status:t-1") <= 86_400

    q.set_status_many([(f"b{i}", "queued", {"attempt": "0"}) for i in range(3)])
    assert [q.get_status(f"b{i}")["status"] for i in range(3)] == ["queued"] * 3


def test_lost_store_is_detected_and_rebuilt(make_queue):
    q = make_queue(visibility_timeout_s=0.2)
    assert not q.is_empty_store()
    q.enqueue_many([("t-1", 0, {"a": 1}), ("t-2", 2, {"b": 2})])
    q.claim("exec-1", 1)  # one in flight when Redis goes away

    # Redis restarted empty: every key of the tenant is gone.
    r = _redis()
    r.delete(*r.scan_iter(match=f"{q.key_prefix}*", count=1000))
    assert q.is_empty_store()
    assert q.backlog() == (0, 0, 0) and q.in_flight() == 0
    with pytest.raises(QueueError, match="rebuild"):
        q.claim("exec-1", 10)

    unfinished = [("t-1", 0, {"a": 1}), ("t-2", 2, {"b": 2})]  # as the SQL store would list them
    assert q.rebuild(iter(unfinished)) == 2
    assert not q.is_empty_store()
    got = q.claim("exec-2", 10)
    assert [(d.task_id, d.priority_class, d.payload, d.deliveries) for d in got] == [
        ("t-1", 0, {"a": 1}, 1), ("t-2", 2, {"b": 2}, 1)]


def test_stream_recreated_by_an_enqueue_after_the_loss_is_still_served(make_queue):
    q = make_queue()
    r = _redis()
    r.delete(*q.streams)
    q.enqueue("arrived-after-restart", 1, {})  # XADD recreates the stream, without its group
    assert q.is_empty_store()
    q.rebuild([("from-store", 1, {})])
    assert ids(q.claim("exec-1", 10)) == ["arrived-after-restart", "from-store"]


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
