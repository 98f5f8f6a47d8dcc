"""The executor pool: Ray async actors whose total concurrency is set while the cluster runs.

Each :class:`ExecutorActor` runs up to ``slots`` tasks at once (asyncio) and takes work in batches:
one remote call carries many tasks, which is what lets dispatch outrun plain one-call-per-task Ray
(about 4,000 calls/s on this machine). :class:`ExecutorPool` (driver side) adds actors to scale up;
to scale down it stops giving work to surplus actors and removes each once its running tasks have
finished (drain), never cancelling a task. An actor that dies takes its in-flight batch with it: the
pool reports those tasks as ``lost`` so the queue can deliver them again.

Attempt outcomes use the shared definitions: ``succeeded``, ``failed`` (permanent error), ``retrying``
(retryable error; the caller asks :func:`control.retry.should_retry` and re-queues after
:func:`control.retry.retry_delay_s`), ``lost`` (executor died).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from autotune.config import AutotuneConfig, StepConfig
from control.retry import ErrorKind
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


@ray.remote
class ExecutorActor:
    """Runs batches of tasks; each task type is a sequence of downstream calls."""

    def __init__(self, actor_id: str, slots: int, steps_by_type: dict[str, dict[str, dict]], seed: int,
                 time_scale: float = 1.0, sandboxed: dict[str, tuple[int, float]] | None = None) -> None:
        self.actor_id = actor_id
        self.sandboxed = sandboxed or {}  # untrusted type -> (memory limit MB, CPU limit s)
        self.sem = asyncio.Semaphore(slots)
        rng = random.Random(seed)
        self.clients = {
            ttype: [GuardedClient(SimulatedService(name, StepConfig(**step), random.Random(rng.random()), time_scale))
                    for name, step in steps.items()]
            for ttype, steps in steps_by_type.items()
        }
        self.in_flight = 0
        self.completed = 0

    async def _run_one(self, item: WorkItem) -> AttemptResult:
        async with self.sem:
            self.in_flight += 1
            started = time.time()
            try:
                if item.payload.get("noop"):
                    outcome, error, kind = "succeeded", None, None
                elif item.type in self.sandboxed:
                    memory_mb, cpu_s = self.sandboxed[item.type]
                    res = await run_sandboxed(item.payload, memory_mb, cpu_s)
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
            return AttemptResult(item.tenant, item.task_id, item.attempt, self.actor_id, outcome, started,
                                 time.time(), error, kind)

    async def run_batch(self, items: list[WorkItem]) -> list[AttemptResult]:
        return list(await asyncio.gather(*(self._run_one(i) for i in items)))

    def stats(self) -> dict[str, int]:
        return {"in_flight": self.in_flight, "completed": self.completed}


@dataclass
class _Member:
    actor_id: str
    handle: Any
    slots: int
    draining: bool = False
    in_flight: dict[Any, list[WorkItem]] = field(default_factory=dict)  # batch ref -> items

    @property
    def busy(self) -> int:
        return sum(len(v) for v in self.in_flight.values())


class ExecutorPool:
    """Driver-side view of the executor actors: concurrency control, dispatch, collection."""

    def __init__(self, cfg: AutotuneConfig, *, namespace: str = "default", slots_per_actor: int | None = None,
                 cpus_per_actor: float = 0.0, time_scale: float = 1.0, seed: int = 0) -> None:
        self.slots_per_actor = slots_per_actor or cfg.cluster.slots_per_replica
        self.cpus_per_actor = cpus_per_actor
        self.namespace = namespace
        self.time_scale = time_scale
        self.steps_by_type = {name: {s: step.model_dump() for s, step in t.steps.items()}
                              for name, t in cfg.tasks.items()}
        self.sandboxed = {name: (t.memory_limit_mb, t.cpu_limit_s) for name, t in cfg.tasks.items() if t.untrusted}
        self._seed = itertools.count(seed * 1_000_003)
        self._ids = itertools.count()
        self.members: list[_Member] = []
        self.target = 0

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
            actor_id = f"{self.namespace}-executor-{next(self._ids)}"
            handle = ExecutorActor.options(name=actor_id, num_cpus=self.cpus_per_actor,
                                           max_concurrency=self.slots_per_actor + 4).remote(
                actor_id, self.slots_per_actor, self.steps_by_type, next(self._seed), self.time_scale,
                self.sandboxed)
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
        """Hand out as many of ``items`` as there are free slots, one batch per actor; returns how many."""
        given = 0
        for m in self.members:
            if m.draining or given >= len(items):
                continue
            free = m.slots - m.busy
            if free <= 0:
                continue
            batch = items[given: given + free]
            m.in_flight[m.handle.run_batch.remote(batch)] = batch
            given += len(batch)
        return given

    def collect(self, timeout_s: float = 0.0) -> list[AttemptResult]:
        """Results of finished batches; a dead actor's batch comes back as ``lost`` attempts."""
        refs = {ref: m for m in self.members for ref in m.in_flight}
        if not refs:
            return []
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s, fetch_local=True)
        out: list[AttemptResult] = []
        dead: set[str] = set()
        for ref in ready:
            m = refs[ref]
            items = m.in_flight.pop(ref)
            try:
                out.extend(ray.get(ref))
            except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError, ray.exceptions.WorkerCrashedError):
                now = time.time()
                out.extend(AttemptResult(i.tenant, i.task_id, i.attempt, m.actor_id, "lost", now, now,
                                         "executor died", ErrorKind.TRANSIENT.value) for i in items)
                dead.add(m.actor_id)
        if dead:  # every batch still out with a dead actor is lost too; replace the actor
            now = time.time()
            for m in self.members:
                if m.actor_id in dead:
                    for items in m.in_flight.values():
                        out.extend(AttemptResult(i.tenant, i.task_id, i.attempt, m.actor_id, "lost", now, now,
                                                 "executor died", ErrorKind.TRANSIENT.value) for i in items)
                    m.in_flight.clear()
            self.members = [m for m in self.members if m.actor_id not in dead]
            self.set_concurrency(self.target)
        self._reap()
        return out

    def shutdown(self) -> None:
        for m in self.members:
            ray.kill(m.handle)
        self.members.clear()
