"""What a live task queue is: the :class:`TaskQueue` protocol, the :class:`Delivery` it hands out,
its errors, and the entry checks every implementation shares (so they refuse the same entries with
the same words).

Two implementations with the same semantics: :class:`executors.redis_queue.RedisTaskQueue` (Redis
Streams) and :class:`executors.sqlite_queue.SQLTaskQueue` (SQLite, the embedded default, or
MariaDB/MySQL); :func:`executors.queue.open_queue` picks one from a URL. This module imports
neither of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from core.priority import PRIORITY_CLASSES

N_CLASSES = len(PRIORITY_CLASSES)  # priority classes: 0 high, 1 normal, 2 low


@dataclass(frozen=True)
class Delivery:
    """One stream entry handed to one consumer."""

    task_id: str
    priority_class: int
    payload: dict
    message_id: str  # stream entry id, what ack needs
    deliveries: int  # 1 on first delivery, +1 on each redelivery after a visibility timeout
    error: str | None = None  # the entry could not be decoded (payload is then {}): dead-letter it


class QueueError(RuntimeError):
    """The queue's server could not do what was asked; the message names the server (Redis address or
    database URL, password masked) and the operation."""


class QueueUnavailable(QueueError):
    """The queue's server could not be reached (or kept dropping the connection): an outage a caller
    may wait out, not a request that is wrong."""


@runtime_checkable
class TaskQueue(Protocol):
    """A tenant's live queue and task statuses: what :class:`executors.cluster.TaskCluster` uses.

    A boundary, so the cluster runs on Redis or on the embedded SQL queue unchanged. The contract
    (both implementations are tested against the same behavioural tests, ``tests/test_queue.py``):

    - three priority classes (0 high, 1 normal, 2 low); ``claim`` serves timed-out entries first, then
      new ones, each class 0 first and FIFO within a class, never more than ``count``;
    - an entry claimed and not acked within ``visibility_timeout_s`` is handed out again with
      ``deliveries`` raised by one (delivery is at least once);
    - ``ack`` removes entries for good; ``backlog()`` counts entries per class waiting to be claimed,
      ``in_flight()`` those claimed and not acked;
    - a queue object sees only its ``tenant``'s entries and statuses;
    - ``is_empty_store()`` is True when the server lost the tenant's queue (or it was purged); then
      ``claim`` raises :class:`QueueError` and the caller re-enqueues from the durable store with
      ``rebuild``;
    - ``task_ids()`` names every task with an entry (waiting or claimed): what recovery compares
      with the store;
    - ``extend`` restarts the visibility timeout of entries still being worked on (a long task, or
      one held back by a quota), without counting a delivery; ``release`` hands claimed entries back
      at once (the next claim counts a redelivery); ``release_claimed`` does that for every claimed
      entry of the tenant (a new driver taking over from a dead one);
    - a server that cannot be reached raises :class:`QueueUnavailable` (``ping()`` checks); an entry
      that cannot be decoded is delivered with ``error`` set, never raised, so one bad entry cannot
      stop a claim.
    """

    tenant: str
    visibility_timeout_s: float

    def enqueue(self, task_id: str, priority_class: int, payload: dict) -> str: ...

    def enqueue_many(self, items: Sequence[tuple[str, int, dict]]) -> list[str]: ...

    def claim(self, consumer: str, count: int) -> list[Delivery]: ...

    def ack(self, deliveries: Sequence[Delivery]) -> None: ...

    def promote(self, items: Sequence[tuple[str, int, int]]) -> dict[str, str]: ...

    def set_status(self, task_id: str, status: str, **fields: str) -> None: ...

    def set_status_many(self, items: Sequence[tuple[str, str, dict]]) -> None: ...

    def get_status(self, task_id: str) -> dict[str, str] | None: ...

    def backlog(self) -> tuple[int, int, int]: ...

    def in_flight(self) -> int: ...

    def is_empty_store(self) -> bool: ...

    def rebuild(self, items: Iterable[tuple[str, int, dict]]) -> int: ...

    def purge(self) -> None: ...

    def task_ids(self) -> set[str]: ...

    def extend(self, consumer: str, deliveries: Sequence[Delivery]) -> None: ...

    def release(self, deliveries: Sequence[Delivery]) -> None: ...

    def release_claimed(self) -> int: ...

    def ping(self) -> None: ...


# json.dumps(payload, separators=(",", ":"), allow_nan=False), without building an encoder per call
_entry_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def check_class(what: str, priority_class: Any) -> None:
    """ValueError naming ``what`` unless ``priority_class`` is 0, 1 or 2 (a bool is not a class)."""
    if type(priority_class) is not int or not 0 <= priority_class < N_CLASSES:
        raise ValueError(
            f"{what}: priority class must be 0, 1 or 2 ({', '.join(PRIORITY_CLASSES)}), got {priority_class!r}"
        )


def encode_entry(task_id: str, priority_class: int, payload: Any) -> str:
    """Check one entry and return its payload as JSON; a ValueError names the task and what is wrong.

    Shared by every queue implementation, so they refuse the same entries with the same words."""
    if not isinstance(task_id, str) or not task_id:
        raise ValueError(f"task id must be a non-empty string, got {task_id!r}")
    check_class(f"task {task_id!r}", priority_class)
    if not isinstance(payload, Mapping):
        raise ValueError(f"task {task_id!r}: payload must be a dict, got {type(payload).__name__}")
    try:
        # allow_nan=False: NaN is not JSON, and MySQL's JSON column and other readers refuse it.
        return _entry_json(payload)
    except (TypeError, ValueError) as e:
        raise ValueError(f"task {task_id!r}: payload cannot be JSON-encoded: {e}") from None


def decode_delivery(task_id: str | None, priority_class: int, raw: Any, message_id: str, deliveries: int) -> Delivery:
    """A claimed entry as a :class:`Delivery`; one that cannot be decoded (no task id, payload not a
    JSON object) has ``error`` set and an empty payload, so the caller dead-letters it instead of
    the claim failing. Shared by every queue implementation."""
    if not task_id:
        return Delivery(task_id or "", priority_class, {}, message_id, deliveries, error="the entry has no task id")

    def shown() -> str:
        return (raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw))[:200]

    try:
        payload = json.loads(raw)
    except (TypeError, ValueError) as err:
        return Delivery(
            task_id, priority_class, {}, message_id, deliveries, error=f"the entry is not JSON ({err}): {shown()!r}"
        )
    if not isinstance(payload, dict):
        return Delivery(
            task_id, priority_class, {}, message_id, deliveries, error=f"the entry is not a JSON object: {shown()!r}"
        )
    return Delivery(task_id, priority_class, payload, message_id, deliveries)


def check_name(what: str, value: str) -> str:
    # The same rule as the config's tenants: no ':' (so 'a' is never a key prefix of 'a:b') and no glob
    # characters (so SCAN's MATCH pattern cannot reach other tenants).
    ok = isinstance(value, str) and 0 < len(value) <= 64 and all(ch.isalnum() or ch in "-_" for ch in value)
    if not ok:
        raise ValueError(f"{what} {value!r}: use 1-64 letters, digits, '-' or '_' (it becomes a key prefix)")
    return value
