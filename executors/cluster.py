"""The task cluster: intake, queue, executors and store wired together.

:class:`TaskCluster` is the thin loop around the parts. ``submit`` validates a whole submission
(:mod:`executors.intake`) and only then writes it: the store first (the durable truth), then the live
queue for tasks whose dependencies have succeeded. ``run_once`` claims work for the free executor
slots, dispatches it in batches, and settles the results: an attempt row for each; a terminal status
at most once per task (the store refuses a second); a retryable failure goes back to the queue after
:func:`control.retry.retry_delay_s`, until :func:`control.retry.should_retry` says no; a task whose
executor died is not acknowledged, so the queue delivers it again after its visibility timeout.
Dependents are queued when their last dependency succeeds and fail when one fails.

Tenants are isolated all the way down: each has its own queue (key prefix in Redis, tenant column in
SQL), its rows carry its tenant, and its tasks run on its own executor pool in its own Ray namespace.
The one concurrency the control plane tunes (:meth:`TaskCluster.set_concurrency`) is split among the
tenants' pools by demand (:func:`control.share.split_concurrency`).

Writes that nothing waits for (attempt rows, non-terminal statuses, audit events) go through a
background :class:`~executors.store.BatchWriter`; terminal statuses are written in one transaction per
cycle before the queue entry is acknowledged, because releasing dependents needs to know which
statuses took effect. A crash can lose buffered attempt rows (at most ``max_delay_s`` worth), never a
task: its queue entry is acknowledged only after its terminal status is stored.
"""

from __future__ import annotations

import gc
import heapq
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from autotune.config import AutotuneConfig
from autotune.domain import Task
from control.priority import priority_class, priority_score
from control.retry import ErrorKind, retry_delay_s, should_retry
from control.share import split_concurrency
from executors.intake import Submitter, validate_submission
from executors.metrics import ClusterMetrics
from executors.pool import AttemptResult, ExecutorPool, WorkItem
from executors.queue import Delivery, QueueError, TaskQueue
from executors.store import AttemptRecord, AuditEvent, BatchWriter, TaskRecord, TaskStore


def freeze_gc() -> int:
    """Exempt every object alive now from the cyclic garbage collector's full collections
    (:func:`gc.freeze`, after one last :func:`gc.collect`); returns how many objects that is.

    For a driver process, once it has started (Ray, the store, the policy, the cluster). The task
    loop creates and drops tens of objects per task, which sets off a full collection every few
    thousand tasks, and a full collection walks every live object of the process (Ray's alone are
    about 100,000): a fifth or so of the driver's time at 10,000 tasks/s here. Frozen objects are
    never collected as cyclic garbage, so call it once, when what is alive is what stays alive.
    Process-wide: a library does not call it on its own."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


# what a task's resource fit is scored against (the executors' per-task headroom)
CPU_FREE, MEMORY_MB_FREE = 4.0, 4096.0
_TASK_RESOURCE_DEFAULTS = tuple(Task.model_fields[f].default for f in ("cpu", "memory_mb", "historical_success_rate"))


def score_task(deadline_s: float | None, cpu: float, memory_mb: float, success_rate: float, now_s: float) -> float:
    """The dynamic priority score of a task now (:func:`control.priority.priority_score`), as
    accepted tasks are scored at submission and queued tasks again as their deadline nears."""
    return priority_score(deadline_s=deadline_s, now_s=now_s, cpu_required=cpu, memory_mb_required=memory_mb,
                          cpu_free=CPU_FREE, memory_mb_free=MEMORY_MB_FREE, historical_success_rate=success_rate)


def accept_submission(cfg: AutotuneConfig, store: TaskStore, raw_tasks: Sequence[Any], submitter: Submitter,
                      now_s: float) -> tuple[list[Any], list[TaskRecord], dict[str, str]]:
    """Validate a task set whole and store it (status ``queued``, priority scored now); returns the
    tasks, their records and the statuses of dependencies outside the set. Raises SubmissionError
    and writes nothing if any task is refused. The cluster's ``submit`` and other intakes (the
    natural-language one) share it, so a task is accepted by one definition."""
    tenant = submitter.tenant
    in_set = {t.get("id") for t in raw_tasks if isinstance(t, dict)}
    referenced = {d for t in raw_tasks if isinstance(t, dict) for d in t.get("dependencies", ()) or ()}
    known = {}
    for dep in referenced - in_set:
        rec = store.get_task(tenant, dep)
        if rec is not None:
            known[dep] = rec.status
    tasks = validate_submission(raw_tasks, submitter, cfg, known_ids=known)
    # the score depends on nothing else of a task, and now_s is the same for the whole set
    scores: dict[tuple[float | None, float, float, float], float] = {}
    records = []
    for t in tasks:
        key = (t.deadline_s, t.cpu, t.memory_mb, t.historical_success_rate)
        score = scores.get(key)
        if score is None:
            score = scores[key] = score_task(t.deadline_s, t.cpu, t.memory_mb, t.historical_success_rate, now_s)
        records.append(TaskRecord(tenant, t.id, t.type, "queued", score, t.deadline_s, dict(t.payload),
                                  tuple(t.dependencies), submitter.user, now_s, now_s))
    store.insert_tasks(records)  # durable before anything can run
    return tasks, records, known


class TaskCluster:
    """Submission, the dispatch loop and settlement for every tenant of one cluster.

    Arguments:
        queue_for / pool_for: open a tenant's live queue / executor pool (called once per tenant).
        concurrency: total slots to start with, split among tenants with work.
        writer: the batch writer in front of ``store`` (one is made if not given; :meth:`close`
            flushes it).
        rebalance_every_s: how often the split among tenants follows their demand.
        rescore_every_s: how often queued tasks with a deadline are scored again (their class only
            rises: urgency grows as the deadline nears).
    """

    def __init__(self, cfg: AutotuneConfig, store: TaskStore, queue_for: Callable[[str], TaskQueue],
                 pool_for: Callable[[str], ExecutorPool], *, concurrency: int | None = None,
                 metrics: ClusterMetrics | None = None, writer: BatchWriter | None = None,
                 consumer: str = "driver-0", clock: Callable[[], float] = time.time, seed: int = 0,
                 rebalance_every_s: float = 1.0, rescore_every_s: float = 5.0) -> None:
        self.cfg = cfg
        self.store = store
        self.writer = writer if writer is not None else BatchWriter(store)
        self._own_writer = writer is None
        self.queue_for = queue_for
        self.pool_for = pool_for
        self.queues: dict[str, TaskQueue] = {}
        self.pools: dict[str, ExecutorPool] = {}
        self.metrics = metrics
        self.consumer = consumer
        self.clock = clock
        self.rng = random.Random(seed)
        self.target = cfg.cluster.min_concurrency if concurrency is None else int(concurrency)
        self.rebalance_every_s = rebalance_every_s
        self._last_rebalance = -float("inf")
        self.waiting: dict[tuple[str, str], set[str]] = {}  # (tenant, task) -> unfinished dependencies
        self.specs: dict[tuple[str, str], tuple[str, int, dict]] = {}  # waiting task -> (type, class, payload)
        self.dependents: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.deliveries: dict[tuple[str, str], Delivery] = {}
        self.retry_heap: list[tuple[float, str, str, int, str, dict]] = []
        self.types: dict[tuple[str, str], str] = {}
        self.created: dict[tuple[str, str], float] = {}
        self.demand: dict[str, int] = defaultdict(int)  # tasks queued, retrying or running, per tenant
        # dynamic priority: a queued task with a deadline is scored again every rescore_every_s and
        # moved to a more urgent class when its deadline comes near
        self.rescore_every_s = rescore_every_s
        self._last_rescore = self.clock()
        self.deadlines: dict[tuple[str, str], tuple[float, float, float, float]] = {}  # deadline, cpu, mem, success
        self.entries: dict[tuple[str, str], tuple[str, int]] = {}  # waiting in the queue: message id, class

    # -- tenants -----------------------------------------------------------------------------
    def open_tenant(self, tenant: str) -> TaskQueue:
        """The tenant's queue, opening it and starting its executors the first time."""
        return self._open(tenant)

    def _open(self, tenant: str) -> TaskQueue:
        if tenant not in self.queues:
            self.queues[tenant] = self.queue_for(tenant)
            self.pools[tenant] = self.pool_for(tenant)
            self._rebalance(force=True)
        return self.queues[tenant]

    def set_concurrency(self, total: int) -> None:
        """The control plane's decision: ``total`` slots over all tenants' executors."""
        if total < 0:
            raise ValueError(f"concurrency must be >= 0, got {total}")
        self.target = int(total)
        self._rebalance(force=True)

    def _rebalance(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.pools or (not force and now - self._last_rebalance < self.rebalance_every_s):
            return
        self._last_rebalance = now
        if len(self.pools) == 1:
            shares = {next(iter(self.pools)): self.target}
        else:
            shares = split_concurrency(self.target, {t: self.demand[t] for t in self.pools},
                                       floor_slots=min(self.cfg.cluster.slots_per_replica, self.target))
        for tenant, slots in shares.items():
            if self.pools[tenant].target != slots:
                self.pools[tenant].set_concurrency(slots)

    @property
    def actual_concurrency(self) -> int:
        return sum(p.actual_concurrency for p in self.pools.values())

    @property
    def in_flight(self) -> int:
        return sum(p.in_flight for p in self.pools.values())

    # -- intake ------------------------------------------------------------------------------
    def submit(self, raw_tasks: Sequence[Any], submitter: Submitter) -> list[str]:
        """Accept a task set whole, or raise SubmissionError and write nothing."""
        tenant = submitter.tenant
        now = self.clock()
        tasks, records, known = accept_submission(self.cfg, self.store, raw_tasks, submitter, now)
        queue = self._open(tenant)
        self.writer.add_audit([AuditEvent(now, tenant, submitter.user, "submit", t.id, {"type": t.type})
                               for t in tasks])
        ready = []
        types, created, metrics = self.types, self.created, self.metrics
        classes: dict[float, int] = {}
        for t, rec in zip(tasks, records):
            key = (tenant, t.id)
            types[key] = t.type
            created[key] = now
            if metrics is not None:
                metrics.observe_submitted(tenant, t.type)
            if t.deadline_s is not None:
                self.deadlines[key] = (t.deadline_s, t.cpu, t.memory_mb, t.historical_success_rate)
            cls_ = classes.get(rec.priority)
            if cls_ is None:
                cls_ = classes[rec.priority] = priority_class(rec.priority)
            if t.dependencies:
                if any(known.get(d) == "failed" for d in t.dependencies):
                    self._finish(tenant, t.id, "failed", now, error="a dependency failed")
                    continue
                pending = {d for d in t.dependencies if known.get(d) != "succeeded"}
                for d in pending:
                    self.dependents[(tenant, d)].add(t.id)
                if pending:
                    self.waiting[key] = pending
                    self.specs[key] = (t.type, cls_, dict(t.payload))
                    continue
            ready.append((t.id, cls_, {"type": t.type, "attempt": 0, **t.payload}))
        if ready:
            self._track(tenant, ready, queue.enqueue_many(ready))
            self.demand[tenant] += len(ready)
        return [t.id for t in tasks]

    def _track(self, tenant: str, items: Sequence[tuple[str, int, dict]], message_ids: Sequence[str]) -> None:
        """Remember where the queued tasks with a deadline wait, for :meth:`rescore`."""
        if not self.deadlines:
            return
        for (task_id, cls_, _), mid in zip(items, message_ids):
            if (tenant, task_id) in self.deadlines:
                self.entries[(tenant, task_id)] = (mid, cls_)

    def rescore(self, now: float | None = None) -> int:
        """Score every queued task with a deadline again and move those whose class rose (the
        deadline came near) to the more urgent class; returns how many moved. A task claimed in the
        meantime stays where it is."""
        now = self.clock() if now is None else now
        moves: dict[str, list[tuple[str, str, int, int]]] = defaultdict(list)
        for key, (mid, cls_) in self.entries.items():
            deadline_s, cpu, memory_mb, success = self.deadlines[key]
            new = priority_class(score_task(deadline_s, cpu, memory_mb, success, now))
            if new < cls_:
                moves[key[0]].append((key[1], mid, cls_, new))
        moved = 0
        for tenant, items in moves.items():
            new_ids = self._queue_call(tenant, lambda q, items=items: q.promote([(m, o, n) for _, m, o, n in items]))
            for task_id, mid, _, new in items:
                if mid in new_ids:
                    self.entries[(tenant, task_id)] = (new_ids[mid], new)
                    moved += 1
                else:
                    self.entries.pop((tenant, task_id), None)
        return moved

    # -- the loop ----------------------------------------------------------------------------
    def run_once(self, collect_timeout_s: float = 0.05) -> int:
        """One cycle: due retries, claim, dispatch, collect, settle. Returns results settled."""
        now = self.clock()
        due: dict[str, list[tuple[str, int, dict]]] = defaultdict(list)
        while self.retry_heap and self.retry_heap[0][0] <= now:
            _, tenant, task_id, attempt, ttype, payload = heapq.heappop(self.retry_heap)
            due[tenant].append((task_id, 1, {**payload, "type": ttype, "attempt": attempt}))
            self.writer.add_status(tenant, task_id, "queued", now)
        for tenant, items in due.items():
            self._queue_call(tenant, lambda q, items=items: q.enqueue_many(items))
        self._rebalance()
        if self.entries and now - self._last_rescore >= self.rescore_every_s:
            self._last_rescore = now
            self.rescore(now)
        for tenant in list(self.queues):
            pool = self.pools[tenant]
            free = pool.free_slots
            # claim in batches: a claim is a round trip (or a write transaction) whatever its size, so
            # a busy pool waits until a quarter of its slots are free; an idle one claims at once
            if free <= 0 or (pool.in_flight and free < pool.actual_concurrency // 4):
                continue
            deliveries = self._queue_call(tenant, lambda q, free=free: q.claim(self.consumer, free))
            entries = self.entries
            items = []
            for d in deliveries:
                payload = dict(d.payload)
                ttype = payload.pop("type", "order_processing")
                # a redelivery (its executor died) is a new attempt, so its record does not collide
                attempt = int(payload.pop("attempt", 0)) + max(0, d.deliveries - 1)
                self.deliveries[(tenant, d.task_id)] = d
                entries.pop((tenant, d.task_id), None)
                items.append(WorkItem(tenant, d.task_id, ttype, attempt, payload))
            if items:
                self.queues[tenant].set_status_many([(i.task_id, "running", {"attempt": str(i.attempt)})
                                                     for i in items])
                given = pool.dispatch(items)
                assert given == len(items), "claimed more than the free slots"
                if self.metrics is not None:
                    for i in items:
                        self.metrics.observe_started(tenant, i.type)
        results = []
        wait_s = collect_timeout_s
        for pool in self.pools.values():
            results.extend(pool.collect(timeout_s=wait_s))
            wait_s = 0.0  # wait once per cycle, not once per tenant
        self._settle(results)
        return len(results)

    def _queue_call(self, tenant: str, fn: Callable[[TaskQueue], Any]) -> Any:
        """Call the tenant's queue; if its store lost the queue (Redis restarted empty), rebuild
        the queue from the durable store and call again."""
        queue = self.queues[tenant]
        try:
            return fn(queue)
        except QueueError:
            if not queue.is_empty_store():
                raise
            self.rebuild_queue(tenant)
            return fn(queue)

    def _recover_lost_queues(self) -> int:
        """Rebuild every tenant's queue whose store lost it (a lost queue reads as empty, and an idle
        cluster would never find out by a failing call); returns how many tasks went back."""
        return sum(self.rebuild_queue(t) for t, q in self.queues.items() if q.is_empty_store())

    def _settle(self, results: list[AttemptResult]) -> None:
        if not results:
            return
        self.writer.add_attempts(
            AttemptRecord(r.tenant, r.task_id, r.attempt, r.executor, r.started_s, r.ended_s, r.outcome, r.error)
            for r in results)
        acks: dict[str, list[Delivery]] = defaultdict(list)
        finished: dict[str, list[tuple[str, str, str | None]]] = defaultdict(list)
        now = self.clock()
        types, deliveries, metrics = self.types, self.deliveries, self.metrics
        for r in results:
            key = (r.tenant, r.task_id)
            if metrics is not None:
                done_s = now - self.created[key] if key in self.created else None
                final = r.outcome in ("succeeded", "failed")
                metrics.observe_outcome(r.tenant, types.get(key, "order_processing"), r.outcome,
                                        done_s if final else None)
                metrics.observe_busy(max(0.0, r.ended_s - r.started_s))
            if r.outcome == "lost":  # not acknowledged: the queue delivers it again after its timeout
                deliveries.pop(key, None)
                continue
            delivery = deliveries.pop(key, None)
            if delivery is not None:
                acks[r.tenant].append(delivery)
            if r.outcome == "retrying":
                ttype = types.get(key, "order_processing")
                policy = self.cfg.tasks[ttype].retry_policy if ttype in self.cfg.tasks else None
                kind = ErrorKind(r.error_kind or "transient")
                if policy is not None and should_retry(r.attempt, kind, policy):
                    delay = retry_delay_s(r.attempt, self.rng.random(), policy)
                    payload = dict(delivery.payload) if delivery is not None else {}
                    payload.pop("type", None)
                    payload.pop("attempt", None)
                    heapq.heappush(self.retry_heap, (now + delay, r.tenant, r.task_id, r.attempt + 1, ttype, payload))
                    self.writer.add_status(r.tenant, r.task_id, "retrying", now, error=r.error)
                else:
                    finished[r.tenant].append((r.task_id, "failed", r.error))
            else:
                finished[r.tenant].append((r.task_id, r.outcome, r.error))
        # terminal statuses in one transaction per tenant, before the ack (a commit per task would
        # cap throughput; an ack before the commit could lose the task in a crash)
        for tenant, items in finished.items():
            changed = self.store.finish_many(tenant, items, now)
            self.demand[tenant] = max(0, self.demand[tenant] - len(items))
            dependents = self.dependents
            for task_id, status, _ in items:
                key = (tenant, task_id)
                types.pop(key, None)
                self.created.pop(key, None)
                self.deadlines.pop(key, None)
                if task_id in changed and key in dependents:  # else no task waits for it
                    self._release_dependents(tenant, task_id, status, now)
        for tenant, ds in acks.items():
            self._queue_call(tenant, lambda q, ds=ds: q.ack(ds))

    def _finish(self, tenant: str, task_id: str, status: str, now: float, error: str | None = None) -> None:
        if not self.store.update_status(tenant, task_id, status, now, error=error):
            return  # already terminal: exactly one terminal record per task
        key = (tenant, task_id)
        if self.metrics is not None:  # ended without an attempt (a dependency failed): still an outcome
            created = self.created.get(key)
            self.metrics.observe_outcome(tenant, self.types.get(key, "order_processing"), status,
                                         None if created is None else now - created)
        self.types.pop(key, None)
        self.created.pop(key, None)
        self.deadlines.pop(key, None)
        self.entries.pop(key, None)
        self._release_dependents(tenant, task_id, status, now)

    def _release_dependents(self, tenant: str, task_id: str, status: str, now: float) -> None:
        ready = []
        for dep in sorted(self.dependents.pop((tenant, task_id), ())):
            key = (tenant, dep)
            if status == "failed":
                self.waiting.pop(key, None)
                self.specs.pop(key, None)
                self._finish(tenant, dep, "failed", now, error=f"dependency {task_id!r} failed")
                continue
            pending = self.waiting.get(key)
            if pending is None:
                continue
            pending.discard(task_id)
            if not pending:
                del self.waiting[key]
                ttype, cls_, payload = self.specs.pop(key)
                ready.append((dep, cls_, {"type": ttype, "attempt": 0, **payload}))
        if ready:
            self._track(tenant, ready, self._queue_call(tenant, lambda q: q.enqueue_many(ready)))
            self.demand[tenant] += len(ready)

    def rebuild_queue(self, tenant: str) -> int:
        """The live queue lost its data (Redis restarted empty): re-queue every unfinished, unblocked
        task from the store.

        Tasks running right now are re-queued too; a second run of one is settled by the store (its
        attempt is a new row, its terminal status is written once).
        """
        self.writer.flush()  # attempt rows first: attempt numbers continue from the store
        due = {(t, k) for _, t, k, *_ in self.retry_heap}
        unfinished = [r for r in self.store.tasks_with_status(tenant, ["queued", "running", "retrying"])
                      if (tenant, r.task_id) not in self.waiting and (tenant, r.task_id) not in due]
        # attempt numbers continue from the store, so retries are not reset and records do not collide
        next_attempt = self.store.next_attempts(tenant, [r.task_id for r in unfinished])
        now = self.clock()
        items = [(r.task_id, priority_class(self._score_now(tenant, r, now)),
                  {"type": r.type, "attempt": next_attempt[r.task_id], **r.payload}) for r in unfinished]
        n = self.queues[tenant].rebuild(items)
        for key in [k for k in self.entries if k[0] == tenant]:
            del self.entries[key]  # their entries are gone; rebuilt ones carry today's class
        self.writer.add_audit([AuditEvent(self.clock(), tenant, "system", "queue_rebuilt", tenant, {"tasks": n})])
        return n

    def _score_now(self, tenant: str, rec: TaskRecord, now: float) -> float:
        """A stored task's score now; one submitted elsewhere (its resources unknown here) is scored
        with the Task model's defaults."""
        spec = self.deadlines.get((tenant, rec.task_id))
        if spec is not None:
            return score_task(*spec, now)
        if rec.deadline_s is None:
            return rec.priority
        return score_task(rec.deadline_s, *_TASK_RESOURCE_DEFAULTS, now)

    # -- gauges ------------------------------------------------------------------------------
    def observe(self, elapsed_s: float = 0.0) -> None:
        """Refresh the exporter's levels (backlog, in flight, concurrency, executors); a live
        loop calls this once per scrape period, not once per cycle (it reads the queues)."""
        if self.metrics is None:
            return
        m = self.metrics
        m.observe_interval(elapsed_s, serving_slots=self.actual_concurrency, warming_slots=0,
                           target_slots=self.target, running_slots=self.in_flight)
        for tenant, queue in self.queues.items():
            m.observe_backlog(tenant, self._queue_call(tenant, lambda q: q.backlog()))
            m.observe_retrying(tenant, sum(1 for _, t, *_ in self.retry_heap if t == tenant))
            m.observe_in_flight(tenant, self.pools[tenant].in_flight)
        m.observe_process()

    def observe_executors(self, timeout_s: float = 1.0) -> None:
        """Every executor actor's CPU and memory into the exporter (one Ray round trip per tenant)."""
        if self.metrics is None:
            return
        usage = {}
        for pool in self.pools.values():
            usage.update(pool.resource_usage(timeout_s=timeout_s))
        self.metrics.observe_executors(usage)

    def run_until_idle(self, timeout_s: float = 60.0) -> bool:
        """Run cycles until nothing is queued, running, waiting or due for retry (tests, demos)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.run_once()
            busy = (self.in_flight or self.retry_heap or self.waiting or self._recover_lost_queues()
                    or any(self._queue_call(t, lambda q: sum(q.backlog()) + q.in_flight()) for t in self.queues))
            if not busy:
                self.writer.flush()
                return True
        return False

    def close(self) -> None:
        """Write what is buffered and stop the executors (the queues and the store stay)."""
        try:
            if self._own_writer:
                self.writer.close()
            else:
                self.writer.flush()
        finally:
            for pool in self.pools.values():
                pool.shutdown()
