"""The task cluster: intake, queue, executors and store wired together, durable end to end.

:class:`TaskCluster` is the thin loop around the parts. The store is the source of truth (as in
Temporal: every fact needed to continue is written before it is acted on); the live queue is a
doorbell that names a task and the attempt it was enqueued for (:mod:`executors.envelope`).

- ``submit`` validates a whole submission (:mod:`executors.intake`) and only then writes it: the
  store first (status ``queued``, or ``waiting`` for a task whose dependencies have not all
  succeeded, with its edges), then the queue entries of the tasks that are ready.
- ``run_once`` claims work for the free executor slots, reads the claimed tasks' records from the
  store (type, payload, status and attempt counter come only from there: a payload cannot override
  them), decides per entry (:func:`executors.envelope.check_delivery`: run, drop a stale duplicate,
  or dead-letter an entry that cannot run, failing only that task), dispatches in batches, and
  settles the results: the attempt rows, the terminal statuses and the scheduled retries (their due
  time and attempt counter) in ONE transaction (:meth:`executors.store.TaskStore.settle`), and only
  then acknowledges the entries. A retry comes due from the driver's heap, which a new driver
  rebuilds from the store; dependents are queued (store first, then the entry) when their last
  dependency succeeds, and fail when one fails.
- an executor that dies takes its attempts with it: they come back ``lost`` and are retried like a
  transient failure (same policy), at once rather than after the queue's visibility timeout. The
  visibility of entries still running (a long task) or held back by a quota is extended, so a live
  task is never handed out twice.
- **outages**: a Redis or database that cannot be reached (:class:`~executors.queue.QueueUnavailable`,
  :class:`~executors.store.StoreUnavailable`) does not end the loop. The cluster stops claiming,
  keeps collecting the running tasks' results in memory (bounded by what was running), checks the
  servers with the shared backoff (``cluster.outage_retry``), and when they answer again settles
  what it holds and reconciles the queue with the store (:meth:`recover`; a Redis that came back
  empty is rebuilt). Only an outage longer than ``cluster.outage_budget_s`` raises
  :class:`OutageError`.
- **recovery**: :meth:`recover` makes the live state match the store: queued or running tasks
  without an entry are enqueued, retrying ones go back on the heap at their due time, waiting ones
  get their dependency edges back (and are released or failed if their dependencies finished
  meanwhile). A new driver on the same store and queue calls :meth:`resume`, which also hands back
  the dead driver's claimed entries at once.

Delivery is at least once: a task runs again only when a crash (of an executor or of the driver)
interrupted its attempt before the attempt's outcome was stored; it never has two terminal records
(the store refuses a second terminal status, and an entry whose task is finished is dropped unrun).

Tenants are isolated all the way down: each has its own queue (key prefix in Redis, tenant column in
SQL), its rows carry its tenant, and its tasks run on its own executor pool in its own Ray namespace.
The one concurrency the control plane tunes (:meth:`TaskCluster.set_concurrency`) is split among the
tenants' pools by weighted max-min fairness within each tenant's quota (:func:`control.share.split_concurrency`,
``quotas``), and a tenant's sandboxed (untrusted) tasks together stay within its quota's CPU and
memory: one that does not fit waits, claimed and extended, until running ones finish.
"""

from __future__ import annotations

import gc
import heapq
import logging
import random
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import methodcaller
from typing import Any

from control.share import split_concurrency
from core.config import AutotuneConfig
from core.domain import PriorityInputs, task_priority
from core.priority import priority_class
from core.retry import ErrorKind, retry_delay_s, should_retry
from executors.envelope import Drop, Reject, Run, check_delivery, entry
from executors.intake import Submitter, validate_submission
from executors.metrics import ClusterMetrics
from executors.pool import AttemptResult, ExecutorPool, WorkItem
from executors.queue_types import Delivery, QueueError, QueueUnavailable, TaskQueue
from executors.store import (
    TERMINAL,
    AttemptRecord,
    AuditEvent,
    BatchWriter,
    ClaimView,
    DeadLetter,
    StoreUnavailable,
    TaskRecord,
)
from executors.store.protocol import LifecycleStore

log = logging.getLogger(__name__)

Unavailable = (StoreUnavailable, QueueUnavailable)


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
RETRY_CLASS = 1  # a retry goes back at the normal class
WRITTEN_CACHE_MAX = 200_000  # records kept for first deliveries (beyond, they are read back)


def score_task(task: PriorityInputs, now_s: float) -> float:
    """The dynamic priority score of a task now (:func:`core.domain.task_priority` against the
    executors' headroom), as accepted tasks are scored at submission and queued tasks again as
    their deadline nears."""
    return task_priority(task, now_s, CPU_FREE, MEMORY_MB_FREE)


def accept_submission(
    cfg: AutotuneConfig,
    store: LifecycleStore,
    raw_tasks: Sequence[Any],
    submitter: Submitter,
    now_s: float,
    *,
    run_id: str | None = None,
) -> tuple[list[Any], list[TaskRecord], dict[str, str]]:
    """Validate a task set whole and store it (status ``queued``, or ``waiting`` while a dependency
    has not succeeded; priority scored now); returns the tasks, their records and the statuses of
    dependencies outside the set. Raises SubmissionError and writes nothing if any task is refused.
    The cluster's ``submit`` and other intakes (the natural-language one) share it, so a task is
    accepted by one definition."""
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
    scores: dict[PriorityInputs, float] = {}
    records = []
    for t in tasks:
        key = PriorityInputs.of(t)
        score = scores.get(key)
        if score is None:
            score = scores[key] = score_task(key, now_s)
        status = "waiting" if any(known.get(d) != "succeeded" for d in t.dependencies) else "queued"
        records.append(
            TaskRecord(
                tenant,
                t.id,
                t.type,
                status,
                score,
                t.deadline_s,
                dict(t.payload),
                tuple(t.dependencies),
                submitter.user,
                now_s,
                now_s,
                run_id=run_id,
            )
        )
    store.insert_tasks(records)  # durable before anything can run
    return tasks, records, known


class OutageError(RuntimeError):
    """Redis or the database stayed unreachable longer than the outage budget; the message names the
    server, how long and the last error."""


@dataclass
class Outage:
    """An outage being waited out: what is down, since when, and when to look again."""

    what: str
    since_s: float
    error: str
    probes: int = 0
    next_probe_s: float = 0.0

    def describe(self, now_s: float) -> str:
        return f"{self.what} unreachable for {now_s - self.since_s:.0f} s ({self.error})"


class _Held:
    """A claimed entry this driver is working on (running, or held back by a quota)."""

    __slots__ = ("cost", "created_s", "delivery", "touched_s", "type")

    def __init__(
        self, delivery: Delivery, ttype: str, created_s: float, cost: tuple[float, int] | None, touched_s: float
    ) -> None:
        self.delivery = delivery
        self.type = ttype
        self.created_s = created_s
        self.cost = cost  # (cores, MB) of a sandboxed task, counted against its tenant's quota
        self.touched_s = touched_s  # when its visibility timeout last (re)started


class TaskCluster:
    """Submission, the dispatch loop and settlement for every tenant of one cluster.

    Arguments:
        queue_for / pool_for: open a tenant's live queue / executor pool (called once per tenant).
        concurrency: total slots to start with, split among tenants with work.
        writer: the batch writer in front of ``store`` for audit events (one is made if not given;
            :meth:`close` flushes it).
        run_id: recorded with every task this cluster accepts (a run's report counts its own).
        rebalance_every_s: how often the split among tenants follows their demand.
        rescore_every_s: how often queued tasks with a deadline are scored again (their class only
            rises: urgency grows as the deadline nears).
        outage_budget_s: how long an unreachable Redis or database is waited out (default
            ``cluster.outage_budget_s``).
    """

    def __init__(
        self,
        cfg: AutotuneConfig,
        store: LifecycleStore,
        queue_for: Callable[[str], TaskQueue],
        pool_for: Callable[[str], ExecutorPool],
        *,
        concurrency: int | None = None,
        metrics: ClusterMetrics | None = None,
        writer: BatchWriter | None = None,
        consumer: str = "driver-0",
        clock: Callable[[], float] = time.time,
        seed: int = 0,
        rebalance_every_s: float = 1.0,
        rescore_every_s: float = 5.0,
        run_id: str | None = None,
        outage_budget_s: float | None = None,
    ) -> None:
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
        self.run_id = run_id
        self.target = cfg.cluster.min_concurrency if concurrency is None else int(concurrency)
        self.rebalance_every_s = rebalance_every_s
        self._last_rebalance = -float("inf")
        self.outage_budget_s = cfg.cluster.outage_budget_s if outage_budget_s is None else float(outage_budget_s)
        # dependency state (rebuilt from the store's edges by recover())
        self.waiting: dict[tuple[str, str], set[str]] = {}  # (tenant, task) -> unfinished dependencies
        self.dependents: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.classes: dict[tuple[str, str], int] = {}  # a waiting task's priority class, for its release
        # work this driver holds: running on an executor, or held back by its tenant's sandbox quota
        self.running: dict[tuple[str, str], _Held] = {}
        self.parked: dict[str, deque[tuple[WorkItem, _Held]]] = defaultdict(deque)
        self._parked_keys: set[tuple[str, str]] = set()
        self.sandbox_use: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # tenant -> [cores, MB]
        self.retry_heap: list[tuple[float, str, str, int]] = []  # (due, tenant, task, next attempt)
        self.demand: dict[str, int] = defaultdict(int)  # tasks queued, retrying or running, per tenant
        # dynamic priority: a queued task with a deadline is scored again every rescore_every_s and
        # moved to a more urgent class when its deadline comes near
        self.rescore_every_s = rescore_every_s
        self._last_rescore = self.clock()
        self.deadlines: dict[tuple[str, str], PriorityInputs] = {}
        self.entries: dict[tuple[str, str], tuple[str, int]] = {}  # waiting in the queue: message id, class
        # outages
        self.outage: Outage | None = None
        self._unsettled: list[AttemptResult] = []  # results collected while the store could not take them
        self._pending_acks: dict[str, list[Delivery]] = defaultdict(list)
        self._next_extend_s = -float("inf")
        self.counts: Counter[str] = Counter()  # dropped, dead_letters, outages, recovered, ...
        # the records this driver itself just wrote of tasks it enqueued (write-through): a first
        # delivery of one is checked against this copy instead of a read of the same row back
        self._written: dict[tuple[str, str], ClaimView] = {}

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
        quotas = {t: self.cfg.quotas.for_tenant(t) for t in self.pools}
        if len(self.pools) == 1 and all(q.max_slots is None for q in quotas.values()):
            shares = {next(iter(self.pools)): self.target}
        else:
            shares = split_concurrency(
                self.target,
                {t: self.demand[t] for t in self.pools},
                floor_slots=min(self.cfg.cluster.slots_per_replica, self.target),
                weights={t: q.slot_weight for t, q in quotas.items()},
                caps={t: q.max_slots for t, q in quotas.items()},
            )
        for tenant, slots in shares.items():
            if self.pools[tenant].target != slots:
                self.pools[tenant].set_concurrency(slots)

    @property
    def actual_concurrency(self) -> int:
        return sum(p.actual_concurrency for p in self.pools.values())

    @property
    def in_flight(self) -> int:
        return sum(p.in_flight for p in self.pools.values())

    @property
    def held_back(self) -> int:
        """Claimed tasks waiting for their tenant's sandbox quota."""
        return len(self._parked_keys)

    # -- intake ------------------------------------------------------------------------------
    def submit(self, raw_tasks: Sequence[Any], submitter: Submitter) -> list[str]:
        """Accept a task set whole, or raise SubmissionError and write nothing. Raises
        :class:`~executors.store.StoreUnavailable` if the store cannot take it (nothing accepted);
        once stored, the tasks are accepted even if the queue is down (they are enqueued when it is
        back)."""
        tenant = submitter.tenant
        now = self.clock()
        tasks, records, known = accept_submission(self.cfg, self.store, raw_tasks, submitter, now, run_id=self.run_id)
        self._open(tenant)
        self.writer.add_audit(
            [AuditEvent(now, tenant, submitter.user, "submit", t.id, {"type": t.type}) for t in tasks]
        )
        ready: list[tuple[str, int, dict]] = []
        doomed: dict[str, str] = {}  # task -> the failed dependency that dooms it
        metrics = self.metrics
        classes: dict[float, int] = {}
        for t, rec in zip(tasks, records):
            key = (tenant, t.id)
            if metrics is not None:
                metrics.observe_submitted(tenant, t.type)
            if t.deadline_s is not None:
                self.deadlines[key] = PriorityInputs.of(t)
            cls_ = classes.get(rec.priority)
            if cls_ is None:
                cls_ = classes[rec.priority] = priority_class(rec.priority)
            if t.dependencies:
                bad = next((d for d in t.dependencies if known.get(d) == "failed" or d in doomed), None)
                if bad is not None:  # tasks come in dependency order: a doomed one's dependents follow it
                    doomed[t.id] = bad
                    continue
                pending = {d for d in t.dependencies if known.get(d) != "succeeded"}
                if pending:
                    for d in pending:
                        self.dependents[(tenant, d)].add(t.id)
                    self.waiting[key] = pending
                    self.classes[key] = cls_
                    continue
            ready.append((t.id, cls_, entry(0)))
            if len(self._written) < WRITTEN_CACHE_MAX:
                self._written[key] = ClaimView(
                    t.id, rec.type, rec.status, 0, rec.payload, rec.deadline_s, rec.created_s
                )
        if doomed:
            failed: list[tuple[str, str, str | None]] = [
                (tid, "failed", f"dependency {dep!r} failed") for tid, dep in doomed.items()
            ]
            self._fail_waiting(tenant, failed, now)
        if ready:
            idle_before = self.demand[tenant] == 0
            self.demand[tenant] += len(ready)
            if idle_before:
                self._rebalance(force=True)  # a tenant with work again gets its share now, not at the next tick
            try:
                self._enqueue(tenant, ready)
            except QueueUnavailable as err:  # stored as queued: enqueued by recover() once the queue is back
                self._begin_outage(err)
        return [t.id for t in tasks]

    def _enqueue(self, tenant: str, items: Sequence[tuple[str, int, dict]]) -> None:
        ids = self._queue_call(tenant, lambda q: q.enqueue_many(items))
        self._track(tenant, items, ids)

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
            new = priority_class(score_task(self.deadlines[key], now))
            if new < cls_:
                moves[key[0]].append((key[1], mid, cls_, new))
        moved = 0
        for tenant, items in moves.items():
            new_ids = self._queue_call(tenant, methodcaller("promote", [(m, o, n) for _, m, o, n in items]))
            for task_id, mid, _, new in items:
                if mid in new_ids:
                    self.entries[(tenant, task_id)] = (new_ids[mid], new)
                    moved += 1
                else:
                    self.entries.pop((tenant, task_id), None)
        return moved

    # -- the loop ----------------------------------------------------------------------------
    def run_once(self, collect_timeout_s: float = 0.05) -> int:
        """One cycle: due retries, claim, dispatch, collect, settle; while a server is unreachable,
        collect and check whether it is back. Returns results collected. Raises
        :class:`OutageError` once an outage outlasts the budget."""
        now = self.clock()
        if self.outage is not None:
            return self._run_during_outage(now, collect_timeout_s)
        try:
            self._due_retries(now)
            self._rebalance()
            if self.entries and now - self._last_rescore >= self.rescore_every_s:
                self._last_rescore = now
                self.rescore(now)
            self._extend_visibility(time.monotonic())
            for tenant in list(self.queues):
                self._dispatch(tenant)
        except Unavailable as err:
            self._begin_outage(err)
        results = self._collect(collect_timeout_s)
        if self.outage is not None:
            self._unsettled.extend(results)
            return len(results)
        try:
            self._settle(results)
        except Unavailable as err:
            self._begin_outage(err)
        return len(results)

    def _collect(self, timeout_s: float) -> list[AttemptResult]:
        results: list[AttemptResult] = []
        wait_s = timeout_s
        for pool in self.pools.values():
            results.extend(pool.collect(timeout_s=wait_s))
            wait_s = 0.0  # wait once per cycle, not once per tenant
        return results

    def _dispatch(self, tenant: str) -> None:
        pool = self.pools[tenant]
        if self.parked.get(tenant):
            self._dispatch_parked(tenant)
        free = pool.free_slots
        # claim in batches: a claim is a round trip (or a write transaction) whatever its size, so
        # a busy pool waits until a quarter of its slots are free; an idle one claims at once
        if free <= 0 or (pool.in_flight and free < pool.actual_concurrency // 4):
            return
        # entries held back by the sandbox quota do not use slots; do not hoard more than a pool's worth
        count = min(free, max(0, max(8, pool.actual_concurrency) - len(self.parked.get(tenant, ()))))
        if count <= 0:
            return
        deliveries = self._queue_call(tenant, lambda q: q.claim(self.consumer, count))
        if not deliveries:
            return
        # a first delivery of an entry this driver enqueued at submission is checked against the record
        # it wrote then (the same row, unchanged since: nothing else moves a queued task); any other
        # (a redelivery, a retry, a task submitted elsewhere) is read from the store
        written, views = self._written, {}
        unknown = []
        for d in deliveries:
            if d.error is not None:
                continue
            view = (
                written.pop((tenant, d.task_id), None) if d.deliveries == 1 and d.payload.get("attempt") == 0 else None
            )
            if view is not None:
                views[d.task_id] = view
            else:
                unknown.append(d.task_id)
        try:
            if unknown:
                views.update(self.store.claim_view(tenant, unknown))
        except StoreUnavailable:
            try:  # hand them back: whoever claims them next need not wait out their visibility timeout
                self.queues[tenant].release(deliveries)
            except QueueError:
                pass
            raise
        now, touched = self.clock(), time.monotonic()
        items: list[WorkItem] = []
        drops: list[Delivery] = []
        letters: list[DeadLetter] = []
        fails: list[tuple[str, str]] = []
        quota = self.cfg.quotas.for_tenant(tenant)
        for d in deliveries:
            key = (tenant, d.task_id)
            held = self.running.get(key)
            if held is not None or key in self._parked_keys:
                if held is None or held.delivery.message_id != d.message_id:
                    drops.append(d)  # a second entry of a task this driver already works on
                    if d.error is not None:  # recorded all the same; the attempt running is not its to fail
                        letters.append(
                            DeadLetter(
                                now,
                                tenant,
                                d.task_id,
                                d.message_id,
                                f"{d.error} (a second entry of a task running here)",
                                _entry_text(d),
                            )
                        )
                continue  # else its own entry, handed out again: the attempt running acks it
            verdict = check_delivery(d, views.get(d.task_id), self.cfg.tasks)
            if isinstance(verdict, Run):
                view = views[d.task_id]
                tcfg = self.cfg.tasks[view.type]
                cost = (tcfg.cpu_rate_limit, tcfg.memory_limit_mb) if tcfg.untrusted else None
                item = WorkItem(tenant, d.task_id, view.type, verdict.attempt, view.payload)
                h = _Held(d, view.type, view.created_s, cost, touched)
                self.entries.pop(key, None)
                if cost is not None and not self._admit(tenant, cost, quota):
                    self.parked[tenant].append((item, h))
                    self._parked_keys.add(key)
                    continue
                self._take(tenant, key, h)
                items.append(item)
            elif isinstance(verdict, Drop):
                drops.append(d)
                self.counts["dropped"] += 1
                log.info("tenant %s: dropped entry of task %r unrun: %s", tenant, d.task_id, verdict.reason)
            else:
                assert isinstance(verdict, Reject)
                letters.append(DeadLetter(now, tenant, d.task_id, d.message_id, verdict.reason, _entry_text(d)))
                drops.append(d)
                if verdict.fail_task:
                    fails.append((d.task_id, f"dead-lettered: {verdict.reason}"))
        self._start(tenant, items)  # first: what is taken must run, whatever fails below
        if letters:
            self._dead_letter(tenant, letters, fails, now)
        if drops:
            self._ack(tenant, drops)

    def _start(self, tenant: str, items: list[WorkItem]) -> None:
        if not items:
            return
        given = self.pools[tenant].dispatch(items)
        assert given == len(items), "claimed more than the free slots"
        if self.metrics is not None:
            for i in items:
                self.metrics.observe_started(tenant, i.type)
        # the live status (Redis's, for dashboards); the store's record is what recovery reads
        self.queues[tenant].set_status_many([(i.task_id, "running", {"attempt": str(i.attempt)}) for i in items])

    def _admit(self, tenant: str, cost: tuple[float, int], quota: Any) -> bool:
        """Whether a sandboxed task of this cost fits the tenant's quota now (one always does when
        none is running, so a task larger than the quota still runs, alone)."""
        cores, mb = self.sandbox_use[tenant]
        if cores == 0 and mb == 0:
            return True
        return cores + cost[0] <= quota.sandbox_cpu + 1e-9 and mb + cost[1] <= quota.sandbox_memory_mb

    def _take(self, tenant: str, key: tuple[str, str], h: _Held) -> None:
        self.running[key] = h
        if h.cost is not None:
            use = self.sandbox_use[tenant]
            use[0] += h.cost[0]
            use[1] += h.cost[1]

    def _give_back(self, tenant: str, h: _Held) -> None:
        if h.cost is not None:
            use = self.sandbox_use[tenant]
            use[0] = max(0.0, use[0] - h.cost[0])
            use[1] = max(0.0, use[1] - h.cost[1])

    def _dispatch_parked(self, tenant: str) -> None:
        queue, pool = self.parked[tenant], self.pools[tenant]
        quota = self.cfg.quotas.for_tenant(tenant)
        items: list[WorkItem] = []
        free = pool.free_slots
        while queue and len(items) < free:
            item, h = queue[0]
            if not self._admit(tenant, h.cost or (0.0, 0), quota):
                break  # first come, first served: the head waits for room
            queue.popleft()
            key = (tenant, item.task_id)
            self._parked_keys.discard(key)
            self._take(tenant, key, h)
            items.append(item)
        self._start(tenant, items)

    def _extend_visibility(self, now_mono: float) -> None:
        """Restart the visibility timeout of entries this driver still works on, before it runs
        out (so a long task, or one waiting for its quota, is not handed out again)."""
        if now_mono < self._next_extend_s or not self.queues:
            return
        shortest = min(q.visibility_timeout_s for q in self.queues.values())
        self._next_extend_s = now_mono + shortest / 6
        due: dict[str, list[_Held]] = defaultdict(list)
        for (tenant, _), h in self.running.items():
            if now_mono - h.touched_s >= self.queues[tenant].visibility_timeout_s / 3:
                due[tenant].append(h)
        for tenant, queue in self.parked.items():
            for _, h in queue:
                if now_mono - h.touched_s >= self.queues[tenant].visibility_timeout_s / 3:
                    due[tenant].append(h)
        for tenant, held in due.items():
            self._queue_call(tenant, methodcaller("extend", self.consumer, [h.delivery for h in held]))
            for h in held:
                h.touched_s = now_mono

    def _due_retries(self, now: float) -> None:
        heap = self.retry_heap
        if not heap or heap[0][0] > now:
            return
        due: dict[str, list[tuple[float, str, str, int]]] = defaultdict(list)
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)
            due[item[1]].append(item)
        for tenant, items in due.items():
            try:  # the store first: a crash before the enqueue leaves a queued task recover() enqueues
                moved = self.store.mark_queued(tenant, [i[2] for i in items], now, ("retrying",))
            except StoreUnavailable:
                for i in items:
                    heapq.heappush(heap, i)
                raise
            batch = [(task_id, RETRY_CLASS, entry(attempt)) for _, _, task_id, attempt in items if task_id in moved]
            if batch:
                self._open(tenant)
                self._enqueue(tenant, batch)

    def _queue_call(self, tenant: str, fn: Callable[[TaskQueue], Any]) -> Any:
        """Call the tenant's queue; if its server lost the queue (Redis restarted empty), recover
        the queue from the durable store and call again. An unreachable server raises
        :class:`QueueUnavailable` (the loop waits the outage out)."""
        queue = self.queues[tenant]
        try:
            return fn(queue)
        except QueueUnavailable:
            raise
        except QueueError:
            if not queue.is_empty_store():
                raise
            self.recover(tenant)
            return fn(queue)

    def _ack(self, tenant: str, deliveries: list[Delivery]) -> None:
        if not deliveries:
            return
        queue = self.queues[tenant]
        try:
            queue.ack(deliveries)
        except QueueUnavailable:
            self._pending_acks[tenant].extend(deliveries)
            raise
        except QueueError:
            if not queue.is_empty_store():
                raise
            # the entries went with the queue; recover() rebuilds it from the store

    def _settle(self, results: list[AttemptResult]) -> None:
        if not results:
            return
        by_tenant: dict[str, list[AttemptResult]] = defaultdict(list)
        for r in results:
            by_tenant[r.tenant].append(r)
        pending = list(by_tenant.items())
        while pending:
            tenant, rs = pending.pop(0)
            try:
                self._settle_tenant(tenant, rs)
            except Unavailable:
                for _, rest in pending:  # what the servers could not take waits for them
                    self._unsettled.extend(rest)
                raise

    def _settle_tenant(self, tenant: str, rs: list[AttemptResult]) -> None:
        now = self.clock()
        running, tasks_cfg = self.running, self.cfg.tasks
        attempts: list[AttemptRecord] = []
        finished: list[tuple[str, str, str | None]] = []
        retries: list[tuple[str, int, float, str | None]] = []
        for r in rs:
            attempts.append(
                AttemptRecord(r.tenant, r.task_id, r.attempt, r.executor, r.started_s, r.ended_s, r.outcome, r.error)
            )
            if r.outcome in ("retrying", "lost"):
                held = running.get((tenant, r.task_id))
                ttype = held.type if held is not None else self.cfg.task_type
                policy = tasks_cfg[ttype].retry_policy if ttype in tasks_cfg else None
                kind = ErrorKind.TRANSIENT if r.outcome == "lost" else ErrorKind(r.error_kind or "transient")
                if policy is not None and should_retry(r.attempt, kind, policy):
                    delay = retry_delay_s(r.attempt, self.rng.random(), policy)
                    retries.append((r.task_id, r.attempt + 1, now + delay, r.error))
                else:
                    finished.append((r.task_id, "failed", r.error))
            else:
                finished.append((r.task_id, r.outcome, r.error))
        try:
            changed = self.store.settle(tenant, attempts, finished, retries, now)
        except StoreUnavailable:
            self._unsettled.extend(rs)  # kept, with their deliveries unacked, until the store is back
            raise
        # committed: only now is it safe to forget the entries
        acks = []
        metrics = self.metrics
        for r in rs:
            held = running.pop((tenant, r.task_id), None)
            if held is not None:
                acks.append(held.delivery)
                self._give_back(tenant, held)
            if metrics is not None:
                final = r.outcome in ("succeeded", "failed")
                done_s = now - held.created_s if held is not None and final else None
                metrics.observe_outcome(
                    tenant, held.type if held is not None else self.cfg.task_type, r.outcome, done_s
                )
                metrics.observe_busy(max(0.0, r.ended_s - r.started_s))
        for task_id, attempt, due_s, _ in retries:
            heapq.heappush(self.retry_heap, (due_s, tenant, task_id, attempt))
        if finished:
            self.demand[tenant] = max(0, self.demand[tenant] - len(finished))
            for task_id, _, _ in finished:
                key = (tenant, task_id)
                self.deadlines.pop(key, None)
                self.entries.pop(key, None)
        done = {tid: status for tid, status, _ in finished if tid in changed and (tenant, tid) in self.dependents}
        self._ack(tenant, acks)
        if done:
            self._release(tenant, done, now)

    def _dead_letter(self, tenant: str, letters: list[DeadLetter], fails: list[tuple[str, str]], now: float) -> None:
        changed = self.store.dead_letter(tenant, letters, fails, now)
        for task_id, _ in fails:  # its other entry, if any, must see the store's word, not the copy
            self._written.pop((tenant, task_id), None)
        self.counts["dead_letters"] += len(letters)
        for d in letters:
            log.warning("tenant %s: entry %s of task %r dead-lettered: %s", tenant, d.message_id, d.task_id, d.reason)
        self.writer.add_audit(
            [
                AuditEvent(
                    now, tenant, "system", "dead_letter", d.task_id, {"reason": d.reason, "message_id": d.message_id}
                )
                for d in letters
            ]
        )
        if self.metrics is not None:
            self.metrics.observe_dead_letters(tenant, len(letters))
        if changed:
            self.demand[tenant] = max(0, self.demand[tenant] - len(changed))
            done = {tid: "failed" for tid in changed if (tenant, tid) in self.dependents}
            if done:
                self._release(tenant, done, now)

    def _fail_waiting(self, tenant: str, failed: list[tuple[str, str, str | None]], now: float) -> None:
        """Fail tasks that never ran (a dependency failed), and their dependents in turn."""
        changed = self.store.finish_many(tenant, failed, now)
        if self.metrics is not None:
            for _ in changed:  # ended without an attempt: still an outcome
                self.metrics.observe_outcome(tenant, self.cfg.task_type, "failed", None)
        done = {tid: "failed" for tid in changed if (tenant, tid) in self.dependents}
        if done:
            self._release(tenant, done, now)

    def _release(self, tenant: str, done: dict[str, str], now: float) -> None:
        """Tasks in ``done`` ended (``task_id -> status``): queue the dependents whose last
        dependency this was (store first, then the entry), fail those of a failed one (and theirs)."""
        ready: list[str] = []
        failed: list[tuple[str, str, str | None]] = []
        stack = list(done.items())
        while stack:
            task_id, status = stack.pop()
            for dep in sorted(self.dependents.pop((tenant, task_id), ())):
                key = (tenant, dep)
                pending = self.waiting.get(key)
                if pending is None:
                    continue
                if status != "succeeded":
                    del self.waiting[key]
                    self.classes.pop(key, None)
                    failed.append((dep, "failed", f"dependency {task_id!r} failed"))
                    stack.append((dep, "failed"))
                    continue
                pending.discard(task_id)
                if not pending:
                    del self.waiting[key]
                    ready.append(dep)
        if failed:
            changed = self.store.finish_many(tenant, failed, now)
            if self.metrics is not None:
                for _ in changed:
                    self.metrics.observe_outcome(tenant, self.cfg.task_type, "failed", None)
        if ready:
            moved = self.store.mark_queued(tenant, ready, now, ("waiting",))
            items = [(tid, self.classes.pop((tenant, tid), RETRY_CLASS), entry(0)) for tid in ready if tid in moved]
            if items:
                self.demand[tenant] += len(items)
                self._enqueue(tenant, items)

    # -- outages -----------------------------------------------------------------------------
    def note_outage(self, err: BaseException) -> None:
        """A caller found a server unreachable (e.g. the store refused a submission): the cluster
        waits it out as if it had found it itself."""
        self._begin_outage(err)

    def _begin_outage(self, err: BaseException) -> None:
        now = self.clock()
        what = _server_of(err)
        if self.outage is None:
            self.outage = Outage(what, now, _first_line(err))
            self.counts["outages"] += 1
            log.warning(
                "outage: %s; dispatch stopped, waiting up to %.0f s (results of running tasks are kept)",
                self.outage.describe(now),
                self.outage_budget_s,
            )
        else:
            self.outage.what, self.outage.error = what, _first_line(err)
        self._schedule_probe(now)

    def _schedule_probe(self, now: float) -> None:
        o = self.outage
        assert o is not None
        policy = self.cfg.cluster.outage_retry
        o.next_probe_s = now + retry_delay_s(min(o.probes, 30), self.rng.random(), policy)
        o.probes += 1

    def _run_during_outage(self, now: float, collect_timeout_s: float) -> int:
        o = self.outage
        assert o is not None
        results = self._collect(collect_timeout_s)
        self._unsettled.extend(results)
        if self.metrics is not None:
            self.metrics.observe_outage(now - o.since_s)
        if now >= o.next_probe_s:
            try:
                self.store.ping()
                for queue in self.queues.values():
                    queue.ping()
                self._end_outage()
            except Unavailable as err:
                self._begin_outage(err)
        if self.outage is not None and now - self.outage.since_s > self.outage_budget_s:
            raise OutageError(
                f"{self.outage.describe(now)}: longer than the outage budget of "
                f"{self.outage_budget_s:g} s (cluster.outage_budget_s)"
            )
        return len(results)

    def _end_outage(self) -> None:
        """The servers answer again: settle what was kept, send the acks that waited, and make the
        queue match the store. Any of it failing again continues the outage."""
        o = self.outage
        assert o is not None
        held, self._unsettled = self._unsettled, []
        self._settle(held)  # what fails again goes back to _unsettled, and the outage goes on
        for tenant in list(self._pending_acks):
            acks = self._pending_acks.pop(tenant)
            self._ack(tenant, acks)
        for tenant in list(self.queues):
            self.recover(tenant)
        now = self.clock()
        took = now - o.since_s
        self.outage = None
        log.warning("outage over after %.1f s (%s); dispatch resumed", took, o.what)
        self.writer.add_audit(
            [
                AuditEvent(now, t, "system", "outage", o.what, {"seconds": round(took, 3), "error": o.error})
                for t in self.queues
            ]
        )
        if self.metrics is not None:
            self.metrics.observe_outage(0.0)

    # -- recovery ----------------------------------------------------------------------------
    def resume(self, tenants: Sequence[str]) -> dict[str, dict[str, int]]:
        """Take over from a driver that died, on the same store and queue: hand its claimed
        entries back at once (the caller made sure it is dead), then :meth:`recover` each tenant.
        Returns what recovery did, per tenant."""
        out = {}
        for tenant in tenants:
            queue = self._open(tenant)
            released = queue.release_claimed()
            out[tenant] = {"released": released, **self.recover(tenant)}
        return out

    def recover(self, tenant: str) -> dict[str, int]:
        """Make the live state of ``tenant`` match the store: queued or running tasks without an
        entry (and not running here) are enqueued with attempt numbers that continue from the
        stored ones; retrying tasks go on the heap at their stored due time; waiting tasks get their
        dependency edges back, and are released (or failed) if their dependencies ended meanwhile.
        Returns counts of each."""
        self._open(tenant)
        queue, store, now = self.queues[tenant], self.store, self.clock()
        rebuilt = queue.is_empty_store()
        if rebuilt:
            queue.rebuild([])
        in_queue = queue.task_ids()
        records = store.unfinished(tenant)
        busy = (
            {k for k in self.running if k[0] == tenant}
            | {k for k in self._parked_keys if k[0] == tenant}
            | {(r.tenant, r.task_id) for r in self._unsettled if r.tenant == tenant}
        )
        due = {(t, k) for _, t, k, _ in self.retry_heap}
        lost = [
            r
            for r in records
            if r.status in ("queued", "running") and r.task_id not in in_queue and (tenant, r.task_id) not in busy
        ]
        numbers = store.next_attempts(tenant, [r.task_id for r in lost]) if lost else {}
        items = [
            (r.task_id, priority_class(self._score_now(tenant, r, now)), entry(max(r.attempt, numbers[r.task_id])))
            for r in lost
        ]
        retrying = 0
        for r in records:
            if (
                r.status == "retrying"
                and (tenant, r.task_id) not in due
                and (tenant, r.task_id) not in busy
                and r.task_id not in in_queue
            ):
                heapq.heappush(
                    self.retry_heap, (r.retry_at_s if r.retry_at_s is not None else now, tenant, r.task_id, r.attempt)
                )
                retrying += 1
        # dependencies, from the store's edges
        for key in [k for k in self.waiting if k[0] == tenant]:
            del self.waiting[key]
        for key in [k for k in self.dependents if k[0] == tenant]:
            del self.dependents[key]
        waiting = [r for r in records if r.status == "waiting"]
        statuses = store.statuses(tenant, {d for r in waiting for d in r.dependencies})
        ended: dict[str, str] = {}
        ready = []
        for r in waiting:
            key = (tenant, r.task_id)
            pending = {d for d in r.dependencies if statuses.get(d) != "succeeded"}
            self.classes[key] = priority_class(self._score_now(tenant, r, now))
            if not pending:
                ready.append(r.task_id)
                continue
            self.waiting[key] = pending
            for d in pending:
                self.dependents[(tenant, d)].add(r.task_id)
                st = statuses.get(d, "failed")  # a dependency the store does not have can never succeed
                if st in TERMINAL:
                    ended[d] = st
        self.demand[tenant] = sum(1 for r in records if r.status != "waiting")
        if items:
            self._enqueue(tenant, items)
        if ready:  # every dependency succeeded, but the driver that saw the last one died before releasing
            moved = store.mark_queued(tenant, ready, now, ("waiting",))
            batch = [(tid, self.classes.pop((tenant, tid), RETRY_CLASS), entry(0)) for tid in ready if tid in moved]
            if batch:
                self.demand[tenant] += len(batch)
                self._enqueue(tenant, batch)
        if ended:
            self._release(tenant, ended, now)
        counts = {
            "enqueued": len(items),
            "retrying": retrying,
            "waiting": sum(1 for k in self.waiting if k[0] == tenant),
            "released": len(ready),
        }
        if rebuilt or items or retrying or ready or ended:
            self.counts["recovered"] += len(items) + retrying + len(ready)
            self.writer.add_audit(
                [AuditEvent(now, tenant, "system", "queue_rebuilt" if rebuilt else "queue_recovered", tenant, counts)]
            )
        return counts

    def rebuild_queue(self, tenant: str) -> int:
        """The live queue lost its data: :meth:`recover` it; returns how many tasks were enqueued."""
        return self.recover(tenant)["enqueued"]

    def _score_now(self, tenant: str, rec: TaskRecord, now: float) -> float:
        """A stored task's score now; one submitted elsewhere (its resources unknown here) is scored
        with the Task model's defaults."""
        spec = self.deadlines.get((tenant, rec.task_id))
        if spec is not None:
            return score_task(spec, now)
        if rec.deadline_s is None:
            return rec.priority
        return score_task(PriorityInputs(rec.deadline_s), now)

    # -- gauges ------------------------------------------------------------------------------
    def observe(self, elapsed_s: float = 0.0) -> None:
        """Refresh the exporter's levels (backlog, in flight, concurrency, executors); a live
        loop calls this once per scrape period, not once per cycle (it reads the queues). During an
        outage the queue levels keep their last readings."""
        if self.metrics is None:
            return
        m = self.metrics
        m.observe_interval(
            elapsed_s,
            serving_slots=self.actual_concurrency,
            warming_slots=0,
            target_slots=self.target,
            running_slots=self.in_flight,
        )
        for tenant in self.queues:
            if self.outage is None:
                try:
                    m.observe_backlog(tenant, self._queue_call(tenant, lambda q: q.backlog()))
                except QueueUnavailable as err:
                    self._begin_outage(err)
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

    def busy(self) -> bool:
        """Whether anything is queued, running, held, waiting, due for retry or unsettled. Reads the
        queues (and rebuilds one its server lost); during an outage, True."""
        if self.outage is not None:
            return True
        if self.in_flight or self.running or self._parked_keys or self.retry_heap or self.waiting or self._unsettled:
            return True
        try:
            for t, q in self.queues.items():
                if q.is_empty_store():
                    self.recover(t)
                if self._queue_call(t, lambda q: sum(q.backlog()) + q.in_flight()):
                    return True
        except Unavailable as err:
            self._begin_outage(err)
            return True
        return False

    def run_until_idle(self, timeout_s: float = 60.0) -> bool:
        """Run cycles until nothing is queued, running, waiting or due for retry (tests, demos)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.run_once()
            if not self.busy():
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


def _entry_text(d: Delivery) -> str:
    import json

    try:
        return json.dumps(d.payload, sort_keys=True)[:4000] if d.error is None else (d.error or "")[:4000]
    except (TypeError, ValueError):
        return repr(d.payload)[:4000]


def _first_line(err: BaseException) -> str:
    text = str(err)
    return text.splitlines()[0] if text else type(err).__name__


def _server_of(err: BaseException) -> str:
    """Which server an outage error is about, in a few words."""
    text = _first_line(err)
    if isinstance(err, QueueUnavailable):
        return text.split(" unreachable")[0] if " unreachable" in text else text.split(": ")[0]
    return "database " + text.split(": ")[0] if ": " in text else "the database"
