"""Shared fixtures: small, fast configurations of the simulator."""

from __future__ import annotations

import pytest

from autotune.config import AutotuneConfig, config_from_dict


def small_config(**sections) -> AutotuneConfig:
    """A short episode (10 simulated minutes) so tests stay fast."""
    data = {"simulation": {"duration_s": 600.0, "peak_rate_per_s": 80.0}}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return config_from_dict(data, "test config")


@pytest.fixture
def cfg() -> AutotuneConfig:
    return small_config()
