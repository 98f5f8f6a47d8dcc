"""The stochastic load families (mmpp, onoff, flash-crowd, weekly): determinism, range, and the
property that defines each."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.config import SimulationConfig
from envs.scaling_env import ConcurrencyScalingEnv
from envs.scenarios import STOCHASTIC_SHAPES, load_shape
from tests.conftest import small_config

FAMILIES = ("mmpp", "onoff", "flash-crowd", "weekly")
TICK_S = 0.5


def _times(duration_s: float) -> np.ndarray:
    return (np.arange(int(duration_s / TICK_S) + 1) + 0.5) * TICK_S


def _shape(name: str, seed: int, duration_s: float = 3600.0, compression: float = 24.0) -> np.ndarray:
    sim = SimulationConfig(duration_s=duration_s, time_compression=compression)
    return load_shape(name, sim, _times(duration_s), rng=np.random.default_rng(seed))


def _runs(mask: np.ndarray) -> tuple[np.ndarray, bool]:
    """Lengths (s) of the complete runs of equal values in ``mask`` (the partial first and last
    runs are dropped), and whether the first complete run is True."""
    changes = np.flatnonzero(np.diff(mask.astype(np.int8)))
    return np.diff(changes) * TICK_S, bool(mask[changes[0] + 1])


@pytest.mark.parametrize("name", FAMILIES)
def test_family_is_registered_and_random(name):
    assert name in STOCHASTIC_SHAPES
    with pytest.raises(ValueError, match="needs a generator"):
        load_shape(name, SimulationConfig(), _times(60.0))


@pytest.mark.parametrize("name", FAMILIES)
def test_family_is_deterministic_per_seed_and_differs_across_seeds(name):
    a, b = _shape(name, 3), _shape(name, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, _shape(name, 4))


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("seed", range(5))
def test_family_is_finite_non_negative_and_peaks_at_one(name, seed):
    x = _shape(name, seed)
    assert x.shape == _times(3600.0).shape
    assert np.isfinite(x).all() and (x >= 0).all()
    assert x.max() == pytest.approx(1.0)
    assert x.min() > 0  # a family never switches the load off entirely


@pytest.mark.parametrize("seed", range(10))
def test_mmpp_is_piecewise_constant_over_two_to_four_levels(seed):
    x = _shape("mmpp", seed)
    levels = np.unique(x)
    assert 2 <= len(levels) <= 4
    switches = np.count_nonzero(np.diff(x))
    assert switches <= len(x) / 20  # it holds each level for dwells, not tick by tick
    assert levels.min() <= levels.max() / 1.3  # the levels are at least 1.3x apart


def test_onoff_periods_have_a_heavier_tail_than_exponential():
    """Pooled over ten 10-hour episodes, each on or off period over its episode's median of that
    kind: an exponential sample of that size has max/median about log2(n) and a coefficient of
    variation of 1; Pareto periods with shape < 2 give far more."""
    pooled = []
    for seed in range(10):
        x = _shape("onoff", seed, duration_s=36_000.0)
        runs, first_on = _runs(x > 1.5 * x.min())  # on = base + a burst of >= 0.3 >= 2x the base
        on, off = (runs[0::2], runs[1::2]) if first_on else (runs[1::2], runs[0::2])
        for periods in (on, off):
            assert len(periods) >= 20
            pooled.extend(periods / np.median(periods))
    p = np.array(pooled)
    exponential_max_over_median = math.log2(len(p))
    assert p.max() > 5 * exponential_max_over_median
    assert p.std() / p.mean() > 1.5


@pytest.mark.parametrize("seed", range(10))
def test_flash_crowd_rises_at_least_twofold_within_a_ramp(seed):
    x = _shape("flash-crowd", seed)
    window = int(300.0 / TICK_S)  # the longest ramp
    assert (x[window:] / x[:-window]).max() >= 2.0


@pytest.mark.parametrize("seed", range(10))
def test_weekly_weekend_is_lighter_than_weekdays(seed):
    # a week in the episode: 86,400 * 7 / 168 = 3,600 simulated seconds
    compression = 168.0
    x = _shape("weekly", seed, compression=compression)
    start_day = np.random.default_rng(seed).integers(7)  # the generator's first draw, as documented
    day_of_week = (start_day + np.floor(_times(3600.0) * compression / 86_400.0).astype(int)) % 7
    weekend = day_of_week >= 5
    assert weekend.any() and (~weekend).any()
    assert x[weekend].mean() < 0.9 * x[~weekend].mean()


def test_weekly_follows_the_compressed_day():
    """At the default compression a day is the 1-hour episode: the load is lowest near its start
    and end (midnight, shifted by at most 2 hours) and highest in the middle."""
    for seed in range(5):
        x = _shape("weekly", seed)
        n = len(x)
        assert x[n * 3 // 8 : n * 5 // 8].mean() > 1.5 * x[: n // 12].mean()


@pytest.mark.parametrize("name", FAMILIES)
def test_env_runs_an_episode_of_each_family(name):
    env = ConcurrencyScalingEnv(small_config(), scenario=name)
    env.reset(seed=0)
    first = env.arrival_rates_per_s.copy()
    assert first.max() == pytest.approx(80.0)  # scaled to the configured peak
    steps, done = 0, False
    while not done:
        _, reward, terminated, truncated, _ = env.step(1)
        assert math.isfinite(reward)
        done = terminated or truncated
        steps += 1
    assert steps == 600 / 15
    env.reset(seed=1)
    assert not np.array_equal(first, env.arrival_rates_per_s)  # a new shape every episode


def test_cli_lists_the_families(capsys):
    from autotune.cli import main

    assert main(["scenarios"]) == 0
    out = capsys.readouterr().out
    for name in FAMILIES:
        assert f"{name}:" in out, name
