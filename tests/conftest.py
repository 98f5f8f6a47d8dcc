"""Shared fixtures: small, fast configurations of the simulator."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# CI runs the property tests on a fixed sequence of examples, so a red build can be redone exactly;
# locally they explore new examples each run.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

from core.config import AutotuneConfig, config_from_dict  # noqa: E402 - after the hypothesis profile


def small_config(**sections) -> AutotuneConfig:
    """A short episode (10 simulated minutes) so tests stay fast."""
    data = {"simulation": {"duration_s": 600.0, "peak_rate_per_s": 80.0}}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return config_from_dict(data, "test config")


@pytest.fixture
def cfg() -> AutotuneConfig:
    return small_config()


def make_snapshot(**kw):
    """A hand-built interval: 150 arrivals in 15 s on 100 slots, all SLIs met; override any field."""
    from core.domain import ClusterSnapshot

    base = dict(
        time_s=15.0,
        interval_s=15.0,
        arrivals=150,
        backlog_by_priority=(0, 0, 0),
        retrying=0,
        running=10,
        target_concurrency=100,
        serving_concurrency=100,
        warming_concurrency=0,
        succeeded=100,
        failed=0,
        timed_out=0,
        retries=0,
        attempts_started=100,
        mean_processing_time_s=1.0,
        p90_processing_time_s=2.0,
        p99_processing_time_s=3.0,
        busy_slot_s=150.0,
        provisioned_slot_s=1500.0,
        max_backlog=0,
        window_succeeded=100,
        window_failed=0,
    )
    base.update(kw)
    if "succeeded" in kw or "failed" in kw:  # the success-rate window follows the interval unless given
        base.setdefault("window_succeeded", base["succeeded"])
        base["window_succeeded"], base["window_failed"] = base["succeeded"], base["failed"]
    return ClusterSnapshot(**base)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session (it takes several seconds to start)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="autotune-tests")
    yield ray
    ray.shutdown()
