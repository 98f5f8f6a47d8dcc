"""The task cluster: intake, queue, executors and store wired together.

:class:`TaskCluster` is the thin loop around the parts. ``submit`` validates a whole submission
(:mod:`executors.intake`) and only then writes it: the store first (the durable truth), then the
Redis queue for tasks whose dependencies have succeeded. ``run_once`` claims work for the free
executor slots, dispatches it in batches, and settles the results: an attempt row for each; a
terminal status at most once per task (the store refuses a second); a retryable failure goes back to
the queue after :func:`control.retry.retry_delay_s`, until :func:`control.retry.should_retry` says
no; a task whose executor died is not acknowledged, so the queue delivers it again after its
visibility timeout. Dependents are queued when their last dependency succeeds and fail when one
fails.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from autotune.config import AutotuneConfig
from autotune.domain import task_priority
from control.priority import priority_class
from control.retry import ErrorKind, retry_delay_s, should_retry
from executors.intake import Submitter, validate_submission
from executors.metrics import ClusterMetrics
from executors.pool import AttemptResult, ExecutorPool, WorkItem
from executors.queue import Delivery, RedisTaskQueue
from executors.store import AttemptRecord, AuditEvent, TaskRecord, TaskStore



class TaskCluster:
    def __init__(self, cfg: AutotuneConfig, store: TaskStore, queue_for: Callable[[str], RedisTaskQueue],
                 pool: ExecutorPool, *, metrics: ClusterMetrics | None = None, consumer: str = "driver-0",
                 clock: Callable[[], float] = time.time, seed: int = 0) -> None:
        self.cfg = cfg
        self.store = store
        self.queue_for = queue_for
        self.queues: dict[str, RedisTaskQueue] = {}
        self.pool = pool
        self.metrics = metrics
        self.consumer = consumer
        self.clock = clock
        self.rng = random.Random(seed)
        self.waiting: dict[tuple[str, str], set[str]] = {}  # (tenant, task) -> unfinished dependencies
        self.dependents: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.deliveries: dict[tuple[str, str], Delivery] = {}
        self.retry_heap: list[tuple[float, str, str, int, str, dict]] = []
        self.types: dict[tuple[str, str], str] = {}
        self.created: dict[tuple[str, str], float] = {}

    def _queue(self, tenant: str) -> RedisTaskQueue:
        if tenant not in self.queues:
            self.queues[tenant] = self.queue_for(tenant)
        return self.queues[tenant]

    # -- intake ------------------------------------------------------------------------------
    def submit(self, raw_tasks: Sequence[Any], submitter: Submitter) -> list[str]:
        """Accept a task set whole, or raise SubmissionError and write nothing."""
        tenant = submitter.tenant
        in_set = {t.get("id") for t in raw_tasks if isinstance(t, dict)}
        referenced = {d for t in raw_tasks if isinstance(t, dict) for d in t.get("dependencies", ()) or ()}
        known = {}
        for dep in referenced - in_set:
            rec = self.store.get_task(tenant, dep)
            if rec is not None:
                known[dep] = rec.status
        tasks = validate_submission(raw_tasks, submitter, self.cfg, known_ids=known)
        now = self.clock()
        records = []
        for t in tasks:
            score = task_priority(t, now, cpu_free=4.0, memory_mb_free=4096.0)
            records.append(TaskRecord(tenant, t.id, t.type, "queued", score, t.deadline_s, dict(t.payload),
                                      tuple(t.dependencies), submitter.user, now, now))
        self.store.insert_tasks(records)
        self.store.append_audit([AuditEvent(now, tenant, submitter.user, "submit", t.id, {"type": t.type})
                                 for t in tasks])
        ready = []
        for t, rec in zip(tasks, records):
            key = (tenant, t.id)
            self.types[key] = t.type
            self.created[key] = now
            pending = {d for d in t.dependencies if known.get(d) != "succeeded"}
            if any(known.get(d) == "failed" for d in t.dependencies):
                self._finish(tenant, t.id, "failed", now, error="a dependency failed")
                continue
            for d in pending:
                self.dependents[(tenant, d)].add(t.id)
            if pending:
                self.waiting[key] = pending
            else:
                ready.append((t.id, priority_class(rec.priority), {"type": t.type, "attempt": 0, **t.payload}))
        if ready:
            self._queue(tenant).enqueue_many(ready)
        return [t.id for t in tasks]

    # -- the loop ----------------------------------------------------------------------------
    def run_once(self, collect_timeout_s: float = 0.05) -> int:
        """One cycle: due retries, claim, dispatch, collect, settle. Returns results settled."""
        now = self.clock()
        while self.retry_heap and self.retry_heap[0][0] <= now:
            _, tenant, task_id, attempt, ttype, payload = heapq.heappop(self.retry_heap)
            self._queue(tenant).enqueue(task_id, 1, {**payload, "type": ttype, "attempt": attempt})
            self.store.update_status(tenant, task_id, "queued", now)
        for tenant, queue in list(self.queues.items()):
            if queue.is_empty_store():
                self.rebuild_queue(tenant)
            free = self.pool.free_slots
            if free <= 0:
                break
            items = []
            for d in queue.claim(self.consumer, free):
                payload = dict(d.payload)
                ttype = payload.pop("type", "order_processing")
                # a redelivery (its executor died) is a new attempt, so its record does not collide
                attempt = int(payload.pop("attempt", 0)) + max(0, d.deliveries - 1)
                self.deliveries[(tenant, d.task_id)] = d
                items.append(WorkItem(tenant, d.task_id, ttype, attempt, payload))
            if items:
                queue.set_status_many([(i.task_id, "running", {"attempt": str(i.attempt)}) for i in items])
                given = self.pool.dispatch(items)
                assert given == len(items), "claimed more than the free slots"
        results = self.pool.collect(timeout_s=collect_timeout_s)
        self._settle(results)
        if self.metrics is not None:
            self.metrics.observe_concurrency(self.pool.target, self.pool.actual_concurrency)
            for tenant, queue in self.queues.items():
                self.metrics.observe_backlog(tenant, queue.backlog())
                self.metrics.in_flight.labels(tenant).set(self.pool.in_flight)
        return len(results)

    def _settle(self, results: list[AttemptResult]) -> None:
        if not results:
            return
        self.store.record_attempts([
            AttemptRecord(r.tenant, r.task_id, r.attempt, r.executor, r.started_s, r.ended_s, r.outcome, r.error)
            for r in results])
        acks: dict[str, list[Delivery]] = defaultdict(list)
        finished: dict[str, list[tuple[str, str, str | None]]] = defaultdict(list)
        now = self.clock()
        for r in results:
            key = (r.tenant, r.task_id)
            ttype = self.types.get(key, "order_processing")
            if self.metrics is not None:
                done_s = now - self.created[key] if key in self.created else None
                self.metrics.observe_outcome(r.tenant, ttype, r.outcome, done_s)
            if r.outcome == "lost":  # not acknowledged: the queue delivers it again after its timeout
                self.deliveries.pop(key, None)
                continue
            delivery = self.deliveries.pop(key, None)
            if delivery is not None:
                acks[r.tenant].append(delivery)
            if r.outcome == "retrying":
                policy = self.cfg.tasks[ttype].retry_policy if ttype in self.cfg.tasks else None
                kind = ErrorKind(r.error_kind or "transient")
                if policy is not None and should_retry(r.attempt, kind, policy):
                    delay = retry_delay_s(r.attempt, self.rng.random(), policy)
                    payload = dict(delivery.payload) if delivery is not None else {}
                    payload.pop("type", None)
                    payload.pop("attempt", None)
                    heapq.heappush(self.retry_heap, (now + delay, r.tenant, r.task_id, r.attempt + 1, ttype, payload))
                    self.store.update_status(r.tenant, r.task_id, "retrying", now, error=r.error)
                else:
                    finished[r.tenant].append((r.task_id, "failed", r.error))
            else:
                finished[r.tenant].append((r.task_id, r.outcome, r.error))
        # terminal statuses in one transaction per tenant (a commit per task would cap throughput)
        for tenant, items in finished.items():
            changed = self.store.finish_many(tenant, items, now)
            for task_id, status, _ in items:
                if task_id in changed:
                    self._release_dependents(tenant, task_id, status, now)
        for tenant, ds in acks.items():
            self._queue(tenant).ack(ds)

    def _finish(self, tenant: str, task_id: str, status: str, now: float, error: str | None = None) -> None:
        if not self.store.update_status(tenant, task_id, status, now, error=error):
            return  # already terminal: exactly one terminal record per task
        self._release_dependents(tenant, task_id, status, now)

    def _release_dependents(self, tenant: str, task_id: str, status: str, now: float) -> None:
        for dep in sorted(self.dependents.pop((tenant, task_id), ())):
            key = (tenant, dep)
            if status == "failed":
                self.waiting.pop(key, None)
                self._finish(tenant, dep, "failed", now, error=f"dependency {task_id!r} failed")
                continue
            pending = self.waiting.get(key)
            if pending is None:
                continue
            pending.discard(task_id)
            if not pending:
                del self.waiting[key]
                rec = self.store.get_task(tenant, dep)
                if rec is not None:
                    self._queue(tenant).enqueue(dep, priority_class(rec.priority),
                                                {"type": rec.type, "attempt": 0, **rec.payload})

    def rebuild_queue(self, tenant: str) -> int:
        """Redis lost its data (restarted empty): re-queue every unfinished, unblocked task from the store.

        Tasks running right now are re-queued too; a second run of one is settled by the store (its
        attempt is a new row, its terminal status is written once).
        """
        due = {(t, k) for _, t, k, *_ in self.retry_heap}
        unfinished = [r for r in self.store.tasks_with_status(tenant, ["queued", "running", "retrying"])
                      if (tenant, r.task_id) not in self.waiting and (tenant, r.task_id) not in due]
        # attempt numbers continue from the store, so retries are not reset and records do not collide
        next_attempt = self.store.next_attempts(tenant, [r.task_id for r in unfinished])
        items = [(r.task_id, priority_class(r.priority),
                  {"type": r.type, "attempt": next_attempt[r.task_id], **r.payload}) for r in unfinished]
        n = self._queue(tenant).rebuild(items)
        self.store.append_audit([AuditEvent(self.clock(), tenant, "system", "queue_rebuilt", tenant,
                                            {"tasks": n})])
        return n

    def run_until_idle(self, timeout_s: float = 60.0) -> bool:
        """Run cycles until nothing is queued, running, waiting or due for retry (tests, demos)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.run_once()
            busy = (self.pool.in_flight or self.retry_heap or self.waiting
                    or any(sum(q.backlog()) for q in self.queues.values()))
            if not busy:
                return True
        return False
