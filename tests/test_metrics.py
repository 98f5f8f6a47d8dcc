"""The metrics exporter over real HTTP, parsed as Prometheus would."""

from __future__ import annotations

import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from executors.metrics import ClusterMetrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, list]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(samples, name, **labels) -> float:
    [s] = [s for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return s.value


def test_exporter_serves_documented_metrics():
    m = ClusterMetrics()
    port = free_port()
    server, thread = m.serve(port)
    try:
        m.observe_backlog("shop", (3, 40, 7))
        m.observe_concurrency(120, 100)
        for t in (0.4, 0.8, 1.2, 6.0):
            m.observe_outcome("shop", "order_processing", "succeeded", t)
        m.observe_outcome("shop", "order_processing", "retrying")
        m.observe_outcome("shop", "order_processing", "failed", 30.0)
        m.observe_breaker("payment", "open")
        m.observe_process()
        got = scrape(port)
        assert value(got["autotune_backlog_tasks"], "autotune_backlog_tasks", tenant="shop", priority="normal") == 40
        assert value(got["autotune_concurrency_target_slots"], "autotune_concurrency_target_slots") == 120
        assert value(got["autotune_concurrency_actual_slots"], "autotune_concurrency_actual_slots") == 100
        outcomes = got["autotune_task_outcomes"]
        assert value(outcomes, "autotune_task_outcomes_total", outcome="succeeded") == 4
        assert value(outcomes, "autotune_task_outcomes_total", outcome="retrying") == 1
        assert value(got["autotune_task_retries"], "autotune_task_retries_total") == 1
        hist = got["autotune_task_processing_seconds"]
        assert value(hist, "autotune_task_processing_seconds_count") == 5  # retrying is not an end
        assert value(hist, "autotune_task_processing_seconds_bucket", le="1.0") == 2
        assert value(hist, "autotune_task_processing_seconds_bucket", le="5.0") == 3
        assert value(got["autotune_circuit_breaker_state"], "autotune_circuit_breaker_state", service="payment") == 2
        assert value(got["autotune_executor_memory_bytes"], "autotune_executor_memory_bytes") > 1e6
    finally:
        server.shutdown()
