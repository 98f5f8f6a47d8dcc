"""Throughput of the live queue alone, per backend: enqueue, claim, status, ack, in batches.

    python benchmarks/queue_throughput.py [--tasks 20000] [--batch 500] [--backends redis,sqlite,mariadb]

The cluster aims at 5,000 tasks/s end to end, and every task passes the queue three or four times
(enqueue, claim, a "running" status, ack), so the queue must do many times that. Two measurements:

- phases: all tasks enqueued, then claimed, then their statuses set, then acked, each in batches of
  ``--batch``; rates are tasks per second of that phase alone (the backlog is the whole run);
- cycle: what the cluster's loop does, one batch at a time: enqueue a batch, claim it, set its status,
  ack it; tasks/s through all four (the backlog stays small).

Needs Redis at 127.0.0.1:6379 for ``redis`` and MariaDB at 127.0.0.1:3306 for ``mariadb``; uses a
fresh key prefix / temporary file / database and removes it afterwards. One process, one claimer.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pymysql
import redis
from redis.utils import HIREDIS_AVAILABLE

from core.provenance import git_revision
from executors.queue import RedisTaskQueue, TaskQueue
from executors.sqlite_queue import SQLTaskQueue


@contextmanager
def open_backend(name: str) -> Iterator[Callable[[str], TaskQueue]]:
    """Yields ``make(tenant)`` for a fresh, private queue of backend ``name``; cleans up after."""
    made: list[TaskQueue] = []
    if name == "redis":
        client = redis.Redis(host="127.0.0.1", port=6379)
        prefix = f"autotune-bench-{uuid.uuid4().hex[:8]}"

        def make(tenant: str) -> TaskQueue:
            made.append(RedisTaskQueue(client, tenant, prefix=prefix))
            return made[-1]

        try:
            yield make
        finally:
            for q in made:
                q.purge()
        return
    admin = db = None
    if name == "sqlite":
        url = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    else:
        db = f"autotune_bench_{uuid.uuid4().hex[:8]}"
        admin = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
        admin.cursor().execute(f"CREATE DATABASE `{db}`")
        url = f"mysql+pymysql://root@127.0.0.1:3306/{db}"

    def make_sql(tenant: str) -> TaskQueue:
        made.append(SQLTaskQueue(url, tenant))
        return made[-1]

    try:
        yield make_sql
    finally:
        for q in made:
            q.close()
        if admin is not None:
            admin.cursor().execute(f"DROP DATABASE IF EXISTS `{db}`")
            admin.close()


def items(tag: str, start: int, n: int) -> list[tuple[str, int, dict]]:
    # the payload the cluster enqueues for a no-op order
    return [
        (f"{tag}{i}", i % 3, {"type": "order_processing", "attempt": 0, "noop": True}) for i in range(start, start + n)
    ]


def phases(q: TaskQueue, n: int, batch: int) -> dict[str, float]:
    """Seconds per phase, each over all ``n`` tasks."""
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        q.enqueue_many(items("p", start, min(batch, n - start)))
    out["enqueue"] = time.perf_counter() - t0
    claimed = []
    t0 = time.perf_counter()
    while got := q.claim("bench-0", batch):
        claimed.append(got)
    out["claim"] = time.perf_counter() - t0
    assert sum(len(b) for b in claimed) == n, "claimed fewer than enqueued"
    t0 = time.perf_counter()
    for b in claimed:
        q.set_status_many([(d.task_id, "running", {"attempt": "0"}) for d in b])
    out["status"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in claimed:
        q.ack(b)
    out["ack"] = time.perf_counter() - t0
    assert sum(q.backlog()) == 0 and q.in_flight() == 0
    return out


def cycle(q: TaskQueue, n: int, batch: int) -> float:
    """Seconds to push ``n`` tasks through enqueue, claim, status and ack, one batch at a time."""
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        q.enqueue_many(items("c", start, min(batch, n - start)))
        got = q.claim("bench-0", batch)
        q.set_status_many([(d.task_id, "running", {"attempt": "0"}) for d in got])
        q.ack(got)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--backends", default="redis,sqlite", help="comma-separated: redis, sqlite, mariadb")
    args = ap.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - {"redis", "sqlite", "mariadb"})
    if unknown:
        ap.error(f"--backends: unknown {', '.join(unknown)} (choose from redis, sqlite, mariadb)")
    n, batch = args.tasks, args.batch
    print(f"# queue throughput; {n} tasks in batches of {batch}; one process, one claimer")
    print(
        f"# git {git_revision()[:12]}; {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; redis reply parser: {'hiredis' if HIREDIS_AVAILABLE else 'pure-Python'}"
    )
    print(f"{'backend':<8} {'enqueue/s':>10} {'claim/s':>10} {'status/s':>10} {'ack/s':>10} {'cycle tasks/s':>14}")
    for name in backends:
        with open_backend(name) as make:
            t = phases(make("phases"), n, batch)
            c = cycle(make("cycle"), n, batch)
        rates = [n / t[k] for k in ("enqueue", "claim", "status", "ack")]
        print(f"{name:<8} " + " ".join(f"{r:>10,.0f}" for r in rates) + f" {n / c:>14,.0f}")


if __name__ == "__main__":
    main()
