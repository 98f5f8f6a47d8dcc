"""End-to-end throughput of the task cluster: no-op tasks submitted, executed on Ray actors, recorded.

    python benchmarks/cluster_throughput.py [--tasks 20000] [--store sqlite|mysql] [--queue redis|sql]
                                            [--concurrency 400] [--gc-freeze]

``--queue sql`` keeps the live queue in the store's database (the embedded default with
``--store sqlite``: no server at all). ``--queue redis`` needs Redis at 127.0.0.1:6379, ``--store
mysql`` MariaDB at 127.0.0.1:3306; each run uses a fresh key prefix / database and removes it afterwards. Prints tasks/s from the first submission to the last
stored result, and per-task time from submission to the end of its attempt (p50/p99) at full load and
at half of the measured rate. ``--gc-freeze`` first exempts the objects alive after start-up from the
garbage collector's full collections (:func:`executors.cluster.freeze_gc`); off by default, as the
live driver does not do it (yet).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import uuid

import numpy as np
import pymysql
import ray
import redis
from redis.utils import HIREDIS_AVAILABLE

from core.config import config_from_dict
from core.provenance import git_revision
from executors.cluster import TaskCluster, freeze_gc
from executors.intake import Submitter
from executors.pool import ExecutorPool
from executors.queue import RedisTaskQueue, open_queue
from executors.store import TaskStore


def run(cluster: TaskCluster, n: int, batch: int, rate_per_s: float | None, tag: str) -> tuple[float, np.ndarray]:
    user = Submitter("bench", "default")
    t0 = time.perf_counter()
    submitted = 0
    while submitted < n:
        if rate_per_s is None or submitted < (time.perf_counter() - t0) * rate_per_s:
            k = min(batch, n - submitted)
            cluster.submit([{"id": f"{tag}{submitted + i}", "type": "noop"} for i in range(k)], user)
            submitted += k
        cluster.run_once(collect_timeout_s=0.005)
    cluster.run_until_idle(timeout_s=600)
    wall = time.perf_counter() - t0
    ids = [f"{tag}{i}" for i in range(0, n, max(1, n // 500))]  # a sample of tasks for latency
    lat = []
    for tid in ids:
        rec = cluster.store.get_task("default", tid)
        attempts = cluster.store.attempts_for("default", tid)
        if rec and attempts:
            lat.append(max(a.ended_s for a in attempts) - rec.created_s)
    return n / wall, np.array(lat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--store", choices=("sqlite", "mysql"), default="sqlite")
    ap.add_argument("--queue", choices=("redis", "sql"), default="redis")
    ap.add_argument("--concurrency", type=int, default=400)
    ap.add_argument(
        "--gc-freeze",
        action="store_true",
        help="freeze the start-up objects out of the GC's full collections before timing "
        "(executors.cluster.freeze_gc, what a driver process can do once started)",
    )
    args = ap.parse_args()
    # a no-op task type registered by the deployment (a payload cannot make a task a no-op)
    cfg = config_from_dict({"tasks": {"order_processing": {}, "noop": {"noop": True}}})
    db = None
    if args.store == "mysql":
        db = f"autotune_bench_{uuid.uuid4().hex[:8]}"
        admin = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
        admin.cursor().execute(f"CREATE DATABASE `{db}`")
        url = f"mysql+pymysql://root@127.0.0.1:3306/{db}"
    else:
        url = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    store = TaskStore(url)
    store.create_schema()
    prefix = f"autotune-bench-{uuid.uuid4().hex[:8]}"
    client = redis.Redis(host="127.0.0.1", port=6379)
    queues = []

    def queue_for(tenant):
        q = RedisTaskQueue(client, tenant, prefix=prefix) if args.queue == "redis" else open_queue(url, tenant)
        queues.append(q)
        return q

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    def pool_for(tenant):
        return ExecutorPool(cfg, namespace=tenant, slots_per_actor=100)

    cluster = TaskCluster(cfg, store, queue_for, pool_for, concurrency=args.concurrency)
    frozen = freeze_gc() if args.gc_freeze else 0
    try:
        parser = f" ({'hiredis' if HIREDIS_AVAILABLE else 'pure-Python'} reply parser)" if args.queue == "redis" else ""
        print(
            f"# git {git_revision()[:12]}; {platform.machine()}, {os.cpu_count()} cores; store {args.store}; queue {args.queue}{parser}; "
            f"{args.tasks} no-op tasks, submitted in batches of {args.batch}; concurrency {args.concurrency}"
            + (f"; gc.freeze of {frozen:,} start-up objects" if args.gc_freeze else "")
        )
        full_rate, full_lat = run(cluster, args.tasks, args.batch, None, "full")
        half_rate, half_lat = run(cluster, args.tasks // 2, max(1, args.batch // 10), full_rate / 2, "half")
        print(f"{'load':<10} {'tasks/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
        print(
            f"{'full':<10} {full_rate:>9,.0f} {np.percentile(full_lat, 50) * 1e3:>8.0f} "
            f"{np.percentile(full_lat, 99) * 1e3:>8.0f}"
        )
        print(
            f"{'half':<10} {half_rate:>9,.0f} {np.percentile(half_lat, 50) * 1e3:>8.0f} "
            f"{np.percentile(half_lat, 99) * 1e3:>8.0f}"
        )
    finally:
        cluster.close()
        ray.shutdown()
        for q in queues:
            q.purge()
        store.close()
        if db:
            admin.cursor().execute(f"DROP DATABASE IF EXISTS `{db}`")


if __name__ == "__main__":
    main()
