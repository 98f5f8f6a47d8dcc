"""The live task queue and each task's live status in Redis: :class:`RedisTaskQueue`, one
implementation of :class:`executors.queue_types.TaskQueue` (the other is
:class:`executors.sqlite_queue.SQLTaskQueue`).

One Redis Stream per priority class (0 high, 1 normal, 2 low, as
:data:`core.priority.PRIORITY_CLASSES`), all read through one consumer group. An executor takes
entries with :meth:`RedisTaskQueue.claim` and removes them with :meth:`RedisTaskQueue.ack` once the
attempt's outcome is stored. An entry taken by an executor that dies stays in the group's pending list;
after ``visibility_timeout_s`` without an ack the next ``claim`` of any consumer takes it over
(XAUTOCLAIM) and hands it out again with ``deliveries`` raised by one. Delivery is therefore at least
once: a slow executor that acks after its entry was reclaimed, or a :meth:`~RedisTaskQueue.rebuild`,
can make a task run twice, so whoever stores outcomes keys them by task id and attempt.

Classes are served strictly in order: a ``claim`` first reclaims timed-out entries (high class first),
then reads new ones (high class first), and takes from a lower class only what the higher ones left
of ``count``.

Keys (every key of a tenant starts with ``{prefix}:{tenant}:``, so a tenant's queue object can neither
see nor touch another tenant's keys; tenant and prefix are restricted to letters, digits, ``-`` and
``_`` so that no name is another's prefix and none is a glob pattern)::

    {prefix}:{tenant}:q:0 | :q:1 | :q:2      streams, fields task_id and payload (JSON)
    {prefix}:{tenant}:status:{task_id}       hash: status, updated_s, and what the caller adds

Redis here keeps nothing on disk. If it restarts, the streams and their groups are gone:
:meth:`~RedisTaskQueue.is_empty_store` says so, ``claim`` refuses with a :class:`QueueError` saying
so, and the caller re-enqueues the unfinished tasks from MySQL with :meth:`~RedisTaskQueue.rebuild`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import redis

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

START_HINT = (
    'start it with: redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
    "--appendonly no   (or: bash .ci/services.sh)"
)


# Batches as one server-side script call each, not one command per task: a pipeline of N commands
# costs the client N packings and N reply parsings, which was most of the driver's time per task.
# KEYS: the tenant's streams (class order); ARGV: class, task id, payload for each entry.
_ENQUEUE_LUA = """
local ids = {}
for i = 1, #ARGV, 3 do
  ids[#ids + 1] = redis.call('XADD', KEYS[tonumber(ARGV[i]) + 1], '*', 'task_id', ARGV[i + 1], 'payload', ARGV[i + 2])
end
return ids
"""
# Promote waiting entries to a more urgent class (their deadline came near): an entry not delivered
# yet (in its stream, not in the group's pending list) moves to the end of the new class's stream;
# a delivered one stays where it is. Atomic, so no claimer sees an entry twice or not at all.
# KEYS: the tenant's streams (class order); ARGV: the group, then message id, old class, new class.
_PROMOTE_LUA = """
local group = ARGV[1]
local moved = {}
for i = 2, #ARGV, 3 do
  local id = ARGV[i]
  local from = KEYS[tonumber(ARGV[i + 1]) + 1]
  local to = KEYS[tonumber(ARGV[i + 2]) + 1]
  if #redis.call('XPENDING', from, group, id, id, 1) == 0 then
    local entry = redis.call('XRANGE', from, id, id)
    if #entry == 1 then
      redis.call('XDEL', from, id)
      moved[#moved + 1] = id
      moved[#moved + 1] = redis.call('XADD', to, '*', unpack(entry[1][2]))
    end
  end
end
return moved
"""
# KEYS: status hashes; ARGV: ttl seconds ('' for none), then for each key the number of field-value
# pairs and the pairs.
_STATUS_LUA = """
local ttl = tonumber(ARGV[1])
local pos = 2
for _, key in ipairs(KEYS) do
  local n = tonumber(ARGV[pos])
  redis.call('HSET', key, unpack(ARGV, pos + 1, pos + 2 * n))
  if ttl then
    redis.call('EXPIRE', key, ttl)
  end
  pos = pos + 1 + 2 * n
end
return #KEYS
"""


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _address(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    if kw.get("path"):
        return f"unix:{kw['path']}"
    return f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"


class RedisTaskQueue:
    """A tenant's queue and task statuses in one Redis (see the module docstring).

    Arguments:
        client: a ``redis.Redis``; ``decode_responses`` may be on or off.
        tenant: the tenant whose keys this object reads and writes, and no others.
        prefix: first part of every key.
        group: the consumer group all executors share.
        visibility_timeout_s: how long a delivered, unacked entry waits before another consumer may
            take it over. Longer than the slowest attempt, or a live executor's task is run twice.
        status_ttl_s: every status write (re)sets the hash's expiry, so finished tasks do not pile up
            in memory (the durable record is MySQL's); ``None`` keeps them forever.

    Creating the object creates the consumer groups (and empty streams) if they do not exist.
    Not thread-safe: one object per executor loop (it keeps the reclaim scan's cursors).
    """

    def __init__(
        self,
        client: redis.Redis,
        tenant: str,
        *,
        prefix: str = "autotune",
        group: str = "executors",
        visibility_timeout_s: float = 30.0,
        status_ttl_s: float | None = 86_400.0,
    ) -> None:
        self.tenant = check_name("tenant", tenant)
        self.prefix = check_name("prefix", prefix)
        if not isinstance(group, str) or not group:
            raise ValueError(f"group must be a non-empty string, got {group!r}")
        if not visibility_timeout_s > 0:
            raise ValueError(f"visibility_timeout_s must be > 0, got {visibility_timeout_s!r}")
        if status_ttl_s is not None and not status_ttl_s > 0:
            raise ValueError(f"status_ttl_s must be > 0 or None, got {status_ttl_s!r}")
        # Any: redis-py's reply annotations do not match its RESP2 replies (xreadgroup, xrange, xclaim)
        self.client: Any = client
        self.group = group
        self.visibility_timeout_s = float(visibility_timeout_s)
        self.status_ttl_s = status_ttl_s
        self.address = _address(client)
        self.key_prefix = f"{prefix}:{tenant}:"
        self.streams = tuple(f"{self.key_prefix}q:{c}" for c in range(N_CLASSES))
        self._min_idle_ms = max(1, round(self.visibility_timeout_s * 1000))
        self._reclaim_cursor = ["0-0"] * N_CLASSES
        # redis-py sends them by SHA and loads them again if the server lost its script cache
        self._enqueue_script = client.register_script(_ENQUEUE_LUA)
        self._status_script = client.register_script(_STATUS_LUA)
        self._promote_script = client.register_script(_PROMOTE_LUA)
        self._create_groups()

    @classmethod
    def connect(cls, url: str, tenant: str, *, socket_timeout_s: float = 5.0, **kw: Any) -> RedisTaskQueue:
        """Connect to ``url`` (``redis://host:port/db``), check Redis answers, and open ``tenant``'s queue.

        ``kw`` goes to the constructor. An unreachable Redis raises :class:`QueueError` with the
        command that starts one."""
        client = redis.Redis.from_url(url, socket_connect_timeout=socket_timeout_s, socket_timeout=socket_timeout_s)
        try:
            client.ping()
        except (redis.ConnectionError, redis.TimeoutError) as e:
            client.close()
            raise QueueUnavailable(f"redis at {_address(client)} unreachable: ping: {e}; {START_HINT}") from e
        return cls(client, tenant, **kw)

    # ---- errors ------------------------------------------------------------------------------

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise QueueUnavailable(f"redis at {self.address} unreachable: {what}: {e}; {START_HINT}") from e
        except redis.ResponseError as e:
            if "NOGROUP" in str(e):
                raise QueueError(
                    f"redis at {self.address}: {what}: tenant {self.tenant!r}'s streams or consumer group "
                    f"{self.group!r} are gone (Redis restarted empty, or purged); rebuild() from the store"
                ) from e
            raise QueueError(f"redis at {self.address}: {what} failed: {e}") from e

    # ---- groups --------------------------------------------------------------------------------

    def _create_groups(self) -> None:
        # Id "0", not "$": if a stream was recreated by XADD after Redis lost it, its entries are
        # delivered rather than skipped.
        with self._errors("create consumer groups"):
            pipe = self.client.pipeline(transaction=False)
            for stream in self.streams:
                pipe.xgroup_create(stream, self.group, id="0", mkstream=True)
            for result in pipe.execute(raise_on_error=False):
                if isinstance(result, redis.ResponseError) and "BUSYGROUP" not in str(result):
                    raise result
        self._reclaim_cursor = ["0-0"] * N_CLASSES

    # ---- enqueue ------------------------------------------------------------------------------

    def enqueue(self, task_id: str, priority_class: int, payload: dict) -> str:
        """Append one task to its class's stream; returns the entry id."""
        return self.enqueue_many([(task_id, priority_class, payload)])[0]

    def enqueue_many(self, items: Sequence[tuple[str, int, dict]]) -> list[str]:
        """Append many tasks in one round trip (one script call, atomic); returns their entry ids in
        order.

        Every payload is checked first, so a bad one (ValueError naming its task) enqueues nothing."""
        args: list[Any] = []
        for task_id, cls_, payload in items:
            args += (cls_, task_id, encode_entry(task_id, cls_, payload))
        if not args:
            return []
        with self._errors(f"enqueue {len(args) // 3} tasks"):
            return [_str(i) for i in self._enqueue_script(keys=self.streams, args=args)]

    # ---- claim / ack --------------------------------------------------------------------------

    def claim(self, consumer: str, count: int) -> list[Delivery]:
        """Up to ``count`` entries for ``consumer``, without blocking: timed-out entries of other
        consumers first, then new ones, each high class first.

        The reclaim scan resumes where the previous claim's stopped (XAUTOCLAIM's cursor, up to
        ``10 * count`` pending entries per class per call), so with a long pending list a timed-out
        entry may wait up to one more sweep beyond ``visibility_timeout_s``."""
        if count <= 0:
            return []
        out: list[Delivery] = []
        reclaimed: list[int] = []  # positions in out whose delivery count is still to be read
        with self._errors(f"claim for consumer {consumer!r}"):
            for cls_, stream in enumerate(self.streams):
                need = count - len(out)
                if need <= 0:
                    break
                cursor, entries, *_ = self.client.xautoclaim(
                    stream, self.group, consumer, self._min_idle_ms, start_id=self._reclaim_cursor[cls_], count=need
                )
                self._reclaim_cursor[cls_] = _str(cursor)
                for message_id, fields in entries:
                    if fields:  # None for an entry deleted under the pending list (Redis < 7)
                        reclaimed.append(len(out))
                        out.append(self._delivery(cls_, message_id, fields, 0))
            if reclaimed:
                self._fill_delivery_counts(out, reclaimed)
            for cls_, stream in enumerate(self.streams):
                need = count - len(out)
                if need <= 0:
                    break
                response = self.client.xreadgroup(self.group, consumer, {stream: ">"}, count=need)
                for _stream, entries in response.items() if isinstance(response, dict) else response or ():
                    out.extend(self._delivery(cls_, message_id, fields, 1) for message_id, fields in entries)
        return out

    def _fill_delivery_counts(self, out: list[Delivery], positions: list[int]) -> None:
        # XAUTOCLAIM does not report delivery counts; XPENDING does (one pipelined call per entry,
        # only on the rare reclaim path).
        pipe = self.client.pipeline(transaction=False)
        for i in positions:
            d = out[i]
            pipe.xpending_range(self.streams[d.priority_class], self.group, d.message_id, d.message_id, 1)
        for i, info in zip(positions, pipe.execute()):
            # Empty if the slow first consumer acked in between; it was delivered at least twice.
            n = int(info[0]["times_delivered"]) if info else 2
            d = out[i]
            out[i] = Delivery(d.task_id, d.priority_class, d.payload, d.message_id, n)

    @staticmethod
    def _delivery(cls_: int, message_id: Any, fields: Mapping, deliveries: int) -> Delivery:
        get = fields.get
        task_id = get(b"task_id") if b"task_id" in fields else get("task_id")
        payload = get(b"payload") if b"payload" in fields else get("payload")
        return decode_delivery(None if task_id is None else _str(task_id), cls_, payload, _str(message_id), deliveries)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Done with these entries: remove them from the pending list and the stream, in one round trip.

        Acking an entry that another consumer has since reclaimed removes it for both."""
        by_class: dict[int, list[str]] = {}
        for d in deliveries:
            by_class.setdefault(d.priority_class, []).append(d.message_id)
        if not by_class:
            return
        with self._errors(f"ack {len(deliveries)} deliveries"):
            pipe = self.client.pipeline(transaction=False)
            for cls_, ids in by_class.items():
                pipe.xack(self.streams[cls_], self.group, *ids)
                pipe.xdel(self.streams[cls_], *ids)
            pipe.execute()

    def promote(self, items: Sequence[tuple[str, int, int]]) -> dict[str, str]:
        """Move waiting entries ``(message_id, old_class, new_class)`` to a more urgent class (the
        dynamic priority rose as a deadline came near). Entries already delivered, acked or gone
        stay as they are. Returns ``{old message id: new message id}`` of the entries moved (each
        goes to the end of its new class)."""
        args: list[Any] = [self.group]
        for message_id, old, new in items:
            check_class(f"entry {message_id!r}", old)
            check_class(f"entry {message_id!r}", new)
            if new < old:
                args += [message_id, old, new]
        if len(args) == 1:
            return {}
        with self._errors(f"promote {len(args) // 3} entries"):
            out = [_str(x) for x in self._promote_script(keys=self.streams, args=args)]
        return dict(zip(out[0::2], out[1::2]))

    # ---- status -------------------------------------------------------------------------------

    def _status_key(self, task_id: str) -> str:
        if not isinstance(task_id, str) or not task_id:
            raise ValueError(f"task id must be a non-empty string, got {task_id!r}")
        return f"{self.key_prefix}status:{task_id}"

    def set_status(self, task_id: str, status: str, **fields: str) -> None:
        """Set a task's live status (and ``updated_s``, now) plus any other fields (attempt,
        executor, ...); fields not given keep their previous values."""
        self.set_status_many([(task_id, status, fields)])

    def set_status_many(self, items: Sequence[tuple[str, str, dict]]) -> None:
        """:meth:`set_status` for many tasks in one round trip (one script call, in order)."""
        if not items:
            return
        keys = []
        args: list[Any] = ["" if self.status_ttl_s is None else max(1, round(self.status_ttl_s))]
        updated_s = f"{time.time():.6f}"
        for task_id, status, fields in items:
            keys.append(self._status_key(task_id))
            mapping = {k: str(v) for k, v in fields.items()}
            mapping["status"] = str(status)
            mapping["updated_s"] = updated_s
            args.append(len(mapping))
            for kv in mapping.items():
                args += kv
        with self._errors(f"set status of {len(items)} tasks"):
            self._status_script(keys=keys, args=args)

    def get_status(self, task_id: str) -> dict[str, str] | None:
        """The task's status hash, or None if this tenant has none for it."""
        with self._errors(f"get status of task {task_id!r}"):
            raw = self.client.hgetall(self._status_key(task_id))
        return {_str(k): _str(v) for k, v in raw.items()} or None

    # ---- gauges -------------------------------------------------------------------------------

    def backlog(self) -> tuple[int, int, int]:
        """Entries per class waiting to be claimed: not the running ones (those are :meth:`in_flight`).

        Acked entries are deleted, so a stream holds exactly the waiting and the delivered-unacked
        entries: waiting = stream length - the group's pending count. Both are read in one MULTI, so
        a concurrent claim cannot make an entry counted twice or not at all. A lost stream counts 0;
        a stream without the group (recreated by an enqueue after a loss) counts all its entries."""
        with self._errors("read backlog"):
            pipe = self.client.pipeline(transaction=True)
            for stream in self.streams:
                pipe.xlen(stream)
                pipe.xpending(stream, self.group)
            results = pipe.execute(raise_on_error=False)
        waiting = []
        for length, pending in zip(results[0::2], results[1::2]):
            for result in (length, pending):
                if isinstance(result, redis.ResponseError) and "NOGROUP" not in str(result):
                    raise QueueError(f"redis at {self.address}: read backlog failed: {result}")
            n_pending = 0 if isinstance(pending, redis.ResponseError) else int(pending["pending"])
            waiting.append(max(0, int(length) - n_pending))
        high, normal, low = waiting
        return high, normal, low

    def in_flight(self) -> int:
        """Entries delivered and not yet acked, all classes (0 for a lost group)."""
        with self._errors("read in-flight count"):
            pipe = self.client.pipeline(transaction=False)
            for stream in self.streams:
                pipe.xpending(stream, self.group)
            total = 0
            for result in pipe.execute(raise_on_error=False):
                if isinstance(result, redis.ResponseError):
                    if "NOGROUP" in str(result):
                        continue
                    raise result
                total += int(result["pending"])
        return total

    # ---- loss and recovery --------------------------------------------------------------------

    def is_empty_store(self) -> bool:
        """True when Redis has lost this tenant's queue: a stream or its consumer group is missing
        (Redis restarted empty, or the tenant was purged). Then call :meth:`rebuild`."""
        with self._errors("check streams"):
            pipe = self.client.pipeline(transaction=False)
            for stream in self.streams:
                pipe.xinfo_groups(stream)
            for result in pipe.execute(raise_on_error=False):
                if isinstance(result, redis.ResponseError):
                    if "no such key" in str(result).lower():
                        return True
                    raise result
                if not any(_str(g.get("name")) == self.group for g in result):
                    return True
        return False

    def rebuild(self, items: Iterable[tuple[str, int, dict]]) -> int:
        """Recreate the streams and group, and enqueue ``items`` (the tenant's unfinished tasks, from
        the durable store); returns how many were enqueued.

        Entries that reached a recreated stream before this call are kept and delivered too, so a task
        may run twice (delivery is at least once anyway)."""
        items = list(items)
        self._create_groups()
        for start in range(0, len(items), 10_000):  # bounded pipelines for a large backlog
            self.enqueue_many(items[start : start + 10_000])
        return len(items)

    def task_ids(self) -> set[str]:
        """Every task with an entry in the tenant's streams, waiting or claimed (a full scan, in
        pages: for recovery, not for the loop)."""
        out: set[str] = set()
        with self._errors("list entries"):
            for stream in self.streams:
                start = "-"
                while True:
                    page = self.client.xrange(stream, min=start, max="+", count=1000) or []
                    for _message_id, fields in page:
                        tid = fields.get(b"task_id", fields.get("task_id"))
                        if tid is not None:
                            out.add(_str(tid))
                    if len(page) < 1000:
                        break
                    start = "(" + _str(page[-1][0])
        return out

    def extend(self, consumer: str, deliveries: Sequence[Delivery]) -> None:
        """Restart the visibility timeout of ``consumer``'s claimed entries (XCLAIM with JUSTID: the
        idle time goes to 0, the delivery count stays)."""
        self._claim_justid(consumer, deliveries, None, "extend")

    def release(self, deliveries: Sequence[Delivery]) -> None:
        """Hand claimed entries back at once: their idle time is set past the visibility timeout,
        so the next claim takes them over (and counts the redelivery)."""
        self._claim_justid("released", deliveries, self._min_idle_ms + 1000, "release")

    def _claim_justid(self, consumer: str, deliveries: Sequence[Delivery], idle_ms: int | None, what: str) -> None:
        by_class: dict[int, list[str]] = {}
        for d in deliveries:
            by_class.setdefault(d.priority_class, []).append(d.message_id)
        if not by_class:
            return
        kw: dict[str, Any] = {"justid": True}
        if idle_ms is not None:
            kw["idle"] = idle_ms
        with self._errors(f"{what} {len(deliveries)} deliveries"):
            pipe = self.client.pipeline(transaction=False)
            for cls_, ids in by_class.items():
                for start in range(0, len(ids), 1000):
                    pipe.xclaim(self.streams[cls_], self.group, consumer, 0, ids[start : start + 1000], **kw)
            pipe.execute(raise_on_error=False)  # an entry acked or gone meanwhile is not an error

    def release_claimed(self) -> int:
        """Hand back every claimed entry of the tenant (a new driver taking over from one that
        died: its entries need not wait out the visibility timeout); returns how many."""
        n = 0
        with self._errors("release claimed entries"):
            for stream in self.streams:
                start = "-"
                while True:
                    try:
                        pending = self.client.xpending_range(stream, self.group, min=start, max="+", count=1000)
                    except redis.ResponseError as e:
                        if "NOGROUP" in str(e):
                            break
                        raise
                    if not pending:
                        break
                    ids = [_str(p["message_id"]) for p in pending]
                    self.client.xclaim(
                        stream, self.group, "released", 0, ids, idle=self._min_idle_ms + 1000, justid=True
                    )
                    n += len(ids)
                    if len(pending) < 1000:
                        break
                    start = "(" + ids[-1]
        self._reclaim_cursor = ["0-0"] * N_CLASSES
        return n

    def ping(self) -> None:
        """One round trip; :class:`QueueUnavailable` if Redis does not answer."""
        with self._errors("ping"):
            self.client.ping()

    def purge(self) -> None:
        """Delete every key of this tenant (streams, groups, statuses). The object then reports
        :meth:`is_empty_store` until :meth:`rebuild`."""
        with self._errors(f"purge tenant {self.tenant!r}"):
            batch: list[Any] = []
            for key in self.client.scan_iter(match=f"{self.key_prefix}*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    self.client.unlink(*batch)
                    batch.clear()
            if batch:
                self.client.unlink(*batch)
        self._reclaim_cursor = ["0-0"] * N_CLASSES
