"""The executor pool: Ray async actors whose total concurrency is set while the cluster runs.

Each :class:`ExecutorActor` runs up to ``slots`` tasks at once (asyncio) and takes work in batches:
one remote call carries many tasks, which is what lets dispatch outrun plain one-call-per-task Ray
(about 4,000 calls/s on this machine). :class:`ExecutorPool` (driver side) adds actors to scale up;
to scale down it stops giving work to surplus actors and removes each once its running tasks have
finished (drain), never cancelling a task. An actor that dies takes its in-flight batch with it: the
pool reports those tasks as ``lost`` so the queue can deliver them again.

A pool belongs to one tenant: its actors are named actors in the Ray namespace
``autotune-<tenant>`` (:func:`ray_namespace`), so another tenant's driver neither finds them by name
nor lists them in its own namespace, and :meth:`ExecutorPool.dispatch` refuses another tenant's work.
Actors declare their Ray resources (``num_cpus``, ``memory``); both default to 0 so that many actors
fit on a small local Ray, since a no-op or I/O-bound task barely uses a core. Each actor reports its
own process' CPU seconds and resident memory (:meth:`ExecutorPool.resource_usage`), which the
metrics exporter reads (:meth:`executors.metrics.ClusterMetrics.observe_executors`).

Attempt outcomes use the shared definitions: ``succeeded``, ``failed`` (permanent error), ``retrying``
(retryable error; the caller asks :func:`core.retry.should_retry` and re-queues after
:func:`core.retry.retry_delay_s`), ``lost`` (executor died).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import resource
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import ray

from core.config import AutotuneConfig, StepConfig
from core.retry import ErrorKind
from executors.sandbox import run_sandboxed
from executors.services import CallFailed, GuardedClient, SimulatedService


@dataclass(frozen=True)
class WorkItem:
    tenant: str
    task_id: str
    type: str
    attempt: int
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AttemptResult:
    tenant: str
    task_id: str
    attempt: int
    executor: str
    outcome: str  # succeeded | failed | retrying | lost
    started_s: float
    ended_s: float
    error: str | None = None
    error_kind: str | None = None


RAY_NAMESPACE_PREFIX = "autotune-"
MB = 1024 * 1024


def ray_namespace(tenant: str) -> str:
    """The Ray namespace of a tenant's executor actors."""
    if not isinstance(tenant, str) or not tenant:
        raise ValueError(f"tenant must be a non-empty string, got {tenant!r}")
    return RAY_NAMESPACE_PREFIX + tenant


@dataclass(frozen=True)
class ExecutorUsage:
    """One executor actor's process: CPU seconds used so far (a counter), resident memory now, and
    its task counts. What the metrics exporter reads of an executor."""

    actor_id: str
    cpu_s: float
    rss_bytes: int
    in_flight: int
    completed: int


def rss_bytes_from_statm(statm: str, page_size: int) -> int:
    """Resident set size from ``/proc/<pid>/statm`` (its second field counts resident pages)."""
    fields = statm.split()
    if len(fields) < 2:
        raise ValueError(f"not a /proc/<pid>/statm line: {statm!r}")
    return int(fields[1]) * page_size


def _own_process_usage() -> tuple[float, int]:
    """(CPU seconds, resident bytes) of this process. CPU counts this process only, not the
    sandboxed children it has waited for (those are the untrusted tasks' own budget)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        with open("/proc/self/statm") as fh:
            rss = rss_bytes_from_statm(fh.read(), os.sysconf("SC_PAGE_SIZE"))
    except OSError:
        rss = usage.ru_maxrss * 1024  # peak, not current: the best a system without /proc offers
    return usage.ru_utime + usage.ru_stime, rss


@ray.remote
class ExecutorActor:
    """Runs batches of tasks; each task type is a sequence of downstream calls."""

    def __init__(
        self,
        actor_id: str,
        slots: int,
        steps_by_type: dict[str, dict[str, dict]],
        seed: int,
        time_scale: float = 1.0,
        sandboxed: dict[str, tuple[int, float, float]] | None = None,
        noop_types: frozenset[str] = frozenset(),
        execution_log: str | None = None,
    ) -> None:
        self.actor_id = actor_id
        self.sandboxed = sandboxed or {}  # untrusted type -> (memory limit MB, CPU limit s, CPU rate)
        self.noop_types = noop_types  # types the deployment registered as no-ops (never a payload's say)
        # one line per execution start and end, appended (O_APPEND: whole lines from many processes);
        # off unless asked for: the chaos benchmark counts executions with it
        self.log_fd = os.open(execution_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if execution_log else None
        self.sem = asyncio.Semaphore(slots)
        rng = random.Random(seed)
        self.clients = {
            ttype: [
                GuardedClient(SimulatedService(name, StepConfig(**step), random.Random(rng.random()), time_scale))
                for name, step in steps.items()
            ]
            for ttype, steps in steps_by_type.items()
        }
        self.in_flight = 0
        self.completed = 0

    async def _run_one(self, item: WorkItem) -> tuple:
        async with self.sem:
            self.in_flight += 1
            started = time.time()
            self._log(f"start {started:.6f} {item.tenant} {item.task_id} {item.attempt} {item.type} {self.actor_id}")
            try:
                if item.type in self.noop_types:
                    outcome, error, kind = "succeeded", None, None
                elif item.type in self.sandboxed:
                    memory_mb, cpu_s, cpu_rate = self.sandboxed[item.type]
                    res = await run_sandboxed(item.payload, memory_mb, cpu_s, cpu_rate_limit=cpu_rate)
                    outcome = "succeeded" if res.ok else "failed"
                    error = res.error
                    kind = None if res.ok else ErrorKind.PERMANENT.value
                else:
                    for client in self.clients[item.type]:
                        await client.call()
                    outcome, error, kind = "succeeded", None, None
            except CallFailed as err:
                kind = err.kind.value
                outcome = "failed" if err.kind is ErrorKind.PERMANENT else "retrying"
                error = str(err)
            except KeyError:
                outcome, error, kind = "failed", f"unknown task type {item.type!r}", ErrorKind.PERMANENT.value
            finally:
                self.in_flight -= 1
                self.completed += 1
            self._log(f"end {time.time():.6f} {item.tenant} {item.task_id} {item.attempt} {outcome}")
            # the fields of an AttemptResult: see run_batch
            return (item.tenant, item.task_id, item.attempt, self.actor_id, outcome, started, time.time(), error, kind)

    def _log(self, line: str) -> None:
        if self.log_fd is not None:
            os.write(self.log_fd, (line + "\n").encode())

    async def run_batch(self, items: list[tuple]):
        """Run a batch; yield the results that are ready each time some finish (a streaming
        generator: a slow task does not hold back the batch's fast ones, nor their slots).

        Items and results cross Ray as tuples of the ``WorkItem`` / ``AttemptResult`` fields: a
        dataclass instance is pickled with its class and ``__dict__``, several times the cost of a
        tuple at each end (:class:`ExecutorPool` converts)."""
        pending = {asyncio.ensure_future(self._run_one(WorkItem(*i))) for i in items}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            yield [d.result() for d in done]

    def stats(self) -> dict[str, float | int]:
        """Task counts and this actor process' CPU seconds and resident memory."""
        cpu_s, rss = _own_process_usage()
        return {"in_flight": self.in_flight, "completed": self.completed, "cpu_s": cpu_s, "rss_bytes": rss}


@dataclass
class _Member:
    actor_id: str
    handle: Any
    slots: int
    draining: bool = False
    # batch (a streaming generator of result lists) -> its items not yet reported, by (task, attempt)
    in_flight: dict[Any, dict[tuple[str, int], WorkItem]] = field(default_factory=dict)

    @property
    def busy(self) -> int:
        return sum(len(v) for v in self.in_flight.values())


class ExecutorPool:
    """Driver-side view of one tenant's executor actors: concurrency control, dispatch, collection.

    Arguments:
        namespace: the tenant whose tasks this pool runs (:meth:`for_tenant` says so by name); its
            actors live in Ray namespace ``autotune-<namespace>``.
        slots_per_actor: tasks one actor runs at once (default ``cluster.slots_per_replica``).
        cpus_per_actor: Ray ``num_cpus`` each actor declares (0: scheduled anywhere, uses what it gets).
        memory_mb_per_actor: Ray ``memory`` each actor declares, in MB (0: undeclared). The config has
            no per-actor figure: ``tasks.<type>.memory_mb`` is one task's need, for the priority rule.
        time_scale: multiplies the simulated downstream call times (tests run fast with 0.01).
        execution_log: a file every actor appends a line to at each execution's start and end
            (``start TIME TENANT TASK ATTEMPT TYPE EXECUTOR`` / ``end TIME TENANT TASK ATTEMPT OUTCOME``): how the
            fault tests and the chaos benchmark count what ran,
            including executions whose result a crash lost. Off by default.
    """

    def __init__(
        self,
        cfg: AutotuneConfig,
        *,
        namespace: str = "default",
        slots_per_actor: int | None = None,
        cpus_per_actor: float = 0.0,
        memory_mb_per_actor: float = 0.0,
        time_scale: float = 1.0,
        seed: int = 0,
        execution_log: str | None = None,
    ) -> None:
        self.slots_per_actor = slots_per_actor or cfg.cluster.slots_per_replica
        if self.slots_per_actor < 1:
            raise ValueError(f"slots_per_actor must be >= 1, got {self.slots_per_actor}")
        for name, value in (("cpus_per_actor", cpus_per_actor), ("memory_mb_per_actor", memory_mb_per_actor)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self.cpus_per_actor = cpus_per_actor
        self.memory_mb_per_actor = memory_mb_per_actor
        self.ray_namespace = ray_namespace(namespace)
        self.namespace = namespace  # the tenant
        self.time_scale = time_scale
        self.steps_by_type = {
            name: {s: step.model_dump() for s, step in t.steps.items()} for name, t in cfg.tasks.items()
        }
        self.sandboxed = {
            name: (t.memory_limit_mb, t.cpu_limit_s, t.cpu_rate_limit) for name, t in cfg.tasks.items() if t.untrusted
        }
        self.noop_types = frozenset(name for name, t in cfg.tasks.items() if t.noop)
        self.execution_log = execution_log
        self._seed = itertools.count(seed * 1_000_003)
        self._ids = itertools.count()
        # Names are unique per pool, not only per tenant: a second pool of the tenant (another driver,
        # or a new pool right after one was shut down, before Ray has released the old names) must
        # not collide with this one's actors.
        self._name_prefix = f"{namespace}-executor-{uuid.uuid4().hex[:6]}"
        self.members: list[_Member] = []
        self.target = 0
        self.unanswered: tuple[str, ...] = ()  # actors the last resource_usage heard nothing from

    @classmethod
    def for_tenant(cls, cfg: AutotuneConfig, tenant: str, **kwargs: Any) -> ExecutorPool:
        """The executor pool of ``tenant`` (same as ``ExecutorPool(cfg, namespace=tenant, ...)``)."""
        return cls(cfg, namespace=tenant, **kwargs)

    @property
    def tenant(self) -> str:
        return self.namespace

    def _actor_options(self, actor_id: str) -> dict[str, Any]:
        options: dict[str, Any] = {
            "name": actor_id,
            "namespace": self.ray_namespace,
            "num_cpus": self.cpus_per_actor,
            "max_concurrency": self.slots_per_actor + 4,
        }
        if self.memory_mb_per_actor > 0:
            options["memory"] = int(self.memory_mb_per_actor * MB)
        return options

    # -- concurrency -------------------------------------------------------------------------
    def set_concurrency(self, target: int) -> None:
        """Scale to ``target`` slots: add actors, or drain surplus ones (running tasks finish)."""
        if target < 0:
            raise ValueError(f"concurrency must be >= 0, got {target}")
        self.target = target
        want = math.ceil(target / self.slots_per_actor)
        active = [m for m in self.members if not m.draining]
        for m in active[want:]:  # newest last: drain from the end
            m.draining = True
        for _ in range(want - len(active)):
            actor_id = f"{self._name_prefix}-{next(self._ids)}"
            handle = ExecutorActor.options(**self._actor_options(actor_id)).remote(  # type: ignore[attr-defined]  # ray.remote's stubs keep the bare class type
                actor_id,
                self.slots_per_actor,
                self.steps_by_type,
                next(self._seed),
                self.time_scale,
                self.sandboxed,
                self.noop_types,
                self.execution_log,
            )
            self.members.append(_Member(actor_id, handle, self.slots_per_actor))
        self._reap()

    @property
    def actual_concurrency(self) -> int:
        """Slots of actors taking work (draining actors finish what they have but take nothing new)."""
        return sum(m.slots for m in self.members if not m.draining)

    @property
    def in_flight(self) -> int:
        return sum(m.busy for m in self.members)

    @property
    def free_slots(self) -> int:
        return sum(max(0, m.slots - m.busy) for m in self.members if not m.draining)

    def _reap(self) -> None:
        for m in [m for m in self.members if m.draining and not m.in_flight]:
            ray.kill(m.handle)
            self.members.remove(m)

    # -- dispatch ----------------------------------------------------------------------------
    def dispatch(self, items: list[WorkItem]) -> int:
        """Hand out as many of ``items`` as there are free slots, one batch per actor; returns how many.

        Items of another tenant are refused (ValueError) before any item is handed out."""
        foreign = next((i for i in items if i.tenant != self.namespace), None)
        if foreign is not None:
            raise ValueError(
                f"task {foreign.task_id!r} belongs to tenant {foreign.tenant!r}; this executor pool "
                f"is tenant {self.namespace!r}'s"
            )
        given = 0
        for m in self.members:
            if m.draining or given >= len(items):
                continue
            free = m.slots - m.busy
            if free <= 0:
                continue
            batch = items[given : given + free]
            gen = m.handle.run_batch.options(num_returns="streaming").remote(
                [(i.tenant, i.task_id, i.type, i.attempt, i.payload) for i in batch]
            )
            m.in_flight[gen] = {(i.task_id, i.attempt): i for i in batch}
            given += len(batch)
        return given

    def collect(self, timeout_s: float = 0.0) -> list[AttemptResult]:
        """Results ready so far (each batch reports its tasks as they finish); a dead actor's
        unreported tasks come back as ``lost`` attempts."""
        gens = {gen: m for m in self.members for gen in m.in_flight}
        if not gens:
            return []
        ready, _ = ray.wait(list(gens), num_returns=len(gens), timeout=timeout_s, fetch_local=True)
        out: list[AttemptResult] = []
        dead: set[str] = set()
        for gen in ready:
            m = gens[gen]
            remaining = m.in_flight[gen]
            try:
                results = ray.get(
                    next(cast("Iterator[Any]", gen))
                )  # ray.wait typed ObjectRef; these are ObjectRefGenerators
            except StopIteration:  # every result of the batch was reported
                del m.in_flight[gen]
                continue
            except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError, ray.exceptions.WorkerCrashedError):
                dead.add(m.actor_id)
                continue
            for fields in results:
                r = AttemptResult(*fields)
                remaining.pop((r.task_id, r.attempt), None)
                out.append(r)
            if not remaining:
                del m.in_flight[gen]  # the generator's end needs no round trip
        if dead:  # every task still out with a dead actor is lost; replace the actor
            now = time.time()
            for m in self.members:
                if m.actor_id in dead:
                    for remaining in m.in_flight.values():
                        out.extend(
                            AttemptResult(
                                i.tenant,
                                i.task_id,
                                i.attempt,
                                m.actor_id,
                                "lost",
                                now,
                                now,
                                "executor died",
                                ErrorKind.TRANSIENT.value,
                            )
                            for i in remaining.values()
                        )
                    m.in_flight.clear()
            self.members = [m for m in self.members if m.actor_id not in dead]
            self.set_concurrency(self.target)
        self._reap()
        return out

    # -- resource usage ----------------------------------------------------------------------
    def resource_usage(self, timeout_s: float = 1.0) -> dict[str, ExecutorUsage]:
        """Each actor's process CPU seconds, resident memory and task counts, asked of all actors at
        once. An actor that is dead or does not answer within ``timeout_s`` is left out (its id is in
        :attr:`unanswered`); a death is for :meth:`collect` to handle, so this never raises for one."""
        asked = {m.handle.stats.remote(): m.actor_id for m in self.members}
        if not asked:
            self.unanswered = ()
            return {}
        ready, _ = ray.wait(list(asked), num_returns=len(asked), timeout=timeout_s, fetch_local=True)
        answers: dict[Any, dict] = {}
        try:
            answers = dict(zip(ready, ray.get(ready)))
        except ray.exceptions.RayError:  # one of them died: take the others one by one
            for ref in ready:
                try:
                    answers[ref] = ray.get(ref)
                except ray.exceptions.RayError:
                    pass
        self.unanswered = tuple(actor_id for ref, actor_id in asked.items() if ref not in answers)
        return {
            asked[ref]: ExecutorUsage(
                asked[ref], float(a["cpu_s"]), int(a["rss_bytes"]), int(a["in_flight"]), int(a["completed"])
            )
            for ref, a in answers.items()
        }

    def shutdown(self) -> None:
        for m in self.members:
            ray.kill(m.handle)
        self.members.clear()
