"""The metrics exporter over real HTTP, parsed as Prometheus would."""

from __future__ import annotations

import socket
import urllib.request
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from executors.metrics import ClusterMetrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_families(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def scrape(port: int) -> dict[str, list]:
    return {name: f.samples for name, f in scrape_families(port).items()}


def value(samples, name, **labels) -> float:
    [s] = [s for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return s.value


@pytest.fixture
def served():
    m = ClusterMetrics()
    port = free_port()
    server, _ = m.serve(port)
    try:
        yield m, port
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Usage:  # what executors.pool reports per executor actor (duck-typed by the exporter)
    cpu_s: float
    rss_bytes: int


def test_exporter_serves_documented_metrics(served):
    m, port = served
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
    assert value(got["autotune_executor_memory_bytes"], "autotune_executor_memory_bytes", executor="driver") > 1e6


def test_exporter_carries_every_counter_a_snapshot_needs(served):
    m, port = served
    m.observe_submitted("shop", "order_processing", 7)
    m.observe_submitted("shop", "refund")
    m.observe_started("shop", "order_processing", 5)
    m.observe_retrying("shop", 2)
    m.observe_in_flight("shop", 4)
    m.observe_outcome("shop", "order_processing", "timed_out", 301.0)  # a time-out is not in the histogram
    m.observe_outcome("shop", "order_processing", "lost")
    m.observe_outcome("shop", "order_processing", "succeeded", 2.5)
    m.observe_busy(1.25)
    m.observe_busy(0.75)
    m.observe_interval(10.0, serving_slots=8, warming_slots=4, target_slots=12)
    m.observe_interval(5.0, serving_slots=6, warming_slots=0, target_slots=6, running_slots=9)  # draining
    fams = scrape_families(port)
    got = {n: f.samples for n, f in fams.items()}
    types = {n: f.type for n, f in fams.items()}
    assert types["autotune_tasks_submitted"] == "counter"
    assert value(got["autotune_tasks_submitted"], "autotune_tasks_submitted_total", type="order_processing") == 7
    assert value(got["autotune_tasks_submitted"], "autotune_tasks_submitted_total", type="refund") == 1
    assert types["autotune_task_attempts_started"] == "counter"
    assert value(got["autotune_task_attempts_started"], "autotune_task_attempts_started_total", tenant="shop") == 5
    assert types["autotune_retrying_tasks"] == "gauge"
    assert value(got["autotune_retrying_tasks"], "autotune_retrying_tasks", tenant="shop") == 2
    assert value(got["autotune_in_flight_tasks"], "autotune_in_flight_tasks", tenant="shop") == 4
    outcomes = got["autotune_task_outcomes"]
    assert value(outcomes, "autotune_task_outcomes_total", outcome="timed_out") == 1
    assert value(outcomes, "autotune_task_outcomes_total", outcome="lost") == 1
    hist = got["autotune_task_processing_seconds"]
    assert types["autotune_task_processing_seconds"] == "histogram"
    assert value(hist, "autotune_task_processing_seconds_count") == 1
    assert value(hist, "autotune_task_processing_seconds_sum") == 2.5
    assert types["autotune_busy_slot_seconds"] == "counter"
    assert value(got["autotune_busy_slot_seconds"], "autotune_busy_slot_seconds_total") == 2.0
    # 10 s x (8 serving + 4 warming) + 5 s x max(6 provisioned, 9 still running)
    assert value(got["autotune_provisioned_slot_seconds"], "autotune_provisioned_slot_seconds_total") == 165.0
    assert value(got["autotune_concurrency_target_slots"], "autotune_concurrency_target_slots") == 6
    assert value(got["autotune_concurrency_actual_slots"], "autotune_concurrency_actual_slots") == 6
    assert types["autotune_concurrency_warming_slots"] == "gauge"
    assert value(got["autotune_concurrency_warming_slots"], "autotune_concurrency_warming_slots") == 0


def test_unknown_outcome_and_negative_interval_are_refused():
    m = ClusterMetrics()
    with pytest.raises(ValueError, match="unknown task outcome 'exploded'"):
        m.observe_outcome("shop", "order_processing", "exploded")
    with pytest.raises(ValueError, match="elapsed_s must be >= 0"):
        m.observe_interval(-1.0, 4, 0, 4)


def test_executor_usage_is_a_counter_per_executor_and_gone_executors_are_dropped(served):
    m, port = served
    m.observe_process()
    m.observe_executors({"shop-0": Usage(3.5, 100_000_000), "shop-1": Usage(1.0, 90_000_000)})
    fams = scrape_families(port)
    assert fams["autotune_executor_cpu_seconds"].type == "counter"
    assert fams["autotune_executor_memory_bytes"].type == "gauge"
    cpu = fams["autotune_executor_cpu_seconds"].samples
    assert {s.labels["executor"] for s in cpu} == {"driver", "shop-0", "shop-1"}
    assert value(cpu, "autotune_executor_cpu_seconds_total", executor="shop-0") == 3.5
    assert value(cpu, "autotune_executor_cpu_seconds_total", executor="driver") > 0
    mem = fams["autotune_executor_memory_bytes"].samples
    assert value(mem, "autotune_executor_memory_bytes", executor="shop-1") == 90_000_000

    m.observe_executors({"shop-1": Usage(2.0, 95_000_000)})  # shop-0 went away; the driver stays
    fams = scrape_families(port)
    assert {s.labels["executor"] for s in fams["autotune_executor_cpu_seconds"].samples} == {"driver", "shop-1"}
    assert {s.labels["executor"] for s in fams["autotune_executor_memory_bytes"].samples} == {"driver", "shop-1"}
    assert (
        value(fams["autotune_executor_cpu_seconds"].samples, "autotune_executor_cpu_seconds_total", executor="shop-1")
        == 2.0
    )


def test_tuner_decisions_and_fallback(served):
    m, port = served
    m.observe_decision("ppo", "policy", "", wanted=120, applied=120, fallback=False)
    m.observe_decision("ppo", "policy", "max_step", wanted=400, applied=240, fallback=False)
    m.observe_decision("hpa", "fallback", "cooldown", wanted=100, applied=240, fallback=True)
    fams = scrape_families(port)
    got = {n: f.samples for n, f in fams.items()}
    assert fams["autotune_tuner_decisions"].type == "counter"
    d = got["autotune_tuner_decisions"]
    assert value(d, "autotune_tuner_decisions_total", policy="ppo", mode="policy", reason="none") == 1
    assert value(d, "autotune_tuner_decisions_total", policy="ppo", mode="policy", reason="max_step") == 1
    assert value(d, "autotune_tuner_decisions_total", policy="hpa", mode="fallback", reason="cooldown") == 1
    assert value(got["autotune_tuner_fallback_active"], "autotune_tuner_fallback_active") == 1
    assert value(got["autotune_tuner_policy_concurrency_slots"], "autotune_tuner_policy_concurrency_slots") == 100
    assert value(got["autotune_tuner_applied_concurrency_slots"], "autotune_tuner_applied_concurrency_slots") == 240
    m.observe_decision("ppo", "policy", "", wanted=200, applied=200, fallback=False)
    assert value(scrape(port)["autotune_tuner_fallback_active"], "autotune_tuner_fallback_active") == 0
