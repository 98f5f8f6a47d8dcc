"""Prometheus metrics of the executor cluster and its tuner (prometheus_client), in one registry.

The exporter carries every counter and level a :class:`core.domain.ClusterSnapshot` is built
from, so the live control loop reads back (through Prometheus or this registry, see
:mod:`executors.metrics_source`) the same quantities the simulator counts.

| metric | type | labels | meaning |
|---|---|---|---|
| `autotune_tasks_submitted_total` | counter | `tenant`, `type` | tasks accepted (arrivals) |
| `autotune_backlog_tasks` | gauge | `tenant`, `priority` | tasks queued, waiting for a slot (not running, not in a retry backoff) |
| `autotune_retrying_tasks` | gauge | `tenant` | tasks waiting out a retry backoff |
| `autotune_in_flight_tasks` | gauge | `tenant` | tasks running on executors |
| `autotune_concurrency_target_slots` | gauge | | slots the control plane asked for |
| `autotune_concurrency_actual_slots` | gauge | | slots serving (executors taking work) |
| `autotune_concurrency_warming_slots` | gauge | | slots provisioned but not serving yet |
| `autotune_task_outcomes_total` | counter | `tenant`, `type`, `outcome` | attempts ended: `succeeded`, `failed`, `retrying`, `lost`, `timed_out` (one label each, exclusive) |
| `autotune_task_attempts_started_total` | counter | `tenant`, `type` | attempts dispatched to an executor |
| `autotune_task_processing_seconds` | histogram | `tenant`, `type` | submission to end of tasks that ended after an attempt (succeeded or failed; P90/P99 via `histogram_quantile`) |
| `autotune_task_retries_total` | counter | `tenant`, `type` | retries scheduled |
| `autotune_busy_slot_seconds_total` | counter | | sum of attempt durations |
| `autotune_provisioned_slot_seconds_total` | counter | | integral of max(serving + warming, running) slots over time (the cost) |
| `autotune_circuit_breaker_state` | gauge | `service` | 0 closed, 1 half-open, 2 open |
| `autotune_dead_letters_total` | counter | `tenant` | queue entries that could not be run, kept in the store's dead letters with the reason |
| `autotune_outage_seconds` | gauge | | how long the cluster has been waiting out an unreachable Redis or database (0: none) |
| `autotune_executor_cpu_seconds_total` | counter | `executor` | CPU time of each executor actor's process; `executor="driver"` is this process |
| `autotune_executor_memory_bytes` | gauge | `executor` | resident memory of the same processes |
| `autotune_tuner_decisions_total` | counter | `policy`, `mode`, `reason` | control decisions (`mode`: `policy` or `fallback`; `reason`: the guard's first reason, `none` if it let the proposal through) |
| `autotune_tuner_fallback_active` | gauge | | 1 while the control loop falls back to the HPA |
| `autotune_tuner_policy_concurrency_slots` | gauge | | the concurrency the policy proposed |
| `autotune_tuner_applied_concurrency_slots` | gauge | | the concurrency applied (after the guard) |

Units are in the names (seconds, bytes, slots, tasks) and counters end in `_total`, as Prometheus'
naming conventions ask. Semantics follow the simulator: a task that timed out is counted once, as
`timed_out`, and :func:`executors.metrics_source.snapshot_between` counts it among the failed as well (the
simulator's ``failed`` includes its ``timed_out``); its processing time is not observed, as the
simulator's histogram holds only tasks that ended after an attempt.

The executor CPU counter is set, not incremented (the executors report their processes' totals),
so it is exported by a custom collector as a real counter; executors that went away are dropped.
"""

from __future__ import annotations

import os
import resource
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from core.priority import PRIORITY_CLASSES

# seconds: around the 5 s SLO, finer below it
PROCESSING_BUCKETS_S = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
OUTCOMES = ("succeeded", "failed", "retrying", "lost", "timed_out")
DRIVER = "driver"  # the executor label of this (the driver's) own process


class ProcessUsage(Protocol):
    """What :meth:`ClusterMetrics.observe_executors` reads of one executor (duck-typed)."""

    cpu_s: float
    rss_bytes: int


class _ExecutorCollector:
    """Exports the last reported CPU seconds and memory of each executor process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._usage: dict[str, tuple[float, float]] = {}

    def set(self, executor: str, cpu_s: float, rss_bytes: float) -> None:
        with self._lock:
            self._usage[executor] = (float(cpu_s), float(rss_bytes))

    def replace_executors(self, usage: Mapping[str, tuple[float, float]]) -> None:
        """Keep the driver, replace every other executor: one not in ``usage`` went away."""
        with self._lock:
            driver = self._usage.get(DRIVER)
            self._usage = dict(usage)
            if driver is not None and DRIVER not in usage:
                self._usage[DRIVER] = driver

    def collect(self):
        with self._lock:
            items = sorted(self._usage.items())
        cpu = CounterMetricFamily(
            "autotune_executor_cpu_seconds", "CPU seconds used by the executor's process", labels=["executor"]
        )
        mem = GaugeMetricFamily(
            "autotune_executor_memory_bytes", "Resident memory of the executor's process", labels=["executor"]
        )
        for name, (cpu_s, rss) in items:
            cpu.add_metric([name], cpu_s)
            mem.add_metric([name], rss)
        yield cpu
        yield mem

    def describe(self):
        # names only, so registering never calls collect() (which takes the lock)
        yield CounterMetricFamily("autotune_executor_cpu_seconds", "", labels=["executor"])
        yield GaugeMetricFamily("autotune_executor_memory_bytes", "", labels=["executor"])


class ClusterMetrics:
    """The cluster's metrics; adapters call the ``observe_*`` methods, Prometheus scrapes.

    Thread-safe (prometheus_client's metrics are); one instance per registry.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        tt = ["tenant", "type"]
        self.submitted = Counter("autotune_tasks_submitted", "Tasks accepted (arrivals)", tt, registry=r)
        self.backlog = Gauge(
            "autotune_backlog_tasks", "Tasks queued, waiting for a slot", ["tenant", "priority"], registry=r
        )
        self.retrying = Gauge("autotune_retrying_tasks", "Tasks waiting out a retry backoff", ["tenant"], registry=r)
        self.in_flight = Gauge("autotune_in_flight_tasks", "Tasks running on executors", ["tenant"], registry=r)
        self.target = Gauge("autotune_concurrency_target_slots", "Slots the control plane asked for", registry=r)
        self.actual = Gauge("autotune_concurrency_actual_slots", "Slots serving (executors taking work)", registry=r)
        self.warming = Gauge("autotune_concurrency_warming_slots", "Slots provisioned, not serving yet", registry=r)
        self.outcomes = Counter(
            "autotune_task_outcomes", "Task attempts ended, by outcome", ["tenant", "type", "outcome"], registry=r
        )
        self.attempts = Counter("autotune_task_attempts_started", "Attempts dispatched to an executor", tt, registry=r)
        self.processing = Histogram(
            "autotune_task_processing_seconds",
            "Submission to end of ended tasks",
            tt,
            buckets=PROCESSING_BUCKETS_S,
            registry=r,
        )
        self.retries = Counter("autotune_task_retries", "Retries scheduled", tt, registry=r)
        self.busy = Counter("autotune_busy_slot_seconds", "Sum of attempt durations", registry=r)
        self.provisioned = Counter(
            "autotune_provisioned_slot_seconds",
            "Integral of provisioned slots (serving + warming) over time",
            registry=r,
        )
        self.breaker = Gauge("autotune_circuit_breaker_state", "0 closed, 1 half-open, 2 open", ["service"], registry=r)
        self.dead_letters = Counter(
            "autotune_dead_letters", "Queue entries that could not be run, kept with the reason", ["tenant"], registry=r
        )
        self.outage = Gauge(
            "autotune_outage_seconds",
            "How long the cluster has been waiting out an unreachable Redis or database (0: none)",
            registry=r,
        )
        self.executors = _ExecutorCollector()
        r.register(self.executors)
        self.decisions = Counter(
            "autotune_tuner_decisions",
            "Control decisions by policy, mode and guard reason",
            ["policy", "mode", "reason"],
            registry=r,
        )
        self.fallback = Gauge("autotune_tuner_fallback_active", "1 while the loop falls back to the HPA", registry=r)
        self.policy_concurrency = Gauge(
            "autotune_tuner_policy_concurrency_slots", "Concurrency the policy proposed", registry=r
        )
        self.applied_concurrency = Gauge(
            "autotune_tuner_applied_concurrency_slots", "Concurrency applied after the guard", registry=r
        )

    # -- tasks -------------------------------------------------------------------------------
    def observe_submitted(self, tenant: str, task_type: str, n: int = 1) -> None:
        self.submitted.labels(tenant, task_type).inc(n)

    def observe_started(self, tenant: str, task_type: str, n: int = 1) -> None:
        self.attempts.labels(tenant, task_type).inc(n)

    def observe_outcome(self, tenant: str, task_type: str, outcome: str, processing_s: float | None = None) -> None:
        """An attempt ended. ``processing_s`` (submission to end) is recorded for tasks that ended
        after an attempt (succeeded, failed), like the simulator's histogram."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown task outcome {outcome!r}; expected one of {', '.join(OUTCOMES)}")
        self.outcomes.labels(tenant, task_type, outcome).inc()
        if outcome == "retrying":
            self.retries.labels(tenant, task_type).inc()
        if processing_s is not None and outcome in ("succeeded", "failed"):
            self.processing.labels(tenant, task_type).observe(processing_s)

    def observe_dead_letters(self, tenant: str, n: int = 1) -> None:
        self.dead_letters.labels(tenant).inc(n)

    def observe_outage(self, seconds: float) -> None:
        self.outage.set(max(0.0, seconds))

    def observe_busy(self, attempt_s: float) -> None:
        """One attempt's duration (slot-seconds it kept busy)."""
        self.busy.inc(max(0.0, attempt_s))

    # -- levels ------------------------------------------------------------------------------
    def observe_backlog(self, tenant: str, by_priority: Iterable[int]) -> None:
        """Queued tasks per priority class (high, normal, low); not running, not in a backoff."""
        for name, n in zip(PRIORITY_CLASSES, by_priority, strict=True):
            self.backlog.labels(tenant, name).set(n)

    def observe_retrying(self, tenant: str, n: int) -> None:
        self.retrying.labels(tenant).set(n)

    def observe_in_flight(self, tenant: str, n: int) -> None:
        self.in_flight.labels(tenant).set(n)

    def observe_concurrency(self, target: int, actual: int, warming: int = 0) -> None:
        self.target.set(target)
        self.actual.set(actual)
        self.warming.set(warming)

    def observe_interval(
        self, elapsed_s: float, serving_slots: int, warming_slots: int, target_slots: int, running_slots: int = 0
    ) -> None:
        """``elapsed_s`` seconds passed with these slots: set the concurrency gauges and add the
        provisioned slot-seconds. Like the simulator, a slot costs from the moment it is provisioned
        (warming included), and slots still draining running tasks after a scale-down cost too."""
        if elapsed_s < 0:
            raise ValueError(f"elapsed_s must be >= 0, got {elapsed_s}")
        self.observe_concurrency(target_slots, serving_slots, warming_slots)
        self.provisioned.inc(elapsed_s * max(serving_slots + warming_slots, running_slots))

    def observe_breaker(self, service: str, state: str) -> None:
        self.breaker.labels(service).set(BREAKER_STATES[state])

    # -- processes ---------------------------------------------------------------------------
    def observe_process(self) -> None:
        """This (the driver's) process' CPU time and resident memory, as ``executor="driver"``."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        try:
            with open(f"/proc/{os.getpid()}/statm") as fh:
                rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            rss = usage.ru_maxrss * 1024  # peak, not current: the best a non-Linux system offers here
        self.executors.set(DRIVER, usage.ru_utime + usage.ru_stime, rss)

    def observe_executors(self, usage: Mapping[str, Any]) -> None:
        """Every executor's process usage (actor id -> object with ``cpu_s`` and ``rss_bytes``);
        executors missing from ``usage`` went away and are no longer exported."""
        self.executors.replace_executors({str(k): (float(u.cpu_s), float(u.rss_bytes)) for k, u in usage.items()})

    # -- tuner -------------------------------------------------------------------------------
    def observe_decision(self, policy: str, mode: str, reason: str, wanted: int, applied: int, fallback: bool) -> None:
        """One control decision: who decided (``policy``, ``mode``), why the guard changed it
        (``reason``, empty or ``none`` when it did not), what was proposed and what was applied."""
        self.decisions.labels(policy, mode, reason or "none").inc()
        self.policy_concurrency.set(wanted)
        self.applied_concurrency.set(applied)
        self.fallback.set(1 if fallback else 0)

    def serve(self, port: int, addr: str = "127.0.0.1"):
        """Expose ``/metrics`` over HTTP; returns (server, thread)."""
        return start_http_server(port, addr=addr, registry=self.registry)
