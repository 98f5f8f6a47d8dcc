"""The live task queue: :func:`open_queue` picks an implementation from a URL.

:class:`TaskQueue` (:mod:`executors.queue_types`) is what the cluster (:mod:`executors.cluster`)
needs of a live queue; it has two implementations with the same semantics,
:class:`~executors.redis_queue.RedisTaskQueue` (Redis Streams) and
:class:`~executors.sqlite_queue.SQLTaskQueue` (SQLite, the embedded default, or MariaDB/MySQL).
This module re-exports the names callers use, so ``from executors.queue import ...`` is the one
import they need.
"""

from __future__ import annotations

from typing import Any

from executors.queue_types import (
    Delivery,
    QueueError,
    QueueUnavailable,
    TaskQueue,
    check_class,
    check_name,
    decode_delivery,
    encode_entry,
)
from executors.redis_queue import START_HINT, RedisTaskQueue
from executors.sqlite_queue import SQLTaskQueue

__all__ = [
    "START_HINT",
    "Delivery",
    "QueueError",
    "QueueUnavailable",
    "RedisTaskQueue",
    "SQLTaskQueue",
    "TaskQueue",
    "check_class",
    "check_name",
    "decode_delivery",
    "encode_entry",
    "open_queue",
]


def open_queue(url: str | None, tenant: str, *, default_path: str = "autotune.db", **kw: Any) -> TaskQueue:
    """Open ``tenant``'s queue at ``url``: ``redis://...`` (or ``rediss://``, ``unix://``) is
    :meth:`RedisTaskQueue.connect`; any other SQLAlchemy URL (``sqlite:///...``,
    ``mysql+pymysql://...``) is :meth:`executors.sqlite_queue.SQLTaskQueue.connect`; ``None`` is SQLite
    at ``default_path``, the file the store uses by default too, so a fresh machine needs no server.

    ``kw`` goes to the queue's constructor (``visibility_timeout_s``, ``status_ttl_s``, ...)."""
    if url is not None and url.split("://", 1)[0] in ("redis", "rediss", "unix"):
        return RedisTaskQueue.connect(url, tenant, **kw)
    return SQLTaskQueue.connect(url if url is not None else f"sqlite:///{default_path}", tenant, **kw)
