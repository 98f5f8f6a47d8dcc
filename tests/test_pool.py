"""The Ray executor pool on a real local Ray: concurrency changes, drain, batches, dead executors,
tenant namespaces, declared resources, per-actor CPU and memory."""

from __future__ import annotations

import time

import pytest
import ray

from executors.pool import ExecutorPool, ExecutorUsage, WorkItem, ray_namespace, rss_bytes_from_statm
from tests.conftest import small_config


def items(n: int, prefix: str = "t", noop: bool = False, tenant: str = "default") -> list[WorkItem]:
    """Order-processing work items; ``noop`` ones are of the no-op type ``noop_config`` registers."""
    return [WorkItem(tenant, f"{prefix}{i}", "noop" if noop else "order_processing", 0, {}) for i in range(n)]


def noop_config():
    """The small config with a ``noop`` task type (it succeeds without calling its steps)."""
    return small_config(tasks={"order_processing": {}, "noop": {"noop": True}})


def test_a_payload_cannot_make_a_task_a_noop(ray_local):
    """Whether a task is a no-op is its registered type's say (the deployment's), never the payload's."""
    pool = ExecutorPool(noop_config(), namespace="default", slots_per_actor=2, time_scale=0.2)
    try:
        pool.set_concurrency(2)
        real, noop = run_all(
            pool,
            [WorkItem("default", "p", "order_processing", 0, {"noop": True}), WorkItem("default", "n", "noop", 0, {})],
        )
        by_id = {r.task_id: r for r in (real, noop)}
        # the order-processing task made its three downstream calls (~0.2 s at this scale); the no-op none
        assert by_id["p"].ended_s - by_id["p"].started_s > 0.05
        assert by_id["n"].ended_s - by_id["n"].started_s < 0.05 and by_id["n"].outcome == "succeeded"
    finally:
        pool.shutdown()


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
    pool = ExecutorPool(small_config(), namespace="default", slots_per_actor=4, time_scale=0.01)
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
    pool = ExecutorPool(small_config(), namespace="default", slots_per_actor=4, time_scale=0.2)  # ~0.2 s a task
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
    pool = ExecutorPool(small_config(), namespace="default", slots_per_actor=4, time_scale=0.5)
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
    pool = ExecutorPool(small_config(), namespace="default", slots_per_actor=2, time_scale=0.01)
    try:
        pool.set_concurrency(2)
        [r] = run_all(pool, [WorkItem("default", "x", "teleport", 0, {})])
        assert r.outcome == "failed" and "unknown task type" in r.error
    finally:
        pool.shutdown()


def test_untrusted_task_over_its_limits_fails_alone(ray_local):
    cfg = small_config(
        tasks={
            "order_processing": {},
            "noop": {"noop": True},
            "report": {"untrusted": True, "memory_limit_mb": 256, "cpu_limit_s": 1.0},
        }
    )
    pool = ExecutorPool(cfg, namespace="default", slots_per_actor=4, time_scale=0.01)
    try:
        pool.set_concurrency(4)
        work = [
            WorkItem("default", "small", "report", 0, {"op": "allocate", "mb": 16}),
            WorkItem("default", "huge", "report", 0, {"op": "allocate", "mb": 1024}),
            WorkItem("default", "spin", "report", 0, {"op": "spin", "seconds": 5}),
            WorkItem("default", "bogus", "report", 0, {"op": "format_disk"}),
        ]
        results = {r.task_id: r for r in run_all(pool, work, timeout_s=60)}
        assert results["small"].outcome == "succeeded"
        assert results["huge"].outcome == "failed" and "memory limit of 256 MB" in results["huge"].error
        assert results["spin"].outcome == "failed" and "CPU limit of 1 s" in results["spin"].error
        assert results["bogus"].outcome == "failed" and "unknown sandboxed operation" in results["bogus"].error
        # the executor lives on and keeps serving
        [after] = run_all(pool, [WorkItem("default", "after", "noop", 0, {})])
        assert after.outcome == "succeeded" and after.executor == results["small"].executor
    finally:
        pool.shutdown()


# -- tenants ---------------------------------------------------------------------------------


def test_actors_live_in_their_tenants_ray_namespace_only(ray_local):
    pool_a = ExecutorPool.for_tenant(small_config(), "A", slots_per_actor=2, time_scale=0.01)
    pool_b = ExecutorPool.for_tenant(small_config(), "B", slots_per_actor=2, time_scale=0.01)
    try:
        pool_a.set_concurrency(4)
        pool_b.set_concurrency(2)
        assert pool_a.tenant == "A" and pool_a.ray_namespace == ray_namespace("A") == "autotune-A"
        for m in pool_a.members:
            found = ray.get_actor(m.actor_id, namespace="autotune-A")
            assert ray.get(found.stats.remote(), timeout=30)["completed"] == 0
            for elsewhere in ("autotune-B", "autotune-tests"):  # B's namespace, the driver's own
                with pytest.raises(ValueError):
                    ray.get_actor(m.actor_id, namespace=elsewhere)
        [b] = pool_b.members
        ray.get_actor(b.actor_id, namespace="autotune-B")
        with pytest.raises(ValueError):
            ray.get_actor(b.actor_id, namespace="autotune-A")
    finally:
        pool_a.shutdown()
        pool_b.shutdown()


def test_another_tenants_work_is_refused_and_nothing_is_dispatched(ray_local):
    pool = ExecutorPool.for_tenant(noop_config(), "A", slots_per_actor=4, time_scale=0.01)
    try:
        pool.set_concurrency(4)
        mixed = items(2, "a", noop=True, tenant="A") + items(1, "b", noop=True, tenant="B")
        with pytest.raises(ValueError, match="tenant 'B'.*tenant 'A'"):
            pool.dispatch(mixed)
        assert pool.in_flight == 0
        results = run_all(pool, items(3, "a", noop=True, tenant="A"))
        assert sorted(r.task_id for r in results) == ["a0", "a1", "a2"]
        assert {r.tenant for r in results} == {"A"}
    finally:
        pool.shutdown()


def test_two_pools_of_one_tenant_do_not_collide_on_actor_names(ray_local):
    first = ExecutorPool.for_tenant(small_config(), "A", slots_per_actor=2, time_scale=0.01)
    second = ExecutorPool.for_tenant(small_config(), "A", slots_per_actor=2, time_scale=0.01)
    try:
        first.set_concurrency(2)
        second.set_concurrency(2)
        assert first.members[0].actor_id != second.members[0].actor_id
    finally:
        first.shutdown()
        second.shutdown()


def test_bad_pool_parameters_are_named():
    with pytest.raises(ValueError, match="memory_mb_per_actor"):
        ExecutorPool(small_config(), memory_mb_per_actor=-1)
    with pytest.raises(ValueError, match="cpus_per_actor"):
        ExecutorPool(small_config(), cpus_per_actor=float("nan"))
    with pytest.raises(ValueError, match="tenant"):
        ExecutorPool.for_tenant(small_config(), "")


# -- declared resources ------------------------------------------------------------------------


def _available(name: str) -> float:
    return ray.available_resources().get(name, 0.0)


def _wait_for(predicate, timeout_s: float = 30.0) -> bool:
    """Ray's resource view follows the raylet's reports, a moment after actors start or stop."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_actors_declare_cpus_and_memory(ray_local):
    cpu_before, mem_before = _available("CPU"), _available("memory")
    pool = ExecutorPool.for_tenant(
        small_config(), "R", slots_per_actor=2, cpus_per_actor=0.5, memory_mb_per_actor=64, time_scale=0.01
    )
    try:
        pool.set_concurrency(4)  # two actors: 1 CPU, 128 MB reserved
        assert len(pool.resource_usage(timeout_s=30)) == 2  # both started
        assert _wait_for(lambda: abs(cpu_before - _available("CPU") - 1.0) < 1e-6), ray.available_resources()
        assert _wait_for(lambda: abs(mem_before - _available("memory") - 128 * 1024 * 1024) < 1), (
            ray.available_resources()
        )
    finally:
        pool.shutdown()
    assert _wait_for(lambda: _available("CPU") == cpu_before and _available("memory") == mem_before)


def test_default_actors_declare_nothing_so_more_actors_than_cpus_start(ray_local):
    pool = ExecutorPool(small_config(), namespace="default", slots_per_actor=1, time_scale=0.01)
    try:
        assert "memory" not in pool._actor_options("x") and pool._actor_options("x")["num_cpus"] == 0
        pool.set_concurrency(3)  # three actors on the local Ray's 2 CPUs
        assert len(pool.resource_usage(timeout_s=60)) == 3
    finally:
        pool.shutdown()


# -- per-actor CPU and memory --------------------------------------------------------------------


def test_rss_is_the_second_statm_field_in_pages():
    assert rss_bytes_from_statm("25000 3000 800 10 0 2000 0\n", 4096) == 3000 * 4096
    with pytest.raises(ValueError, match="statm"):
        rss_bytes_from_statm("", 4096)


def test_resource_usage_reports_each_actors_process_and_skips_a_dead_one(ray_local):
    pool = ExecutorPool(noop_config(), namespace="default", slots_per_actor=4, time_scale=0.01)
    try:
        pool.set_concurrency(8)
        results = run_all(pool, items(40, noop=True))
        assert len(results) == 40
        usage = pool.resource_usage(timeout_s=30)
        assert set(usage) == {m.actor_id for m in pool.members} and pool.unanswered == ()
        for actor_id, u in usage.items():
            assert isinstance(u, ExecutorUsage) and u.actor_id == actor_id
            assert u.cpu_s > 0 and u.in_flight == 0
            assert 10 * 1024 * 1024 < u.rss_bytes < 4 * 1024**3  # a Python process with Ray loaded
        assert sum(u.completed for u in usage.values()) == 40
        # distinct processes: not the driver's own numbers repeated
        assert len({u.rss_bytes for u in usage.values()} | {u.cpu_s for u in usage.values()}) > 1

        victim = pool.members[0]
        ray.kill(victim.handle)
        _wait_for(lambda: victim.actor_id not in pool.resource_usage(timeout_s=5))
        usage = pool.resource_usage(timeout_s=5)  # never raises for the dead one
        assert victim.actor_id not in usage and victim.actor_id in pool.unanswered
        assert set(usage) == {m.actor_id for m in pool.members[1:]}
    finally:
        pool.shutdown()


def test_resource_usage_of_an_empty_pool_is_empty(ray_local):
    pool = ExecutorPool(small_config(), namespace="default")
    assert pool.resource_usage(timeout_s=1) == {} and pool.unanswered == ()
