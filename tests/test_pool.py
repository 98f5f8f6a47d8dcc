"""The Ray executor pool on a real local Ray: concurrency changes, drain, batches, dead executors."""

from __future__ import annotations

import time

import ray

from executors.pool import ExecutorPool, WorkItem
from tests.conftest import small_config


def items(n: int, prefix: str = "t", noop: bool = False) -> list[WorkItem]:
    return [WorkItem("default", f"{prefix}{i}", "order_processing", 0, {"noop": True} if noop else {})
            for i in range(n)]


def run_all(pool: ExecutorPool, work: list[WorkItem], timeout_s: float = 60.0) -> list:
    """Dispatch everything as slots free up; collect until every item has one result."""
    pending, results = list(work), []
    deadline = time.time() + timeout_s
    while (pending or pool.in_flight) and time.time() < deadline:
        given = pool.dispatch(pending)
        pending = pending[given:]
        results.extend(pool.collect(timeout_s=0.05))
    return results


def test_scale_up_adds_actors_and_runs_every_task_once(ray_local):
    pool = ExecutorPool(small_config(), namespace="t1", slots_per_actor=4, time_scale=0.01)
    try:
        pool.set_concurrency(8)
        assert pool.actual_concurrency == 8 and len(pool.members) == 2
        work = items(60)
        results = run_all(pool, work)
        assert sorted(r.task_id for r in results) == sorted(w.task_id for w in work)
        assert {r.outcome for r in results} <= {"succeeded", "failed", "retrying"}
        assert {r.executor for r in results} == {m.actor_id for m in pool.members}
        pool.set_concurrency(12)
        assert pool.actual_concurrency == 12 and len(pool.members) == 3
    finally:
        pool.shutdown()


def test_scale_down_drains_without_cancelling(ray_local):
    pool = ExecutorPool(small_config(), namespace="t2", slots_per_actor=4, time_scale=0.2)  # ~0.2 s a task
    try:
        pool.set_concurrency(8)
        assert pool.dispatch(items(8)) == 8
        pool.set_concurrency(4)  # half the actors drain while their tasks run
        assert pool.actual_concurrency == 4
        assert len(pool.members) == 2 and pool.in_flight == 8  # nothing cancelled
        assert pool.dispatch(items(8, "late")) <= 4  # the draining actor takes no new work
        results = run_all(pool, [])
        assert len(results) >= 8 and all(r.outcome != "lost" for r in results)
        assert len(pool.members) == 1  # the drained actor is gone once idle
    finally:
        pool.shutdown()


def test_killed_executor_reports_its_tasks_lost_and_is_replaced(ray_local):
    pool = ExecutorPool(small_config(), namespace="t3", slots_per_actor=4, time_scale=0.5)
    try:
        pool.set_concurrency(8)
        work = items(8)
        assert pool.dispatch(work) == 8
        victim = pool.members[0]
        ray.kill(victim.handle)
        results = run_all(pool, [])
        by_task = {}
        for r in results:
            by_task.setdefault(r.task_id, []).append(r)
        assert sorted(by_task) == sorted(w.task_id for w in work)  # every task accounted for, once
        assert all(len(v) == 1 for v in by_task.values())
        lost = [r for r in results if r.outcome == "lost"]
        assert lost and all(r.executor == victim.actor_id for r in lost)
        assert pool.actual_concurrency == 8 and victim.actor_id not in {m.actor_id for m in pool.members}
        # lost tasks run again on the replacement: each ends with a result
        again = run_all(pool, [WorkItem(r.tenant, r.task_id, "order_processing", r.attempt + 1, {}) for r in lost])
        assert sorted(r.task_id for r in again) == sorted(r.task_id for r in lost)
        assert all(r.outcome != "lost" for r in again)
    finally:
        pool.shutdown()


def test_unknown_task_type_fails_permanently(ray_local):
    pool = ExecutorPool(small_config(), namespace="t4", slots_per_actor=2, time_scale=0.01)
    try:
        pool.set_concurrency(2)
        [r] = run_all(pool, [WorkItem("default", "x", "teleport", 0, {})])
        assert r.outcome == "failed" and "unknown task type" in r.error
    finally:
        pool.shutdown()


def test_untrusted_task_over_its_limits_fails_alone(ray_local):
    cfg = small_config(tasks={"order_processing": {}, "report": {"untrusted": True, "memory_limit_mb": 256,
                                                                 "cpu_limit_s": 1.0}})
    pool = ExecutorPool(cfg, namespace="t5", slots_per_actor=4, time_scale=0.01)
    try:
        pool.set_concurrency(4)
        work = [WorkItem("default", "small", "report", 0, {"op": "allocate", "mb": 16}),
                WorkItem("default", "huge", "report", 0, {"op": "allocate", "mb": 1024}),
                WorkItem("default", "spin", "report", 0, {"op": "spin", "seconds": 5}),
                WorkItem("default", "bogus", "report", 0, {"op": "format_disk"})]
        results = {r.task_id: r for r in run_all(pool, work, timeout_s=60)}
        assert results["small"].outcome == "succeeded"
        assert results["huge"].outcome == "failed" and "memory limit of 256 MB" in results["huge"].error
        assert results["spin"].outcome == "failed" and "CPU limit of 1 s" in results["spin"].error
        assert results["bogus"].outcome == "failed" and "unknown sandboxed operation" in results["bogus"].error
        # the executor lives on and keeps serving
        [after] = run_all(pool, [WorkItem("default", "after", "order_processing", 0, {"noop": True})])
        assert after.outcome == "succeeded" and after.executor == results["small"].executor
    finally:
        pool.shutdown()
