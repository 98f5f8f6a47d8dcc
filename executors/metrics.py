"""Prometheus metrics of the executor cluster (prometheus_client), in one registry.

| metric | type | labels | meaning |
|---|---|---|---|
| `autotune_backlog_tasks` | gauge | `tenant`, `priority` | tasks waiting to run (queued or waiting out a retry) |
| `autotune_in_flight_tasks` | gauge | `tenant` | tasks running on executors |
| `autotune_concurrency_target_slots` | gauge | | slots the control plane asked for |
| `autotune_concurrency_actual_slots` | gauge | | slots of executors taking work |
| `autotune_task_outcomes_total` | counter | `tenant`, `type`, `outcome` | attempts ended: succeeded, failed, retrying, lost |
| `autotune_task_processing_seconds` | histogram | `tenant`, `type` | submission to end of tasks that ended (P90/P99 via `histogram_quantile`) |
| `autotune_task_retries_total` | counter | `tenant`, `type` | retries scheduled |
| `autotune_circuit_breaker_state` | gauge | `service` | 0 closed, 1 half-open, 2 open |
| `autotune_executor_cpu_seconds_total`, `autotune_executor_memory_bytes` | gauge | | the driver process' CPU time and resident memory |

Units are in the names (seconds, bytes, slots), counters end in `_total`, as Prometheus' naming
conventions ask.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from control.priority import PRIORITY_CLASSES

# seconds: around the 5 s SLO, finer below it
PROCESSING_BUCKETS_S = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class ClusterMetrics:
    """The cluster's metrics; adapters call the ``observe_*`` methods, Prometheus scrapes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.backlog = Gauge("autotune_backlog_tasks", "Tasks waiting to run", ["tenant", "priority"], registry=r)
        self.in_flight = Gauge("autotune_in_flight_tasks", "Tasks running on executors", ["tenant"], registry=r)
        self.target = Gauge("autotune_concurrency_target_slots", "Slots the control plane asked for", registry=r)
        self.actual = Gauge("autotune_concurrency_actual_slots", "Slots of executors taking work", registry=r)
        self.outcomes = Counter("autotune_task_outcomes", "Task attempts ended, by outcome",
                                ["tenant", "type", "outcome"], registry=r)
        self.processing = Histogram("autotune_task_processing_seconds", "Submission to end of ended tasks",
                                    ["tenant", "type"], buckets=PROCESSING_BUCKETS_S, registry=r)
        self.retries = Counter("autotune_task_retries", "Retries scheduled", ["tenant", "type"], registry=r)
        self.breaker = Gauge("autotune_circuit_breaker_state", "0 closed, 1 half-open, 2 open", ["service"],
                             registry=r)
        self.cpu = Gauge("autotune_executor_cpu_seconds_total", "CPU seconds used by this process", registry=r)
        self.memory = Gauge("autotune_executor_memory_bytes", "Resident memory of this process", registry=r)

    def observe_backlog(self, tenant: str, by_priority: Iterable[int]) -> None:
        for name, n in zip(PRIORITY_CLASSES, by_priority):
            self.backlog.labels(tenant, name).set(n)

    def observe_outcome(self, tenant: str, task_type: str, outcome: str, processing_s: float | None = None) -> None:
        self.outcomes.labels(tenant, task_type, outcome).inc()
        if outcome == "retrying":
            self.retries.labels(tenant, task_type).inc()
        if processing_s is not None and outcome in ("succeeded", "failed"):
            self.processing.labels(tenant, task_type).observe(processing_s)

    def observe_concurrency(self, target: int, actual: int) -> None:
        self.target.set(target)
        self.actual.set(actual)

    def observe_breaker(self, service: str, state: str) -> None:
        self.breaker.labels(service).set(BREAKER_STATES[state])

    def observe_process(self) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu.set(usage.ru_utime + usage.ru_stime)
        try:
            with open(f"/proc/{os.getpid()}/statm") as fh:
                self.memory.set(int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
        except OSError:
            self.memory.set(usage.ru_maxrss * 1024)

    def serve(self, port: int, addr: str = "127.0.0.1"):
        """Expose ``/metrics`` over HTTP; returns (server, thread)."""
        return start_http_server(port, addr=addr, registry=self.registry)
