"""The live task queue (see :mod:`executors.redis_queue` while the queue is being split up)."""

from executors.redis_queue import (
    START_HINT,
    Delivery,
    QueueError,
    QueueUnavailable,
    RedisTaskQueue,
    TaskQueue,
    check_class,
    check_name,
    decode_delivery,
    encode_entry,
    open_queue,
)

__all__ = [
    "START_HINT",
    "Delivery",
    "QueueError",
    "QueueUnavailable",
    "RedisTaskQueue",
    "TaskQueue",
    "check_class",
    "check_name",
    "decode_delivery",
    "encode_entry",
    "open_queue",
]
