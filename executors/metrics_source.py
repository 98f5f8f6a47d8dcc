"""The live cluster's metrics as the same :class:`~core.domain.ClusterSnapshot` the simulator builds.

One definition of "a reading of the live cluster's counters" (:class:`MetricsReading`), two places
to take it from, and one pure function from two readings to a snapshot:

- :class:`RegistrySource` reads the exporter's in-process registry (:class:`executors.metrics.
  ClusterMetrics`), for a control loop in the same process as the cluster;
- :class:`PrometheusSource` reads a Prometheus server that scrapes the exporter, with
  prometheus-api-client, one instant query per quantity;
- :func:`snapshot_between` turns (previous reading, current reading, reading at the start of the
  success-rate window) into a snapshot: counts are counter differences, levels are the current
  reading's, P90/P99 interpolate in the interval's bucket counts exactly like PromQL's
  ``histogram_quantile`` (:func:`histogram_quantile`);
- :class:`ReadingWindow` keeps the readings of the trailing success-rate window, with the same
  horizon as :class:`core.domain.TrailingWindow` keeps the simulator's intervals.

Semantics match the simulator (``envs/kernel.py``): a timed-out task is one of the failed (its
``timed_out`` count is also kept apart), its processing time is not in the histogram, and the
success-rate window counts failures, time-outs included. Two approximations are inherent to
metrics: P90/P99 interpolate inside the exporter's buckets (the simulator has a histogram per tick),
and ``max_backlog`` is the larger of the two readings' backlogs (the simulator sees every tick).

A source raises :class:`MetricsError` when it cannot read (the message names the URL), and
:class:`StaleMetricsError` (a subclass) when it can but the numbers must not be trusted: a missing
series, a NaN, or a last scrape older than ``staleness_s``. A control loop falls back to the HPA
on either.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Protocol

from core.domain import ClusterSnapshot
from core.priority import PRIORITY_CLASSES

__all__ = [
    "MetricsError",
    "MetricsReading",
    "PrometheusSource",
    "ReadingWindow",
    "RegistrySource",
    "StaleMetricsError",
    "histogram_quantile",
    "snapshot_between",
]

Buckets = tuple[tuple[float, int], ...]  # (upper bound in seconds, cumulative count), +Inf last


class MetricsError(RuntimeError):
    """The metrics could not be read; the message names where from."""


class StaleMetricsError(MetricsError):
    """The metrics were read but are missing, NaN or too old; the message names the metric."""


@dataclass(frozen=True)
class MetricsReading:
    """The live cluster's counters and levels at one instant (totals since the exporter started)."""

    time_s: float
    submitted_total: int
    backlog_by_priority: tuple[int, int, int]  # queued (not running, not in a backoff): high, normal, low
    retrying: int  # waiting out a retry backoff
    running: int
    target_concurrency: int
    serving_concurrency: int
    warming_concurrency: int
    succeeded_total: int
    failed_total: int  # ended failed after an attempt; time-outs are apart
    timed_out_total: int
    retries_total: int
    attempts_started_total: int
    processing_sum_s: float
    processing_count: int
    processing_buckets: Buckets
    busy_slot_s_total: float
    provisioned_slot_s_total: float

    @property
    def backlog(self) -> int:
        """Tasks waiting to run, as :attr:`ClusterSnapshot.backlog` counts them (retries included)."""
        return sum(self.backlog_by_priority) + self.retrying

    def counters(self) -> dict[str, Any]:
        """Every field but the time (two sources' readings of one cluster agree on these)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "time_s"}


# -- pure functions --------------------------------------------------------------------------------
def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float:
    """The ``q``-quantile of cumulative ``(upper_bound, count)`` buckets, as PromQL computes it.

    A port of Prometheus' ``bucketQuantile`` (promql/quantile.go): sort by bound, merge equal bounds,
    force the counts monotonic, find the first bucket whose count reaches ``q * total``, and
    interpolate linearly inside it (from 0 for the lowest bucket). A quantile in the +Inf bucket is
    the highest finite bound. NaN without a +Inf bucket, with fewer than two buckets, or with no
    observations; -Inf / +Inf for q < 0 / q > 1.
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    merged: dict[float, float] = {}
    for bound, count in buckets:
        merged[float(bound)] = merged.get(float(bound), 0.0) + float(count)
    bs = sorted(merged.items())
    if not bs or not math.isinf(bs[-1][0]):
        return math.nan
    running_max = -math.inf
    for i, (bound, count) in enumerate(bs):
        running_max = max(running_max, count)
        bs[i] = (bound, running_max)
    if len(bs) < 2:
        return math.nan
    observations = bs[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i in range(len(bs) - 1) if bs[i][1] >= rank), len(bs) - 1)
    if b == len(bs) - 1:
        return bs[-2][0]
    if b == 0 and bs[0][0] <= 0:
        return bs[0][0]
    start, end, count = 0.0, bs[b][0], bs[b][1]
    if b > 0:
        start = bs[b - 1][0]
        count -= bs[b - 1][1]
        rank -= bs[b - 1][1]
    return start + (end - start) * (rank / count)


def _delta(cur: float, prev: float) -> float:
    # a counter that went down was reset (the exporter restarted): count nothing rather than negative
    return max(0.0, cur - prev)


def _bucket_delta(cur: Buckets, prev: Buckets) -> list[tuple[float, float]]:
    before = dict(prev)
    return [(bound, _delta(count, before.get(bound, 0))) for bound, count in cur]


def snapshot_between(prev: MetricsReading, cur: MetricsReading, window_start: MetricsReading) -> ClusterSnapshot:
    """The interval from ``prev`` to ``cur`` as the simulator describes one (pure).

    ``window_start`` is the reading at the start of the trailing success-rate window (see
    :class:`ReadingWindow`); ``prev`` itself when the window is one interval. Counter differences
    are clamped at 0 (a reset); an interval with no ended task has processing times 0, like the
    simulator's.
    """
    interval_s = cur.time_s - prev.time_s
    if not interval_s > 0:
        raise ValueError(f"readings must be in time order: previous at {prev.time_s} s, current at {cur.time_s} s")

    def d(name: str, base: MetricsReading = prev) -> int:
        return round(_delta(getattr(cur, name), getattr(base, name)))

    timed_out = d("timed_out_total")
    ended = _delta(cur.processing_count, prev.processing_count)
    if ended > 0:
        mean_s = _delta(cur.processing_sum_s, prev.processing_sum_s) / ended
        buckets = _bucket_delta(cur.processing_buckets, prev.processing_buckets)
        p90 = histogram_quantile(0.90, buckets)
        p99 = histogram_quantile(0.99, buckets)
        p90 = 0.0 if math.isnan(p90) else p90  # no +Inf bucket: nothing to interpolate in
        p99 = 0.0 if math.isnan(p99) else p99
    else:
        mean_s = p90 = p99 = 0.0
    return ClusterSnapshot(
        time_s=cur.time_s,
        interval_s=interval_s,
        arrivals=d("submitted_total"),
        backlog_by_priority=cur.backlog_by_priority,
        retrying=cur.retrying,
        running=cur.running,
        target_concurrency=cur.target_concurrency,
        serving_concurrency=cur.serving_concurrency,
        warming_concurrency=cur.warming_concurrency,
        succeeded=d("succeeded_total"),
        failed=d("failed_total") + timed_out,  # the simulator's failed includes its timed out
        timed_out=timed_out,
        retries=d("retries_total"),
        attempts_started=d("attempts_started_total"),
        mean_processing_time_s=mean_s,
        p90_processing_time_s=p90,
        p99_processing_time_s=p99,
        busy_slot_s=_delta(cur.busy_slot_s_total, prev.busy_slot_s_total),
        provisioned_slot_s=_delta(cur.provisioned_slot_s_total, prev.provisioned_slot_s_total),
        max_backlog=max(prev.backlog, cur.backlog),
        window_succeeded=d("succeeded_total", window_start),
        window_failed=d("failed_total", window_start) + d("timed_out_total", window_start),
    )


class ReadingWindow:
    """The readings of the trailing success-rate window, and snapshots built from them.

    The window starts where :class:`core.domain.TrailingWindow` starts the simulator's: at the
    beginning of the oldest interval ending later than ``window_s`` before now (the current interval
    always counts). Adapter state, like ``TrailingWindow``; the arithmetic is :func:`snapshot_between`.
    """

    def __init__(self, window_s: float) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        self._readings: deque[MetricsReading] = deque()

    def add(self, reading: MetricsReading) -> ClusterSnapshot | None:
        """Record a reading; the snapshot of the interval it ends (None for the first reading)."""
        r = self._readings
        if r and reading.time_s <= r[-1].time_s:
            raise ValueError(f"reading at {reading.time_s} s is not after the previous one at {r[-1].time_s} s")
        r.append(reading)
        if len(r) < 2:
            return None
        horizon = reading.time_s - self.window_s + 1e-9
        # drop the oldest reading while the interval starting at the next one still ends past the horizon
        while len(r) > 2 and r[1].time_s < horizon:
            r.popleft()
        return snapshot_between(r[-2], r[-1], r[0])

    def clear(self) -> None:
        self._readings.clear()


# -- sources ---------------------------------------------------------------------------------------
def _by_class(levels: Mapping[str, float]) -> tuple[int, int, int]:
    high, normal, low = (_int(levels.get(p, 0.0)) for p in PRIORITY_CLASSES)
    return high, normal, low


def _int(x: float) -> int:
    return round(x)


def _buckets(by_le: Mapping[str, float]) -> Buckets:
    return tuple(sorted((float(le), _int(n)) for le, n in by_le.items()))


class MetricsSource(Protocol):
    """Where the tuning loop reads the cluster's counters: :class:`RegistrySource` (the in-process
    exporter) or :class:`PrometheusSource`. ``read`` raises :class:`MetricsError` when it cannot."""

    def read(self) -> MetricsReading: ...


class RegistrySource:
    """Reads the in-process exporter: sums the registry's samples over their labels."""

    def __init__(self, metrics: Any, clock: Callable[[], float] = time.time) -> None:
        self.registry = metrics.registry
        self.clock = clock

    def read(self) -> MetricsReading:
        totals: dict[str, float] = {}
        by: dict[tuple[str, str], dict[str, float]] = {}
        grouped = {
            "autotune_backlog_tasks": "priority",
            "autotune_task_outcomes_total": "outcome",
            "autotune_task_processing_seconds_bucket": "le",
        }
        now = self.clock()
        for family in self.registry.collect():
            for s in family.samples:
                totals[s.name] = totals.get(s.name, 0.0) + s.value
                label = grouped.get(s.name)
                if label is not None:
                    g = by.setdefault((s.name, label), {})
                    g[s.labels[label]] = g.get(s.labels[label], 0.0) + s.value
        t = totals.get
        backlog = by.get(("autotune_backlog_tasks", "priority"), {})
        outcomes = by.get(("autotune_task_outcomes_total", "outcome"), {})
        return MetricsReading(
            time_s=now,
            submitted_total=_int(t("autotune_tasks_submitted_total", 0.0)),
            backlog_by_priority=_by_class(backlog),
            retrying=_int(t("autotune_retrying_tasks", 0.0)),
            running=_int(t("autotune_in_flight_tasks", 0.0)),
            target_concurrency=_int(t("autotune_concurrency_target_slots", 0.0)),
            serving_concurrency=_int(t("autotune_concurrency_actual_slots", 0.0)),
            warming_concurrency=_int(t("autotune_concurrency_warming_slots", 0.0)),
            succeeded_total=_int(outcomes.get("succeeded", 0.0)),
            failed_total=_int(outcomes.get("failed", 0.0)),
            timed_out_total=_int(outcomes.get("timed_out", 0.0)),
            retries_total=_int(t("autotune_task_retries_total", 0.0)),
            attempts_started_total=_int(t("autotune_task_attempts_started_total", 0.0)),
            processing_sum_s=t("autotune_task_processing_seconds_sum", 0.0),
            processing_count=_int(t("autotune_task_processing_seconds_count", 0.0)),
            processing_buckets=_buckets(by.get(("autotune_task_processing_seconds_bucket", "le"), {})),
            busy_slot_s_total=t("autotune_busy_slot_seconds_total", 0.0),
            provisioned_slot_s_total=t("autotune_provisioned_slot_seconds_total", 0.0),
        )


# The exporter always exports these (unlabelled); the labelled families appear with their first
# label values, so a missing labelled family is a zero, while a missing one of these is stale data.
ANCHOR = "autotune_provisioned_slot_seconds_total"
REQUIRED = (
    "autotune_concurrency_target_slots",
    "autotune_concurrency_actual_slots",
    "autotune_concurrency_warming_slots",
    "autotune_busy_slot_seconds_total",
    ANCHOR,
)


class PrometheusSource:
    """Reads the exporter's series back from a Prometheus server (prometheus-api-client).

    One reading is consistent: the time of the newest scrape of the exporter is read first, and
    every quantity is then evaluated at that instant (a scrape that lands meanwhile is not mixed in).
    ``staleness_s``: a last scrape older than this is stale (so is a series Prometheus marked stale
    after a failed scrape, which drops out of queries at once).
    """

    def __init__(self, url: str, *, timeout_s: float = 5.0, staleness_s: float = 30.0) -> None:
        from prometheus_api_client import PrometheusConnect
        from urllib3.util.retry import Retry

        if not staleness_s > 0:
            raise ValueError(f"staleness_s must be > 0, got {staleness_s}")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.staleness_s = staleness_s
        # no client-side retries: the control loop asks again next interval, and falls back meanwhile
        self._prom = PrometheusConnect(url=self.url, retry=Retry(total=0, raise_on_status=False), timeout=timeout_s)

    def _query(self, promql: str, at_s: float | None = None) -> list[dict]:
        from prometheus_api_client import PrometheusApiClientException
        from requests import RequestException

        params = {} if at_s is None else {"time": f"{at_s:.3f}"}
        try:
            return self._prom.custom_query(promql, params=params)
        except (RequestException, PrometheusApiClientException, ValueError, KeyError) as exc:
            raise MetricsError(f"cannot query Prometheus at {self.url} ({promql}): {exc}") from exc

    @staticmethod
    def _value(sample: dict, metric: str) -> float:
        v = float(sample["value"][1])
        if math.isnan(v):
            raise StaleMetricsError(f"metric {metric} is NaN in Prometheus")
        return v

    def _scalar(self, metric: str, at_s: float, required: bool = False) -> float:
        result = self._query(f"sum({metric})", at_s)
        if not result:
            if required:
                raise StaleMetricsError(f"metric {metric} has no series in Prometheus at {self.url}")
            return 0.0
        return self._value(result[0], metric)

    def _by(self, metric: str, label: str, at_s: float) -> dict[str, float]:
        return {
            s["metric"].get(label, ""): self._value(s, metric)
            for s in self._query(f"sum by ({label}) ({metric})", at_s)
        }

    def scrape_time_s(self) -> float:
        """When Prometheus last scraped the exporter (epoch seconds); stale or missing: raises."""
        result = self._query(f"timestamp({ANCHOR})")
        if not result:
            raise StaleMetricsError(
                f"metric {ANCHOR} has no current series in Prometheus at {self.url} (is the exporter up and scraped?)"
            )
        stamps = [(float(s["value"][0]), self._value(s, ANCHOR)) for s in result]
        now_s = max(e for e, _ in stamps)
        scraped_s = min(ts for _, ts in stamps)
        if now_s - scraped_s > self.staleness_s:
            raise StaleMetricsError(
                f"metric {ANCHOR} was last scraped {now_s - scraped_s:.1f} s ago "
                f"(staleness limit {self.staleness_s} s) in Prometheus at {self.url}"
            )
        return scraped_s

    def read(self) -> MetricsReading:
        at = self.scrape_time_s()
        req = {m: self._scalar(m, at, required=True) for m in REQUIRED}
        backlog = self._by("autotune_backlog_tasks", "priority", at)
        outcomes = self._by("autotune_task_outcomes_total", "outcome", at)
        return MetricsReading(
            time_s=at,
            submitted_total=_int(self._scalar("autotune_tasks_submitted_total", at)),
            backlog_by_priority=_by_class(backlog),
            retrying=_int(self._scalar("autotune_retrying_tasks", at)),
            running=_int(self._scalar("autotune_in_flight_tasks", at)),
            target_concurrency=_int(req["autotune_concurrency_target_slots"]),
            serving_concurrency=_int(req["autotune_concurrency_actual_slots"]),
            warming_concurrency=_int(req["autotune_concurrency_warming_slots"]),
            succeeded_total=_int(outcomes.get("succeeded", 0.0)),
            failed_total=_int(outcomes.get("failed", 0.0)),
            timed_out_total=_int(outcomes.get("timed_out", 0.0)),
            retries_total=_int(self._scalar("autotune_task_retries_total", at)),
            attempts_started_total=_int(self._scalar("autotune_task_attempts_started_total", at)),
            processing_sum_s=self._scalar("autotune_task_processing_seconds_sum", at),
            processing_count=_int(self._scalar("autotune_task_processing_seconds_count", at)),
            processing_buckets=_buckets(self._by("autotune_task_processing_seconds_bucket", "le", at)),
            busy_slot_s_total=req["autotune_busy_slot_seconds_total"],
            provisioned_slot_s_total=req[ANCHOR],
        )

    def close(self) -> None:
        self._prom.close()
