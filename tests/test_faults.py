"""Faults a 24/7 cluster meets, on the real parts: poisoned payloads and queue entries, Redis and
MariaDB restarted mid-run, an outage longer than the budget, a driver killed with SIGKILL and
resumed, a noisy tenant. Each ends with the ledger (:mod:`executors.accounting`): nothing lost,
nothing with two terminal records, and no task run again unless a crash interrupted its attempt.

The server tests stop and restart this machine's Redis and MariaDB (:mod:`tests.servers`) and
always leave them running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from autotune.cli import main
from autotune.live_run import LiveRun, RunOptions
from autotune.runtime import resolve_endpoints
from executors.accounting import account, read_execution_log
from executors.cluster import TaskCluster
from executors.intake import Submitter
from executors.pool import ExecutorPool
from executors.queue import RedisTaskQueue, open_queue
from executors.store import TaskRecord, TaskStore
from tests import servers
from tests.conftest import small_config
from tests.test_cluster import mysql_url, redis_client  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parent.parent
ALICE = Submitter("alice", "shop")


@pytest.fixture
def servers_left_running():
    yield
    servers.ensure_up()


def _orders(n, prefix="o", **payload):
    return [{"id": f"{prefix}{i}", "type": "order_processing", "payload": {"i": i, **payload}} for i in range(n)]


# -- payloads and entries ----------------------------------------------------------------------
@pytest.fixture
def embedded(ray_local, tmp_path):
    """A cluster on one SQLite file (store and queue), executors logging every execution."""
    cfg = small_config(
        intake={"tenants": ["shop"]},
        tasks={"order_processing": {}, "noop": {"noop": True}, "wire_money": {"required_roles": ["treasury"]}},
    )
    url = f"sqlite:///{tmp_path / 'autotune.db'}"
    log = str(tmp_path / "executions.log")
    store = TaskStore(url)
    store.create_schema()
    c = TaskCluster(
        cfg,
        store,
        lambda t: open_queue(url, t, visibility_timeout_s=5.0),
        lambda t: ExecutorPool(cfg, namespace=t, slots_per_actor=8, time_scale=0.05, execution_log=log),
        concurrency=16,
    )
    c.log, c.url = log, url
    yield c
    c.close()
    store.close()


POISON = [
    {"type": "wire_money"},
    {"noop": True},
    {"attempt": "abc"},
    {"type": ["x"]},
    {"attempt": 1e20},
    {"attempt": -1, "type": "noop"},
]


def test_a_payload_cannot_override_type_attempt_or_noop(embedded):
    c = embedded
    tasks = [{"id": f"p{i}", "type": "order_processing", "payload": p} for i, p in enumerate(POISON)]
    ids = c.submit(tasks + _orders(20), ALICE)  # alice has no roles: wire_money is not hers to run
    assert c.run_until_idle(timeout_s=120)
    executions = read_execution_log(c.log)
    assert {e.type for e in executions} == {"order_processing"}, "a payload chose what ran"
    # the "noop" payload made its downstream calls like any order (the no-op type takes ~0 s)
    noop_payload = [e for e in executions if e.task_id == "p1"]
    assert noop_payload and all(e.ended_s - e.started_s > 0.005 for e in noop_payload)
    assert c.store.dead_letters("shop") == []
    ledger = account(c.store, "shop", ids, executions)
    assert (ledger.lost, ledger.duplicated_terminal, ledger.unexplained_reruns) == (0, 0, 0)
    for tid in ids[: len(POISON)]:
        rec = c.store.get_task("shop", tid)
        assert rec.type == "order_processing" and rec.payload == POISON[int(tid[1:])]
        assert all(isinstance(a.attempt, int) and 0 <= a.attempt < 10 for a in c.store.attempts_for("shop", tid))


def test_poisoned_queue_entries_are_dead_lettered_and_the_driver_goes_on(ray_local, tmp_path, redis_client):
    cfg = small_config(intake={"tenants": ["shop"]})
    url = f"sqlite:///{tmp_path / 'autotune.db'}"
    store = TaskStore(url)
    store.create_schema()
    prefix = f"autotune-test-{uuid.uuid4().hex[:8]}"
    queues = []

    def queue_for(tenant):
        queues.append(RedisTaskQueue(redis_client, tenant, prefix=prefix, visibility_timeout_s=5.0))
        return queues[-1]

    c = TaskCluster(
        cfg,
        store,
        queue_for,
        lambda t: ExecutorPool(cfg, namespace=t, slots_per_actor=8, time_scale=0.02),
        concurrency=16,
    )
    try:
        good = c.submit(_orders(30, "g"), ALICE)
        # a task the store has but this deployment does not register (a config changed under it)
        store.insert_tasks(
            [TaskRecord("shop", "ghost", "retired_type", "queued", 0.5, None, {}, (), "alice", 1.0, 1.0)]
        )
        q = queues[0]
        q.enqueue("ghost", 1, {"attempt": 0})
        r = redis_client
        r.xadd(q.streams[1], {"task_id": "g0", "payload": b"{not json"})  # a corrupt duplicate of a real task
        r.xadd(q.streams[0], {"task_id": "nobody", "payload": b'{"attempt": 0}'})  # never submitted
        r.xadd(q.streams[1], {"payload": b"{}"})  # no task id at all
        r.xadd(q.streams[2], {"task_id": "g1", "payload": b'{"attempt": "abc"}'})
        r.xadd(q.streams[2], {"task_id": "g2", "payload": b'{"attempt": 1e20}'})
        assert c.run_until_idle(timeout_s=120)
        letters = {d.task_id: d.reason for d in store.dead_letters("shop")}
        assert set(letters) == {"ghost", "g0", "nobody", "", "g1", "g2"}
        assert "'retired_type' is not registered" in letters["ghost"] and "not JSON" in letters["g0"]
        assert "no task 'nobody'" in letters["nobody"] and "'abc'" in letters["g1"]
        assert store.get_task("shop", "ghost").status == "failed"
        assert "dead-lettered" in store.get_task("shop", "ghost").error
        # every real task ended exactly once (a bad entry of a task costs that task at most)
        statuses = store.statuses("shop", good)
        assert set(statuses.values()) <= {"succeeded", "failed"} and len(statuses) == len(good)
        assert q.task_ids() == set() and sum(q.backlog()) == 0
        assert any(e.action == "dead_letter" for e in store.audit("shop", limit=1000))
        # visible from the command line
        code = main(["dead-letters", "--database-url", url, "--json"])
        assert code == 0
    finally:
        c.close()
        for q in queues:
            q.purge()
        store.close()


# -- server restarts ---------------------------------------------------------------------------
def _live(tmp_path, database_url, *, budget_s=None, **kw):
    endpoints = resolve_endpoints(tmp_path, database_url=database_url, redis_url="redis://127.0.0.1:6379/0", environ={})
    opts = RunOptions(
        policy="hpa",
        tenant=f"t{uuid.uuid4().hex[:8]}",
        cluster_name=f"c{uuid.uuid4().hex[:6]}",
        scenario="worldcup",
        duration_s=24.0,
        peak_rate_per_s=30.0,
        interval_s=2.0,
        time_scale=0.1,
        slots_per_actor=10,
        drain_s=30.0,
        execution_log=str(tmp_path / "executions.log"),
        outage_budget_s=budget_s,
        **kw,
    )
    return LiveRun(small_config(intake={"tenants": ["default"]}), opts, endpoints, tmp_path / "run")


def _run_through(server, tmp_path, database_url, seconds):
    with _live(tmp_path, database_url) as live:
        with servers.down_for(server, seconds, after_s=7.0) as times:
            report = live.run()
        assert "stopped_s" in times and "started_s" in times, "the server was not restarted during the run"
        ids = [f"{live.replay.id_prefix}{i}" for i in range(1, live.plan.total + 1)]
        ledger = account(live.store, live.opts.tenant, ids, read_execution_log(live.opts.execution_log))
        audit = live.store.audit(live.opts.tenant, limit=100_000)
        return live, report, ledger, audit


def test_a_redis_restart_is_waited_out(ray_local, tmp_path, mysql_url, servers_left_running):
    live, report, ledger, audit = _run_through("redis", tmp_path, mysql_url, 4.0)
    assert report.extra["ended_by"] is None and report.extra["outages"] >= 1
    assert report.tasks_submitted == live.plan.total > 50 and report.tasks_unfinished == 0
    assert (ledger.lost, ledger.duplicated_terminal, ledger.unexplained_reruns) == (0, 0, 0)
    assert ledger.reran == 0  # no crash interrupted an attempt: nothing ran twice
    actions = {e.action for e in audit}
    assert "outage" in actions and "queue_rebuilt" in actions  # it came back empty, rebuilt from the store
    assert any("outage" in d.reason for d in live.decisions), "the tuner did not hold during the outage"


def test_a_mariadb_restart_is_waited_out(ray_local, tmp_path, mysql_url, servers_left_running):
    live, report, ledger, audit = _run_through("mariadb", tmp_path, mysql_url, 4.0)
    assert report.extra["ended_by"] is None and report.extra["outages"] >= 1
    assert report.tasks_submitted == live.plan.total > 50 and report.tasks_unfinished == 0
    assert (ledger.lost, ledger.duplicated_terminal, ledger.unexplained_reruns) == (0, 0, 0)
    assert ledger.reran == 0
    assert "outage" in {e.action for e in audit}
    # every decision reached the store, those taken while it was down included
    assert len(live.store.last_decisions(10_000, cluster=live.opts.cluster_name)) == len(live.decisions)


def test_an_outage_longer_than_the_budget_ends_the_run_with_a_report(ray_local, tmp_path, capsys, servers_left_running):
    out = tmp_path / "run"
    args = [
        "run",
        "--policy",
        "hpa",
        "--duration-s",
        "40",
        "--peak-rate",
        "10",
        "--interval-s",
        "2",
        "--time-scale",
        "0.1",
        "--no-dashboard",
        "--out",
        str(out),
        "--redis-url",
        "redis://127.0.0.1:6379/0",
        "--set",
        "cluster.outage_budget_s=2",
    ]
    with servers.down_for("redis", 8.0, after_s=5.0):
        code = main(args)
    assert code == 3
    err = capsys.readouterr().err
    assert "outage budget of 2 s" in err and "redis at 127.0.0.1:6379" in err and "--resume" in err
    summary = json.loads((out / "summary.json").read_text())
    assert "redis at 127.0.0.1:6379 unreachable" in summary["extra"]["ended_by"]
    assert summary["intervals"] >= 1
    assert json.loads((out / "run_state.json").read_text())["status"] == "ended"


# -- a killed driver ---------------------------------------------------------------------------
def _lines(proc, until, timeout_s):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        try:
            last = json.loads(line)
        except ValueError:
            continue
        if until(last):
            return last
    raise AssertionError(f"the driver never reached the state to kill it in; last: {last}")


def test_a_killed_driver_is_resumed_with_retries_and_dependencies(tmp_path):
    db, log = tmp_path / "crash.db", tmp_path / "executions.log"
    env = {**os.environ, "AUTOTUNE_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(
        [sys.executable, "-m", "tests.crash_driver", "start", str(db), str(log)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        # kill it while tasks wait out a retry backoff, chains wait for dependencies, and work runs
        at = _lines(
            first,
            lambda s: s["retrying"] >= 5 and s["waiting"] >= 5 and s["running"] >= 3 and s["terminal"] >= 10,
            timeout_s=120,
        )
        killed_s = time.time()
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    second = subprocess.run(
        [sys.executable, "-m", "tests.crash_driver", "resume", str(db), str(log)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    result = json.loads(second.stdout.strip().splitlines()[-1])
    assert result["idle"] and result["recovered"]["shop"]["retrying"] >= 1
    store = TaskStore(f"sqlite:///{db}")
    from tests.crash_driver import workload

    ids = [t["id"] for t in workload()]
    ledger = account(store, "shop", ids, read_execution_log(log), fault_times_s=[killed_s])
    assert (ledger.lost, ledger.duplicated_terminal, ledger.unexplained_reruns) == (0, 0, 0), ledger
    assert ledger.reran <= at["running"] + 20  # only what was in flight when the driver died
    # dependencies first, across the crash: a chain's next link started after the previous one ended
    for c in range(20):
        for k in range(1, 3):
            dep, task = store.get_task("shop", f"c{c}-{k - 1}"), store.get_task("shop", f"c{c}-{k}")
            if dep.status == "succeeded":
                assert min(a.started_s for a in store.attempts_for("shop", task.task_id)) >= max(
                    a.ended_s for a in store.attempts_for("shop", dep.task_id)
                )
            else:
                assert task.status == "failed"
    store.close()


def test_autotune_run_resume_continues_a_killed_run(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "AUTOTUNE_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "autotune.cli", "run"]
    first = subprocess.Popen(
        [
            *base,
            "--policy",
            "hpa",
            "--duration-s",
            "30",
            "--peak-rate",
            "10",
            "--interval-s",
            "3",
            "--time-scale",
            "0.1",
            "--no-dashboard",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = (out / "intervals.csv").read_text().count("\n") if (out / "intervals.csv").exists() else 0
            if rows >= 3:  # a header and two intervals
                break
            time.sleep(0.3)
        else:
            raise AssertionError("the run never got two intervals in")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    state = json.loads((out / "run_state.json").read_text())
    assert state["status"] == "running"
    resumed = subprocess.run(
        [*base, "--resume", str(out), "--no-dashboard"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["extra"]["resumed"] and summary["extra"]["run_id"] == state["run_id"]
    # one report for the whole run: every task the replay planned, each ended, none of another run's
    assert summary["tasks_submitted"] == summary["extra"]["replay_tasks"] > 50
    assert summary["tasks_unfinished"] == 0
    assert summary["tasks_succeeded"] + summary["tasks_failed"] == summary["tasks_submitted"]
    assert summary["intervals"] >= 8
    again = subprocess.run(
        [*base, "--resume", str(out), "--no-dashboard"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 2 and "nothing to resume" in again.stderr


# -- a noisy neighbour -------------------------------------------------------------------------
def test_a_noisy_tenant_is_held_to_its_quota(ray_local, tmp_path):
    cfg = small_config(
        intake={"tenants": ["noisy", "quiet"]},
        tasks={
            "order_processing": {"steps": {"work": {"mean_s": 0.2, "cv": 0.2}}},
            "crunch": {"untrusted": True, "cpu_rate_limit": 0.5, "cpu_limit_s": 20.0},
        },
        quotas={"default": {"sandbox_cpu": 1.0}},
    )
    url = f"sqlite:///{tmp_path / 'autotune.db'}"
    log = str(tmp_path / "executions.log")
    store = TaskStore(url)
    store.create_schema()
    c = TaskCluster(
        cfg,
        store,
        lambda t: open_queue(url, t, visibility_timeout_s=3.0),
        lambda t: ExecutorPool(cfg, namespace=t, slots_per_actor=10, execution_log=log),
        concurrency=20,
    )
    try:
        noisy = c.submit(
            [{"id": f"n{i}", "type": "crunch", "payload": {"op": "spin", "seconds": 0.6}} for i in range(10)],
            Submitter("a", "noisy"),
        )
        quiet = c.submit([{"id": f"q{i}", "type": "order_processing"} for i in range(40)], Submitter("b", "quiet"))
        c.run_once()
        assert c.pools["quiet"].target >= 10  # its fair half, though the noisy tenant queued as much
        assert c.run_until_idle(timeout_s=240)
        executions = read_execution_log(log)
        crunch = sorted((e.started_s, e.ended_s) for e in executions if e.type == "crunch")
        assert len(crunch) >= len(noisy)
        # the noisy tenant's sandboxed tasks never held more than its quota: 1 core = 2 at 0.5
        edges = sorted([(s, 1) for s, _ in crunch] + [(e, -1) for _, e in crunch])
        running = peak = 0
        for _, step in edges:
            running += step
            peak = max(peak, running)
        assert peak <= 2
        assert c.held_back == 0
        # held back, not starved, and the quiet tenant was not held back at all: it was done long before
        quiet_end = max(e.ended_s for e in executions if e.tenant == "quiet")
        assert quiet_end < max(e for _, e in crunch)
        for tenant, ids in (("noisy", noisy), ("quiet", quiet)):
            ledger = account(store, tenant, ids, executions)
            assert (ledger.lost, ledger.duplicated_terminal, ledger.unexplained_reruns) == (0, 0, 0)
    finally:
        c.close()
        store.close()
