"""Live metrics as snapshots: hand-worked pure tests, then a real Prometheus scraping the exporter."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.config import SLIConfig
from core.domain import TrailingWindow
from core.observation import observation_features
from executors.metrics import ClusterMetrics
from executors.metrics_source import (
    MetricsError,
    MetricsReading,
    PrometheusSource,
    ReadingWindow,
    RegistrySource,
    StaleMetricsError,
    histogram_quantile,
    snapshot_between,
)
from tests.conftest import make_snapshot
from tests.prometheus_server import free_port, prometheus_server  # noqa: F401 - a fixture

INF = math.inf
RULES = Path(__file__).resolve().parent.parent / "ops" / "prometheus" / "rules.yml"


# -- histogram_quantile, against values worked by hand --------------------------------------------
BUCKETS = [(1.0, 20), (5.0, 72), (10.0, 120), (INF, 120)]


@pytest.mark.parametrize(
    "q, expected",
    [
        (0.9, 5 + 5 * (108 - 72) / 48),  # rank 108 in (5, 10], which holds 48 of them
        (0.5, 1 + 4 * (60 - 20) / 52),  # rank 60 in (1, 5]
        (0.1, 1 * 12 / 20),  # rank 12 in the lowest bucket: from 0
        (20 / 120, 1.0),  # rank on a bucket's count: that bucket's upper bound
        (0.0, 0.0),
        (1.0, 10.0),
    ],
)
def test_histogram_quantile_interpolates_like_promql(q, expected):
    assert histogram_quantile(q, BUCKETS) == pytest.approx(expected, rel=1e-12)


def test_histogram_quantile_edge_cases_follow_promql():
    assert histogram_quantile(0.9, [(1.0, 10), (5.0, 10), (INF, 20)]) == 5.0  # in +Inf: highest finite bound
    assert math.isnan(histogram_quantile(0.9, [(1.0, 10), (5.0, 20)]))  # no +Inf bucket
    assert math.isnan(histogram_quantile(0.9, [(1.0, 0), (INF, 0)]))  # no observations
    assert math.isnan(histogram_quantile(0.9, [(INF, 10)]))  # one bucket
    assert math.isnan(histogram_quantile(0.9, []))
    assert histogram_quantile(-0.1, BUCKETS) == -INF
    assert histogram_quantile(1.1, BUCKETS) == INF
    assert math.isnan(histogram_quantile(math.nan, BUCKETS))
    # unsorted, a bound given twice (summed) and a count that went down (forced monotonic)
    messy = [(INF, 60), (5.0, 30), (1.0, 5), (1.0, 5), (10.0, 25)]
    clean = [(1.0, 10), (5.0, 30), (10.0, 30), (INF, 60)]
    for q in (0.1, 0.3, 0.5, 0.9):
        assert histogram_quantile(q, messy) == histogram_quantile(q, clean)
    assert histogram_quantile(0.5, [(-1.0, 10), (INF, 10)]) == -1.0  # a non-positive lowest bound


# -- snapshot_between -------------------------------------------------------------------------------
def reading(t: float, **kw) -> MetricsReading:
    base = dict(
        time_s=t,
        submitted_total=0,
        backlog_by_priority=(0, 0, 0),
        retrying=0,
        running=0,
        target_concurrency=0,
        serving_concurrency=0,
        warming_concurrency=0,
        succeeded_total=0,
        failed_total=0,
        timed_out_total=0,
        retries_total=0,
        attempts_started_total=0,
        processing_sum_s=0.0,
        processing_count=0,
        processing_buckets=(),
        busy_slot_s_total=0.0,
        provisioned_slot_s_total=0.0,
    )
    base.update(kw)
    return MetricsReading(**base)


def test_snapshot_between_counts_differences_and_takes_levels_from_the_current_reading():
    start = reading(0.0, succeeded_total=100, failed_total=1, timed_out_total=1)
    prev = reading(
        285.0,
        submitted_total=1000,
        backlog_by_priority=(5, 30, 5),
        retrying=10,
        succeeded_total=900,
        failed_total=4,
        timed_out_total=2,
        retries_total=20,
        attempts_started_total=950,
        processing_sum_s=1800.0,
        processing_count=906,
        processing_buckets=((1.0, 300), (5.0, 900), (10.0, 906), (INF, 906)),
        busy_slot_s_total=1000.0,
        provisioned_slot_s_total=20000.0,
    )
    cur = reading(
        300.0,
        submitted_total=1150,
        backlog_by_priority=(2, 20, 8),
        retrying=3,
        running=25,
        target_concurrency=60,
        serving_concurrency=50,
        warming_concurrency=10,
        succeeded_total=1040,
        failed_total=6,
        timed_out_total=3,
        retries_total=26,
        attempts_started_total=1100,
        processing_sum_s=2130.0,
        processing_count=1049,
        processing_buckets=((1.0, 340), (5.0, 1030), (10.0, 1049), (INF, 1049)),
        busy_slot_s_total=1300.0,
        provisioned_slot_s_total=20900.0,
    )
    s = snapshot_between(prev, cur, start)
    assert (s.time_s, s.interval_s, s.arrivals) == (300.0, 15.0, 150)
    assert (s.backlog_by_priority, s.retrying, s.running) == ((2, 20, 8), 3, 25)
    assert (s.target_concurrency, s.serving_concurrency, s.warming_concurrency) == (60, 50, 10)
    # 140 succeeded; 2 failed after an attempt + 1 timed out = 3 failed, as the simulator counts
    assert (s.succeeded, s.failed, s.timed_out) == (140, 3, 1)
    assert (s.retries, s.attempts_started) == (6, 150)
    assert s.mean_processing_time_s == pytest.approx(330.0 / 143)
    # interval buckets (40, 130, 143, 143): P90 rank 128.7 in (1, 5] holding 90; P99 rank 141.57 in (5, 10]
    assert s.p90_processing_time_s == pytest.approx(1 + 4 * (128.7 - 40) / 90)
    assert s.p99_processing_time_s == pytest.approx(5 + 5 * (141.57 - 130) / 13)
    assert (s.busy_slot_s, s.provisioned_slot_s) == (300.0, 900.0)
    assert s.max_backlog == 50  # prev: 40 queued + 10 retrying; cur: 30 + 3
    assert s.backlog == 33
    # the window runs from `start`: 940 succeeded, 5 failed + 2 timed out
    assert (s.window_succeeded, s.window_failed) == (940, 7)
    assert s.success_rate == pytest.approx(940 / 947)


def test_snapshot_between_quiet_interval_and_counter_reset():
    prev = reading(
        15.0,
        submitted_total=50,
        succeeded_total=50,
        processing_count=50,
        processing_sum_s=60.0,
        busy_slot_s_total=40.0,
        provisioned_slot_s_total=150.0,
    )
    quiet = replace(prev, time_s=30.0, provisioned_slot_s_total=300.0)
    s = snapshot_between(prev, quiet, prev)
    assert (s.arrivals, s.succeeded, s.failed) == (0, 0, 0)
    assert (s.mean_processing_time_s, s.p90_processing_time_s, s.p99_processing_time_s) == (0.0, 0.0, 0.0)
    assert s.success_rate == 1.0  # nothing ended: no evidence of failure
    restarted = reading(45.0, submitted_total=3, succeeded_total=2, provisioned_slot_s_total=10.0)  # exporter restarted
    s = snapshot_between(quiet, restarted, prev)
    assert (s.arrivals, s.succeeded, s.provisioned_slot_s, s.window_succeeded) == (0, 0, 0.0, 0)


def test_snapshot_between_refuses_readings_out_of_order():
    with pytest.raises(ValueError, match="in time order: previous at 30.0 s, current at 15.0 s"):
        snapshot_between(reading(30.0), reading(15.0), reading(0.0))


def test_live_snapshot_feeds_the_same_observation_function_as_the_simulator():
    prev = reading(0.0)
    cur = reading(
        15.0,
        submitted_total=150,
        succeeded_total=100,
        processing_count=100,
        processing_sum_s=100.0,
        processing_buckets=((1.0, 50), (2.0, 90), (3.0, 100), (INF, 100)),
        target_concurrency=100,
        serving_concurrency=100,
        running=10,
        attempts_started_total=100,
        busy_slot_s_total=150.0,
        provisioned_slot_s_total=1500.0,
    )
    live = snapshot_between(prev, cur, prev)
    by_hand = make_snapshot(
        p90_processing_time_s=live.p90_processing_time_s, p99_processing_time_s=live.p99_processing_time_s
    )
    assert live == by_hand
    slis = SLIConfig()
    np.testing.assert_array_equal(
        observation_features(live, None, slis, 400, 1.0), observation_features(by_hand, None, slis, 400, 1.0)
    )


@given(
    st.lists(
        st.tuples(st.sampled_from([5.0, 15.0, 30.0, 60.0]), st.integers(0, 50), st.integers(0, 5)),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([15.0, 60.0, 300.0]),
)
def test_reading_window_matches_the_simulators_trailing_window(intervals, window_s):
    """The live success-rate window covers the same intervals as the simulator's."""
    sim = TrailingWindow(window_s)
    live = ReadingWindow(window_s)
    t, succ, fail = 0.0, 0, 0
    assert live.add(reading(t)) is None
    for dt, s, f in intervals:
        t += dt
        succ += s
        fail += f
        snap = live.add(reading(t, succeeded_total=succ, failed_total=fail))
        assert (snap.window_succeeded, snap.window_failed) == sim.add(t, dt, s, f)


# -- sources -----------------------------------------------------------------------------------------
@dataclass
class Usage:
    cpu_s: float
    rss_bytes: int


def populate(m: ClusterMetrics, scale: int = 1) -> None:
    """A little of everything, in exactly representable numbers."""
    for tenant, ttype in (("shop", "order_processing"), ("shop", "refund"), ("bank", "transfer")):
        m.observe_submitted(tenant, ttype, 10 * scale)
        m.observe_started(tenant, ttype, 8 * scale)
        for _ in range(scale):
            for t in (0.5, 1.5, 3.0, 4.5, 12.0):
                m.observe_outcome(tenant, ttype, "succeeded", t)
            m.observe_outcome(tenant, ttype, "failed", 6.0)
            m.observe_outcome(tenant, ttype, "timed_out")
            m.observe_outcome(tenant, ttype, "retrying")
            m.observe_outcome(tenant, ttype, "lost")
            m.observe_busy(2.5)
    m.observe_backlog("shop", (3 * scale, 40, 7))
    m.observe_backlog("bank", (1, 2, 3))
    m.observe_retrying("shop", 5)
    m.observe_in_flight("shop", 12)
    m.observe_in_flight("bank", 4)
    m.observe_interval(15.0, serving_slots=16, warming_slots=4, target_slots=20)
    m.observe_executors({"shop-0": Usage(1.5, 50_000_000), "bank-0": Usage(0.5, 40_000_000)})
    m.observe_process()
    m.observe_decision("ppo", "policy", "", wanted=20, applied=20, fallback=False)


def test_registry_source_sums_the_exporters_samples():
    m = ClusterMetrics()
    populate(m)
    r = RegistrySource(m, clock=lambda: 42.0).read()
    assert r.time_s == 42.0
    assert (r.submitted_total, r.attempts_started_total) == (30, 24)
    assert r.backlog_by_priority == (4, 42, 10)
    assert (r.retrying, r.running) == (5, 16)
    assert (r.target_concurrency, r.serving_concurrency, r.warming_concurrency) == (20, 16, 4)
    assert (r.succeeded_total, r.failed_total, r.timed_out_total, r.retries_total) == (15, 3, 3, 3)
    assert (r.processing_count, r.processing_sum_s) == (18, 3 * (0.5 + 1.5 + 3.0 + 4.5 + 12.0 + 6.0))
    buckets = dict(r.processing_buckets)
    assert (buckets[0.5], buckets[1.5], buckets[5.0], buckets[7.5], buckets[INF]) == (3, 6, 12, 15, 18)
    assert (r.busy_slot_s_total, r.provisioned_slot_s_total) == (7.5, 300.0)


class FakeProm:
    """Stands in for PrometheusConnect in unit tests: one canned answer per query prefix."""

    def __init__(self, answers: dict[str, list]) -> None:
        self.answers = answers

    def custom_query(self, query: str, params=None):
        for prefix, answer in self.answers.items():
            if query.startswith(prefix):
                return answer
        return []


def test_prometheus_source_refuses_an_old_scrape_and_nan():
    src = PrometheusSource("http://127.0.0.1:1", staleness_s=30.0)
    src._prom = FakeProm({"timestamp(": [{"metric": {}, "value": [1000.0, "900.0"]}]})
    with pytest.raises(
        StaleMetricsError, match=r"autotune_provisioned_slot_seconds_total was last scraped 100.0 s ago"
    ):
        src.read()
    src._prom = FakeProm(
        {
            "timestamp(": [{"metric": {}, "value": [1000.0, "995.0"]}],
            "sum(autotune_concurrency_target_slots)": [{"metric": {}, "value": [995.0, "NaN"]}],
        }
    )
    with pytest.raises(StaleMetricsError, match="autotune_concurrency_target_slots is NaN"):
        src.read()
    src._prom = FakeProm(
        {
            "timestamp(": [{"metric": {}, "value": [1000.0, "995.0"]}],
            "sum(autotune_concurrency_target_slots)": [{"metric": {}, "value": [995.0, "4"]}],
        }
    )
    with pytest.raises(StaleMetricsError, match="autotune_concurrency_actual_slots has no series"):
        src.read()


def test_unreachable_prometheus_is_a_metrics_error_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(MetricsError, match=f"cannot query Prometheus at {url}") as err:
        PrometheusSource(url, timeout_s=2.0).read()
    assert not isinstance(err.value, StaleMetricsError)


# -- a real Prometheus -------------------------------------------------------------------------------
def wait_until_scraped_after(src: PrometheusSource, t: float, timeout_s: float = 30.0) -> None:
    """Until Prometheus holds a scrape that started after ``t`` (so it has everything observed before)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            if src.scrape_time_s() > t:
                return
        except StaleMetricsError as exc:  # not scraped yet
            last = exc
        time.sleep(0.2)
    pytest.fail(f"Prometheus at {src.url} did not scrape the exporter within {timeout_s} s ({last})")


def assert_same_counters(a: MetricsReading, b: MetricsReading) -> None:
    ca, cb = a.counters(), b.counters()
    for name in ("processing_sum_s", "busy_slot_s_total", "provisioned_slot_s_total"):
        assert ca.pop(name) == pytest.approx(cb.pop(name), rel=1e-12), name
    assert ca == cb


@pytest.fixture
def exporter():
    m = ClusterMetrics()
    port = free_port()
    server, _ = m.serve(port)
    yield m, port, server
    server.shutdown()
    server.server_close()


def test_prometheus_reads_back_what_the_exporter_holds(exporter, prometheus_server):
    m, port, _ = exporter
    prom = prometheus_server([f"127.0.0.1:{port}"], rule_files=[RULES])
    src = PrometheusSource(prom.url, timeout_s=5.0, staleness_s=30.0)
    local = RegistrySource(m)

    populate(m)
    wait_until_scraped_after(src, time.time())
    first = src.read()
    assert_same_counters(first, local.read())

    populate(m, scale=2)  # more of every counter; new levels
    wait_until_scraped_after(src, time.time())
    second = src.read()
    assert_same_counters(second, local.read())

    s = snapshot_between(first, second, first)
    assert s.interval_s == pytest.approx(second.time_s - first.time_s) and s.interval_s > 0
    assert (s.arrivals, s.attempts_started) == (60, 48)
    assert (s.succeeded, s.failed, s.timed_out, s.retries) == (30, 12, 6, 6)  # failed: 6 + 6 timed out
    assert s.mean_processing_time_s == pytest.approx(27.5 / 6)
    assert (s.busy_slot_s, s.provisioned_slot_s) == (15.0, 300.0)
    assert s.backlog_by_priority == (7, 42, 10) and s.retrying == 5 and s.running == 16
    assert s.max_backlog == 64  # the larger of 56 + 5 (first) and 59 + 5 (second)

    # the quantile function agrees with Prometheus' own histogram_quantile on the same buckets
    for q in (0.5, 0.9, 0.99):
        [promql] = src._query(
            f"histogram_quantile({q}, sum by (le) (autotune_task_processing_seconds_bucket))", second.time_s
        )
        assert histogram_quantile(q, second.processing_buckets) == pytest.approx(float(promql["value"][1]), rel=1e-12)

    # the recording rules load and evaluate on the real server: the backlog SLI as the snapshot counts it
    deadline = time.monotonic() + 30
    got = None
    while time.monotonic() < deadline:
        result = src._query("autotune:backlog_tasks:sum")
        got = float(result[0]["value"][1]) if result else None
        if got == s.backlog:
            break
        time.sleep(0.3)
    assert got == s.backlog


def test_stale_metrics_from_prometheus(exporter, prometheus_server):
    m, port, server = exporter
    prom = prometheus_server([f"127.0.0.1:{port}"])
    src = PrometheusSource(prom.url, timeout_s=5.0, staleness_s=30.0)
    populate(m)
    m.target.set(math.nan)  # a broken gauge
    wait_until_scraped_after(src, time.time())
    with pytest.raises(StaleMetricsError, match="autotune_concurrency_target_slots is NaN"):
        src.read()

    m.target.set(20)
    wait_until_scraped_after(src, time.time())
    assert src.read().target_concurrency == 20

    server.shutdown()  # the exporter stops: Prometheus marks its series stale at the next failed scrape
    server.server_close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            src.read()
        except StaleMetricsError as exc:
            assert "autotune_provisioned_slot_seconds_total" in str(exc)
            return
        time.sleep(0.3)
    pytest.fail("Prometheus still served the stopped exporter's series after 30 s")
