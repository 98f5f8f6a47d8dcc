"""A driver process for the crash tests: ``python -m tests.crash_driver start|resume DB LOG``.

``start`` opens the cluster on the SQLite file DB (store and queue, the embedded default) with a
local Ray, submits a mixed workload of tenant ``shop`` (independent orders that often fail
transiently and wait out long retry backoffs, and dependency chains), and runs the loop forever,
printing one JSON line of progress per cycle; the test kills it with SIGKILL. ``resume`` is the new
driver: it takes over on the same DB (:meth:`executors.cluster.TaskCluster.resume`), runs until
idle and prints one JSON line. Executors log every execution to LOG (the test's ledger).
"""

from __future__ import annotations

import json
import sys
import time

from autotune.runtime import start_ray
from core.config import config_from_dict
from executors.cluster import TaskCluster
from executors.intake import Submitter
from executors.pool import ExecutorPool
from executors.queue import open_queue
from executors.store import TaskStore

TENANT = "shop"
N_ORDERS, N_CHAINS, CHAIN = 60, 20, 3


def config():
    # payment fails transiently one time in three; a retry waits 2-4 s: at any moment many wait
    return config_from_dict(
        {
            "intake": {"tenants": [TENANT]},
            "tasks": {
                "order_processing": {
                    "retry_policy": {"max_retries": 6, "base_s": 2.0, "jitter_s": 2.0, "cap_s": 4.0},
                    "steps": {
                        "payment": {"mean_s": 0.3, "cv": 0.3, "transient_failure": 0.33},
                        "shipping": {"mean_s": 0.3, "cv": 0.3},
                    },
                }
            },
        },
        "crash test config",
    )


def workload() -> list[dict]:
    tasks = [{"id": f"o{i}", "type": "order_processing", "payload": {"order": i}} for i in range(N_ORDERS)]
    for c in range(N_CHAINS):
        for k in range(CHAIN):
            t = {"id": f"c{c}-{k}", "type": "order_processing"}
            if k:
                t["dependencies"] = [f"c{c}-{k - 1}"]
            tasks.append(t)
    return tasks


def cluster(db: str, log: str) -> TaskCluster:
    cfg = config()
    url = f"sqlite:///{db}"
    store = TaskStore(url)
    store.create_schema()
    start_ray(None, num_cpus=2, namespace="autotune-crash-test")
    return TaskCluster(
        cfg,
        store,
        lambda t: open_queue(url, t, visibility_timeout_s=30.0),
        lambda t: ExecutorPool(cfg, namespace=t, slots_per_actor=10, time_scale=1.0, execution_log=log),
        concurrency=20,
        run_id="crash-test",
    )


def main(argv: list[str]) -> int:
    phase, db, log = argv
    c = cluster(db, log)
    if phase == "start":
        c.submit(workload(), Submitter("alice", TENANT))
        while True:
            c.run_once()
            terminal = sum(v for k, v in c.store.status_counts(TENANT).items() if k in ("succeeded", "failed"))
            print(
                json.dumps(
                    {
                        "retrying": len(c.retry_heap),
                        "waiting": len(c.waiting),
                        "running": len(c.running),
                        "terminal": terminal,
                        "t": time.time(),
                    }
                ),
                flush=True,
            )
    recovered = c.resume([TENANT])
    idle = c.run_until_idle(timeout_s=150)
    c.close()
    print(json.dumps({"idle": idle, "recovered": recovered}), flush=True)
    return 0 if idle else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
