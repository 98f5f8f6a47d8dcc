"""Load profiles: what arrives, when.

A scenario is a name (``constant``, ``diurnal``, ``flash-sale``, ``step``, ``bursty``, ``worldcup``,
``worldcup-holdout``) or ``trace:PATH.csv``. ``bursty`` is drawn anew from the seed at every reset
(a wandering base load with sudden surges), so no two episodes share its shape. Each gives a relative load shape over the episode,
scaled so that its peak equals ``simulation.peak_rate_per_s``. Traces are replayed with
``time_compression`` trace-seconds per simulated second, starting ``trace_offset_s`` into the trace,
wrapping around if the episode outlasts it.

Arrivals are Poisson per tick at the profile's rate, split over the priority classes by the task
type's ``priority_mix``; they are drawn once at reset, so the arrivals of an episode are fixed by its
seed whatever policy runs (common random numbers), and the clairvoyant oracle can see them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from core.config import SCENARIO_NAMES, SimulationConfig
from envs.kernel import split_systematic
from envs.trace import Trace, load_trace, packaged_trace_path

Shape = Callable[[np.ndarray, SimulationConfig], np.ndarray]


class UnknownScenarioError(ValueError):
    pass


def _constant(t: np.ndarray, sim: SimulationConfig) -> np.ndarray:
    return np.ones_like(t)


def _diurnal(t: np.ndarray, sim: SimulationConfig) -> np.ndarray:
    """A compressed day: trough 10% of peak at the start, peak half a day later."""
    period_s = 86_400.0 / sim.time_compression
    return 0.55 - 0.45 * np.cos(2 * math.pi * t / period_s)


def _flash_sale(t: np.ndarray, sim: SimulationConfig) -> np.ndarray:
    """25% load; at a third of the episode a 30 s surge to peak, held for 10%, decaying after."""
    d = sim.duration_s
    start, ramp_s, hold_s, decay_s = d / 3, 30.0, 0.1 * d, 0.05 * d
    shape = np.full_like(t, 0.25)
    rising = (t >= start) & (t < start + ramp_s)
    shape[rising] = 0.25 + 0.75 * (t[rising] - start) / ramp_s
    held = (t >= start + ramp_s) & (t < start + ramp_s + hold_s)
    shape[held] = 1.0
    after = t >= start + ramp_s + hold_s
    shape[after] = 0.25 + 0.75 * np.exp(-(t[after] - start - ramp_s - hold_s) / decay_s)
    return shape


def _step(t: np.ndarray, sim: SimulationConfig) -> np.ndarray:
    """30% load, a step to peak for the middle third of the episode, back to 30%."""
    d = sim.duration_s
    return np.where((t >= d / 3) & (t < 2 * d / 3), 1.0, 0.3)


NAMED_SHAPES: dict[str, Shape] = {
    "constant": _constant,
    "diurnal": _diurnal,
    "flash-sale": _flash_sale,
    "step": _step,
}


def bursty_shape(t: np.ndarray, sim: SimulationConfig, rng: np.random.Generator) -> np.ndarray:
    """A random load: a log-normal base wandering on a time scale of minutes (Ornstein-Uhlenbeck),
    a slow daily swing, and surges (Poisson, about one per 15 minutes) that ramp up within a minute,
    hold for 1-10 minutes at 1.5-4x and decay. Normalised to peak at 1."""
    step_s = 10.0
    n = int(math.ceil(t[-1] / step_s)) + 2 if len(t) else 2
    grid = np.arange(n) * step_s
    theta, sigma = step_s / 300.0, 0.35 * math.sqrt(2 * step_s / 300.0)
    noise = rng.standard_normal(n)
    x = np.empty(n)
    x[0] = rng.normal(0.0, 0.35)
    for i in range(1, n):  # n is a few hundred: a loop is fine
        x[i] = x[i - 1] * (1 - theta) + sigma * noise[i]
    phase = rng.uniform(0, 2 * math.pi)
    period_s = 86_400.0 / sim.time_compression
    base = np.exp(x) * (0.65 - 0.35 * np.cos(2 * math.pi * grid / period_s + phase))
    surge = np.zeros(n)
    for start in np.cumsum(rng.exponential(900.0, size=int(grid[-1] / 900.0) + 4)):
        if start > grid[-1]:
            break
        height = rng.uniform(0.5, 3.0)
        ramp_s, hold_s, decay_s = rng.uniform(10, 60), rng.uniform(60, 600), rng.uniform(60, 300)
        dt = grid - start
        up = np.clip(dt / ramp_s, 0, 1)
        down = np.where(dt > ramp_s + hold_s, np.exp(-(dt - ramp_s - hold_s) / decay_s), 1.0)
        surge = np.maximum(surge, height * up * down * (dt >= 0))
    shape = base * (1 + surge)
    shape = np.interp(t, grid, shape)
    return shape / shape.max()


STOCHASTIC_SHAPES = {"bursty": bursty_shape}
PACKAGED_TRACES = {"worldcup": "worldcup98_day", "worldcup-holdout": "worldcup98_holdout_day"}
SCENARIOS: tuple[str, ...] = (*NAMED_SHAPES, *STOCHASTIC_SHAPES, *PACKAGED_TRACES)
if SCENARIOS != SCENARIO_NAMES:  # the config's schema names them: one list, checked here
    raise RuntimeError(f"envs.scenarios implements {SCENARIOS}, core.config.SCENARIO_NAMES says {SCENARIO_NAMES}")
STANDARD_SCENARIO = "diurnal"


@lru_cache(maxsize=8)
def _packaged(name: str) -> Trace:
    return load_trace(packaged_trace_path(name))


def scenario_trace(scenario: str) -> Trace | None:
    """The trace a scenario replays, or None for a synthetic shape. Raises on unknown names."""
    if scenario in NAMED_SHAPES or scenario in STOCHASTIC_SHAPES:
        return None
    if scenario in PACKAGED_TRACES:
        return _packaged(PACKAGED_TRACES[scenario])
    if scenario.startswith("trace:"):
        path = scenario.removeprefix("trace:")
        if not path:
            raise UnknownScenarioError("scenario 'trace:' needs a path, e.g. trace:data/day.csv")
        return load_trace(Path(path))
    raise UnknownScenarioError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)} or trace:PATH.csv")


def validate_scenario(scenario: str) -> None:
    """Fail early (unknown name, unreadable trace) with the scenario's own error."""
    scenario_trace(scenario)


def _trace_shape(trace: Trace, t: np.ndarray, sim: SimulationConfig) -> np.ndarray:
    rates = trace.rates_per_s
    length_s = trace.bin_s * len(rates)
    tau = (sim.trace_offset_s + t * sim.time_compression) % length_s
    centres = (np.arange(len(rates)) + 0.5) * trace.bin_s
    shape = np.interp(tau, centres, rates, period=length_s)
    peak = shape.max()
    return shape / peak if peak > 0 else shape


def load_shape(
    scenario: str,
    sim: SimulationConfig,
    t: np.ndarray,
    trace: Trace | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Relative load in [0, 1] at simulated times ``t`` (seconds since the episode start).

    Stochastic shapes (``bursty``) need ``rng``; the environment passes its own at every reset.
    """
    if scenario in NAMED_SHAPES:
        return NAMED_SHAPES[scenario](t, sim)
    if scenario in STOCHASTIC_SHAPES:
        if rng is None:
            raise ValueError(f"scenario {scenario!r} is random: it needs a generator")
        return STOCHASTIC_SHAPES[scenario](t, sim, rng)
    trace = trace if trace is not None else scenario_trace(scenario)
    assert trace is not None
    return _trace_shape(trace, t, sim)


def arrival_rates_per_s(
    scenario: str,
    sim: SimulationConfig,
    tick_s: float,
    trace: Trace | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Arrival rate per second at the middle of every tick of the episode."""
    n_ticks = int(math.ceil(sim.duration_s / tick_s)) + 1
    t = (np.arange(n_ticks) + 0.5) * tick_s
    return sim.peak_rate_per_s * load_shape(scenario, sim, t, trace, rng)


def draw_arrivals(
    rates_per_s: np.ndarray, tick_s: float, priority_mix: tuple[float, float, float], rng: np.random.Generator
) -> np.ndarray:
    """Poisson arrivals per tick, split over priority classes: int64[n_ticks, 3].

    The split is systematic sampling with one uniform number per tick (exact in the mean, integer,
    conserving the tick's total): a third of the Poisson draws that independent per-class streams
    would need, which is most of the cost of a reset.
    """
    total = rng.poisson(rates_per_s * tick_s).astype(np.int64, copy=False)
    u = rng.random(len(total))
    cum_mix = np.cumsum(np.asarray(priority_mix, dtype=np.float64))
    cum_mix[-1] = 1.0
    return split_systematic(total, u, cum_mix)
