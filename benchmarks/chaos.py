"""Chaos benchmark: each fault against the real Redis, MariaDB and a local Ray, on a mixed workload.

    python benchmarks/chaos.py [--quick] [--faults executor-kill,redis-restart-5s,...] [--out DIR]

Workload per fault (a fresh MariaDB database and Redis key prefix each): tenant ``shop`` submits 150
orders whose payment fails transiently one time in ten (retries with backoff) and 20 dependency
chains of three, tenant ``books`` 100 orders; submitted in ten batches over five seconds, tasks of
about 0.2 s, 40 slots. The fault strikes three seconds in. Then the cluster runs until idle, and the
ledger (:mod:`executors.accounting`, from the store and the executors' execution log) says:

- ``lost``: tasks not terminal at the end; ``duplicated_terminal``: tasks with two terminal records;
- ``reran``: tasks run again because a fault interrupted an attempt (at-least-once; a crash or an
  executor death may do that, nothing else may: ``unexplained`` counts re-runs no fault explains);
- ``survived``: the cluster waited the fault out (no outage beyond the budget, nothing lost).

Faults: ``executor-kill`` (one executor actor killed), ``driver-kill`` (the driver SIGKILLed, a new
one resumes on the same store and queue), ``redis-restart-5s`` / ``-60s`` and ``mariadb-restart-5s`` /
``-60s`` (the server shut down and started again; Redis here keeps nothing, so it comes back empty),
``poisoned-payload`` (payloads naming control fields, and raw undecodable entries in the queue),
``noisy-neighbour`` (30 CPU-bound untrusted tasks of another tenant while ``books`` runs 0.2 s tasks
at 10/s; its mean latency, submission to end, against the same load alone on warm executors) and, as the anchor, ``noisy-neighbour-no-quota`` (the
same with the sandbox quota lifted). ``--quick`` leaves out the 60 s outages.

The harness stops servers by asking them to shut down and starts them with the machine's commands
(:mod:`tests.servers`), and leaves them running. Results: ``results.csv`` and ``run.yaml`` (command,
git revision, config) in ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pymysql  # noqa: E402
import ray  # noqa: E402
import redis  # noqa: E402

from core.config import config_from_dict  # noqa: E402
from core.provenance import git_revision, write_run_metadata  # noqa: E402
from executors.accounting import account, read_execution_log  # noqa: E402
from executors.cluster import OutageError, TaskCluster  # noqa: E402
from executors.intake import Submitter  # noqa: E402
from executors.pool import ExecutorPool  # noqa: E402
from executors.queue import RedisTaskQueue  # noqa: E402
from executors.store import StoreUnavailable, TaskStore  # noqa: E402
from tests import servers  # noqa: E402

FAULTS = (
    "executor-kill",
    "driver-kill",
    "redis-restart-5s",
    "redis-restart-60s",
    "mariadb-restart-5s",
    "mariadb-restart-60s",
    "poisoned-payload",
    "noisy-neighbour",
    "noisy-neighbour-no-quota",
)
TENANTS = ("shop", "books", "noisy")
FAULT_AT_S = 3.0


def config(sandbox_cpu: float = 1.0):
    return config_from_dict(
        {
            "intake": {"tenants": list(TENANTS)},
            "tasks": {
                "order_processing": {
                    "retry_policy": {"max_retries": 8, "base_s": 0.5, "jitter_s": 0.5, "cap_s": 4.0},
                    "steps": {
                        "payment": {"mean_s": 0.1, "cv": 0.3, "transient_failure": 0.1},
                        "shipping": {"mean_s": 0.1, "cv": 0.3},
                    },
                },
                "crunch": {"untrusted": True, "cpu_rate_limit": 0.5, "cpu_limit_s": 30.0},
            },
            "quotas": {"default": {"sandbox_cpu": sandbox_cpu}},
        },
        "chaos config",
    )


def workload() -> dict[str, list[dict]]:
    shop = [{"id": f"o{i}", "type": "order_processing", "payload": {"order": i}} for i in range(150)]
    for c in range(20):
        for k in range(3):
            shop.append(
                {"id": f"c{c}-{k}", "type": "order_processing", **({"dependencies": [f"c{c}-{k - 1}"]} if k else {})}
            )
    books = [{"id": f"b{i}", "type": "order_processing", "payload": {"book": i}} for i in range(100)]
    return {"shop": shop, "books": books}


def batches(load: dict[str, list[dict]], n: int = 10, over_s: float = 5.0) -> list[tuple[float, str, list[dict]]]:
    """Each tenant's independent tasks in ``n`` batches spread over ``over_s``; the dependency
    chains whole, in the middle batch (a link refers to one submitted with it or before)."""
    out = []
    for tenant, tasks in load.items():
        chains = [t for t in tasks if t["id"].startswith("c")]
        rest = [t for t in tasks if not t["id"].startswith("c")]
        size = -(-len(rest) // n)
        for i in range(n):
            part = rest[i * size : (i + 1) * size] + (chains if i == n // 2 else [])
            if part:
                out.append((i * over_s / n, tenant, part))
    return out


class Env:
    """One fault's fresh MariaDB database, Redis prefix and execution log."""

    def __init__(self) -> None:
        self.db = f"autotune_chaos_{uuid.uuid4().hex[:8]}"
        admin = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{self.db}`")
        admin.close()
        self.url = f"mysql+pymysql://root@127.0.0.1:3306/{self.db}"
        self.prefix = f"autotune-chaos-{uuid.uuid4().hex[:8]}"
        self.log = tempfile.mktemp(prefix="chaos-", suffix=".log")
        self.store = TaskStore(self.url)
        self.store.create_schema()

    def queue_for(self, tenant: str) -> RedisTaskQueue:
        return RedisTaskQueue.connect("redis://127.0.0.1:6379/0", tenant, prefix=self.prefix, visibility_timeout_s=10.0)

    def cluster(self, cfg, run_id: str = "chaos") -> TaskCluster:
        return TaskCluster(
            cfg,
            self.store,
            self.queue_for,
            lambda t: ExecutorPool(cfg, namespace=t, slots_per_actor=10, time_scale=1.0, execution_log=self.log),
            concurrency=40,
            run_id=run_id,
        )

    def close(self) -> None:
        servers.ensure_up()
        self.store.close()
        client = redis.Redis(host="127.0.0.1", port=6379)
        keys = list(client.scan_iter(match=f"{self.prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        admin = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{self.db}`")
        admin.close()
        Path(self.log).unlink(missing_ok=True)


def drive(cluster: TaskCluster, plan: list[tuple[float, str, list[dict]]], fault=None, timeout_s: float = 400.0):
    """Submit the plan as its times come, run until idle; returns (survived, error, fault times)."""
    t0 = time.time()
    plan = sorted(plan, key=lambda b: b[0])
    held: list[tuple[str, list[dict]]] = []
    maybe_stored = False
    fault_times: list[float] = []
    thread = None
    if fault is not None:

        def strike() -> None:
            time.sleep(FAULT_AT_S)
            fault_times.append(time.time())
            fault(cluster)

        thread = threading.Thread(target=strike, daemon=True)
        thread.start()
    try:
        while time.time() - t0 < timeout_s:
            while plan and plan[0][0] <= time.time() - t0:
                _, tenant, part = plan.pop(0)
                held.append((tenant, part))
            if held and cluster.outage is None:
                try:
                    while held:
                        tenant, part = held[0]
                        if maybe_stored:  # the last try may have committed before the connection dropped
                            known = cluster.store.statuses(tenant, [t["id"] for t in part])
                            part = [t for t in part if t["id"] not in known]
                        if part:
                            cluster.submit(part, Submitter("chaos", tenant))
                        held.pop(0)
                    maybe_stored = False
                except StoreUnavailable as err:
                    maybe_stored = True
                    cluster.note_outage(err)
            cluster.run_once(collect_timeout_s=0.02)
            if not plan and not held and (thread is None or not thread.is_alive()) and not cluster.busy():
                return True, None, fault_times
        return False, f"not idle after {timeout_s:g} s", fault_times
    except OutageError as err:
        return False, str(err), fault_times
    finally:
        if thread is not None:
            thread.join()


def ledger_row(env: Env, load: dict[str, list[dict]], fault_times, survived, detail: str) -> dict:
    executions = read_execution_log(env.log)
    totals = {"submitted": 0, "terminal": 0, "lost": 0, "duplicated_terminal": 0, "reran": 0, "unexplained": 0}
    for tenant, tasks in load.items():
        a = account(env.store, tenant, [t["id"] for t in tasks], executions, fault_times)
        for k, v in a.as_row().items():
            totals[k] += v
        totals["unexplained"] += a.unexplained_reruns
    totals["survived"] = "yes" if survived and totals["lost"] == 0 else "no"
    totals["detail"] = detail
    return totals


# -- the faults -------------------------------------------------------------------------------
def run_in_process(name: str, fault, cfg=None, detail=lambda c: "") -> dict:
    env = Env()
    try:
        cfg = cfg or config()
        load = workload()
        cluster = env.cluster(cfg)
        try:
            survived, error, times = drive(cluster, batches(load), fault)
            extra = error or detail(cluster)
        finally:
            cluster.close()
        return {"fault": name, **ledger_row(env, load, times, survived, extra)}
    finally:
        env.close()


KILLED: list[int] = []


def kill_an_executor(cluster: TaskCluster) -> None:
    pool = cluster.pools["shop"]
    busy = max(pool.members, key=lambda m: m.busy)
    KILLED.append(busy.busy)
    ray.kill(busy.handle)


def restart(server: str, seconds: float):
    def fault(_cluster: TaskCluster) -> None:
        stop, start, _ = servers.SERVERS[server]
        stop()
        try:
            time.sleep(seconds)
        finally:
            start()

    return fault


def poisoned(cluster: TaskCluster) -> None:
    cluster.submit(
        [
            {"id": f"p{i}", "type": "order_processing", "payload": p}
            for i, p in enumerate(
                [{"type": "crunch"}, {"noop": True}, {"attempt": "abc"}, {"type": ["x"]}, {"attempt": 1e20}]
            )
        ],
        Submitter("chaos", "shop"),
    )
    q = cluster.queues["shop"]
    r = q.client
    r.xadd(q.streams[1], {"task_id": "o1", "payload": b"{not json"})
    r.xadd(q.streams[1], {"task_id": "nobody", "payload": b'{"attempt": 0}'})
    r.xadd(q.streams[0], {"payload": b"{}"})
    r.xadd(q.streams[2], {"task_id": "o2", "payload": b'{"attempt": 1e20}'})


def driver_kill(log_name: str = "driver-kill") -> dict:
    env = Env()
    try:
        load = workload()
        state = Path(tempfile.mkdtemp(prefix="chaos-state-"))
        args = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--driver",
            "start",
            "--db",
            env.url,
            "--prefix",
            env.prefix,
            "--log",
            env.log,
        ]
        envv = {**os.environ, "AUTOTUNE_STATE_DIR": str(state), "PYTHONPATH": str(ROOT)}
        first = subprocess.Popen(args, env=envv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        killed = None
        try:
            start = time.time()
            for line in first.stdout:
                if time.time() - start > FAULT_AT_S + 20 and killed is None:
                    break
                if line.startswith("{") and (elapsed := json.loads(line).get("elapsed_s", 0)) >= FAULT_AT_S + 2:
                    killed, killed_at = time.time(), elapsed
                    first.send_signal(signal.SIGKILL)
                    break
        finally:
            if first.poll() is None:
                first.kill()
            first.wait()
        second = subprocess.run([*args[:3], "resume", *args[4:]], env=envv, capture_output=True, text=True, timeout=600)
        survived = second.returncode == 0 and killed is not None
        detail = (
            f"SIGKILLed {killed_at:.1f} s into its run, a new driver resumed" if killed else "never reached the kill"
        )
        return {"fault": log_name, **ledger_row(env, load, [killed or 0.0], survived, detail)}
    finally:
        env.close()


def driver_main(phase: str, url: str, prefix: str, log: str) -> int:
    """The driver process of ``driver-kill``: submit and run (``start``), or take over (``resume``)."""
    from autotune.runtime import start_ray

    start_ray(None, num_cpus=2, namespace="autotune-chaos")
    store = TaskStore(url)
    store.create_schema()
    cfg = config()

    def queue_for(tenant: str) -> RedisTaskQueue:
        return RedisTaskQueue.connect("redis://127.0.0.1:6379/0", tenant, prefix=prefix, visibility_timeout_s=10.0)

    cluster = TaskCluster(
        cfg,
        store,
        queue_for,
        lambda t: ExecutorPool(cfg, namespace=t, slots_per_actor=10, execution_log=log),
        concurrency=40,
        run_id="chaos",
    )
    if phase == "start":
        t0 = time.time()
        plan = batches(workload())
        while True:
            while plan and plan[0][0] <= time.time() - t0:
                _, tenant, part = plan.pop(0)
                cluster.submit(part, Submitter("chaos", tenant))
            cluster.run_once()
            print(json.dumps({"elapsed_s": time.time() - t0}), flush=True)
    cluster.resume(list(workload()))
    idle = cluster.run_until_idle(timeout_s=400)
    cluster.close()
    return 0 if idle else 1


def noisy(name: str, sandbox_cpu: float) -> dict:
    """The victim's (books) mean latency with 30 CPU-bound untrusted tasks of another tenant running,
    against the same load alone."""
    env = Env()
    try:
        cfg = config(sandbox_cpu)
        victim = [
            (i * 0.1, "books", [{"id": f"{tag}{i}", "type": "order_processing"}])
            for tag in ("alone-",)
            for i in range(60)
        ]
        cluster = env.cluster(cfg)
        try:  # warm executors first: the alone figure is not an actor's start-up
            drive(cluster, [(0.0, "books", [{"id": f"warm-{i}", "type": "order_processing"} for i in range(20)])])
            drive(cluster, victim)
            alone = _mean_latency(env, "books", [f"alone-{i}" for i in range(60)])
            noise = [
                (
                    0.0,
                    "noisy",
                    [{"id": f"n{i}", "type": "crunch", "payload": {"op": "spin", "seconds": 1.0}} for i in range(30)],
                )
            ]
            both = [(0.5 + i * 0.1, "books", [{"id": f"with-{i}", "type": "order_processing"}]) for i in range(60)]
            survived, error, _ = drive(cluster, noise + both)
            shared = _mean_latency(env, "books", [f"with-{i}" for i in range(60)])
        finally:
            cluster.close()
        load = {
            "books": [{"id": f"{t}-{i}"} for t in ("alone", "with") for i in range(60)]
            + [{"id": f"warm-{i}"} for i in range(20)],
            "noisy": [{"id": f"n{i}"} for i in range(30)],
        }
        row = ledger_row(
            env,
            load,
            [],
            survived,
            error
            or f"victim mean {shared:.2f} s vs {alone:.2f} s alone "
            f"({shared / alone:.1f}x); sandbox quota {sandbox_cpu:g} cores",
        )
        return {"fault": name, **row, "victim_mean_s": round(shared, 3), "alone_mean_s": round(alone, 3)}
    finally:
        env.close()


def _mean_latency(env: Env, tenant: str, ids: list[str]) -> float:
    out = []
    for tid in ids:
        rec = env.store.get_task(tenant, tid)
        attempts = env.store.attempts_for(tenant, tid)
        if rec is not None and attempts:
            out.append(max(a.ended_s for a in attempts) - rec.created_s)
    return sum(out) / len(out) if out else float("nan")


COLUMNS = ("fault", "submitted", "terminal", "lost", "duplicated_terminal", "reran", "survived")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--quick", action="store_true", help="leave out the 60 s outages")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--driver", choices=("start", "resume"), help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", help=argparse.SUPPRESS)
    ap.add_argument("--log", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.driver:
        return driver_main(args.driver, args.db, args.prefix, args.log)
    names = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = sorted(set(names) - set(FAULTS))
    if unknown:
        ap.error(f"unknown faults {unknown}; choose from {', '.join(FAULTS)}")
    if args.quick:
        names = [n for n in names if not n.endswith("-60s")]
    out = args.out or ROOT / "runs" / f"chaos-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    servers.ensure_up()
    print(
        f"# git {git_revision()[:12]}; {platform.machine()}, {os.cpu_count()} cores; Redis 127.0.0.1:6379, "
        f"MariaDB 127.0.0.1:3306, local Ray; fault at {FAULT_AT_S:g} s; results in {out}",
        flush=True,
    )
    print(
        f"{'fault':<26} {'submitted':>9} {'terminal':>8} {'lost':>4} {'duplicated_terminal':>19} {'reran':>5} "
        f"{'survived':>8}  detail",
        flush=True,
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="autotune-chaos")
    rows = []
    try:
        for name in names:
            if name == "driver-kill":
                row = driver_kill()
            elif name.startswith("noisy-neighbour"):
                row = noisy(name, 64.0 if name.endswith("no-quota") else 1.0)
            elif name == "poisoned-payload":
                row = run_in_process(name, poisoned, detail=lambda c: f"{c.counts['dead_letters']} dead letters")
            elif name == "executor-kill":
                row = run_in_process(
                    name, kill_an_executor, detail=lambda c: f"killed an executor running {KILLED[-1]} task(s)"
                )
            else:
                server, seconds = name.split("-restart-")
                row = run_in_process(
                    name,
                    restart(server, float(seconds.rstrip("s"))),
                    detail=lambda c: f"{c.counts['outages']} outage(s) waited out",
                )
            if row.get("unexplained"):
                row["detail"] += f"; {row['unexplained']} re-run(s) no fault explains"
            rows.append(row)
            print(
                f"{row['fault']:<26} {row['submitted']:>9} {row['terminal']:>8} {row['lost']:>4} "
                f"{row['duplicated_terminal']:>19} {row['reran']:>5} {row['survived']:>8}  {row['detail']}",
                flush=True,
            )
    finally:
        ray.shutdown()
        servers.ensure_up()
        keys = sorted({k for r in rows for k in r})
        with open(out / "results.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=[*COLUMNS, *[k for k in keys if k not in COLUMNS]])
            w.writeheader()
            w.writerows(rows)
        write_run_metadata(out / "run.yaml", config(), faults=names, fault_at_s=FAULT_AT_S, rows=rows)
    return 0 if all(r["survived"] == "yes" and not r["lost"] and not r["duplicated_terminal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
