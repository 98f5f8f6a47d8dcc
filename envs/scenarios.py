"""Load profiles: what arrives, when.

A scenario is a name (``constant``, ``diurnal``, ``flash-sale``, ``step``, ``bursty``, ``mmpp``,
``onoff``, ``flash-crowd``, ``weekly``, ``worldcup``, ``worldcup-holdout``) or ``trace:PATH.csv``.
The stochastic families (:data:`STOCHASTIC_SHAPES`) are drawn anew from the seed at every reset, so
no two episodes share a shape: ``bursty`` (a wandering base load with sudden surges), ``mmpp``
(a Markov chain over 2-4 rate levels), ``onoff`` (heavy-tailed on/off bursts), ``flash-crowd``
(one to three crowds of 2-10x) and ``weekly`` (daily and weekly cycles with noise); each
generator's docstring states the ranges its parameters are drawn from. Each scenario gives a
relative load shape over the episode, scaled so that its peak equals ``simulation.peak_rate_per_s``. Traces are replayed with
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

from core.config import SCENARIO_NAMES, SimulationConfig, TraceGaps
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


# --- Families for a broad training distribution (issue 14) ---------------------------------------
# Each draws its parameters from the stated ranges with the episode's generator, so the family is a
# distribution over shapes, not one curve. Times are simulated seconds (what the controller lives
# in) except for the daily and weekly cycles of ``weekly``, which are compressed like ``diurnal``.


def _span_s(t: np.ndarray) -> float:
    return float(t[-1]) if len(t) else 0.0


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _log_ou_noise(
    rng: np.random.Generator, t: np.ndarray, sigma: float, tau_s: float, step_s: float = 5.0
) -> np.ndarray:
    """exp(x) at ``t``, x an Ornstein-Uhlenbeck process (stationary sd ``sigma``, time scale
    ``tau_s``) sampled every ``step_s`` and interpolated."""
    n = int(math.ceil(_span_s(t) / step_s)) + 2
    a = math.exp(-step_s / tau_s)
    innovations = rng.standard_normal(n) * sigma * math.sqrt(1 - a * a)
    x = np.empty(n)
    x[0] = rng.normal(0.0, sigma)
    for i in range(1, n):  # a few hundred to a few thousand points: a loop is fine
        x[i] = a * x[i - 1] + innovations[i]
    return np.exp(np.interp(t, np.arange(n) * step_s, x))


def _normalised(shape: np.ndarray) -> np.ndarray:
    peak = shape.max() if len(shape) else 0.0
    return shape / peak if peak > 0 else shape


def mmpp_shape(t: np.ndarray, sim: SimulationConfig, rng: np.random.Generator) -> np.ndarray:
    """Markov-modulated rate: a continuous-time Markov chain over 2-4 rate levels, with random dwells.

    Levels: the top one is 1, each lower one is the one above divided by U(1.3, 3), so they span
    1 down to about 1/27. Each level has its own mean dwell, log-uniform in 30-600 s; dwells are
    exponential, truncated at a quarter of the episode so that every episode visits several levels;
    at the end of a dwell the chain jumps to one of the other levels, chosen uniformly. The start
    level is uniform. The rate is piecewise constant; normalised to peak at 1 (the highest level
    visited)."""
    n_levels = int(rng.integers(2, 5))
    levels = np.cumprod(np.r_[1.0, 1.0 / rng.uniform(1.3, 3.0, size=n_levels - 1)])
    mean_dwell_s = np.array([_log_uniform(rng, 30.0, 600.0) for _ in range(n_levels)])
    span_s = _span_s(t)
    cap_s = max(span_s / 4, 1.0)
    state = int(rng.integers(n_levels))
    switch_s, states = [0.0], [state]
    while switch_s[-1] <= span_s:
        switch_s.append(switch_s[-1] + min(rng.exponential(mean_dwell_s[state]), cap_s))
        state = (state + int(rng.integers(1, n_levels))) % n_levels  # any level but this one
        states.append(state)
    idx = np.searchsorted(np.asarray(switch_s), t, side="right") - 1
    return _normalised(levels[np.asarray(states)[idx]])


def onoff_shape(t: np.ndarray, sim: SimulationConfig, rng: np.random.Generator) -> np.ndarray:
    """Heavy-tailed on/off bursts: Pareto-distributed on and off periods, each burst its own height.

    Off periods carry a base load U(0.05, 0.3); an on period adds a burst of height U(0.3, 1.0),
    drawn per burst. On and off durations are Pareto (type I) with scales U(10, 60) s (on) and
    U(20, 180) s (off) and shapes U(1.2, 1.8) each, so their variance is infinite: most periods are
    short and a few are very long (the self-similar traffic of Leland et al. 1994). Each period is
    truncated at a quarter of the episode. The episode starts on or off with even odds.
    Normalised to peak at 1."""
    base = rng.uniform(0.05, 0.3)
    scale_on_s, scale_off_s = rng.uniform(10.0, 60.0), rng.uniform(20.0, 180.0)
    alpha_on, alpha_off = rng.uniform(1.2, 1.8), rng.uniform(1.2, 1.8)
    span_s = _span_s(t)
    cap_s = max(span_s / 4, 1.0)
    on = bool(rng.integers(2))
    switch_s, heights = [0.0], []
    while switch_s[-1] <= span_s:
        scale, alpha = (scale_on_s, alpha_on) if on else (scale_off_s, alpha_off)
        switch_s.append(switch_s[-1] + min(scale * (1.0 + rng.pareto(alpha)), cap_s))
        heights.append(rng.uniform(0.3, 1.0) if on else 0.0)
        on = not on
    idx = np.searchsorted(np.asarray(switch_s), t, side="right") - 1
    return _normalised(base + np.asarray(heights)[idx])


def flash_crowd_shape(t: np.ndarray, sim: SimulationConfig, rng: np.random.Generator) -> np.ndarray:
    """One to three flash crowds of 2-10x over a noisy base: a linear ramp of 5 s-5 min, a hold, a decay.

    The base is log-normal noise (an Ornstein-Uhlenbeck log with sd U(0.05, 0.2), time scale
    U(60, 600) s). Each crowd multiplies it by up to its height U(2, 10): it starts at U(5%, 80%) of
    the episode, ramps up linearly over a log-uniform 5-300 s, holds for U(0, 600) s and decays
    exponentially with a time constant log-uniform in 30-900 s. Where crowds overlap the larger
    multiplier wins. Normalised to peak at 1."""
    n_crowds = int(rng.integers(1, 4))
    span_s = _span_s(t)
    multiplier = np.ones_like(t, dtype=np.float64)
    for _ in range(n_crowds):
        height = rng.uniform(2.0, 10.0)
        start_s = rng.uniform(0.05, 0.8) * span_s
        ramp_s, hold_s, decay_s = _log_uniform(rng, 5.0, 300.0), rng.uniform(0.0, 600.0), _log_uniform(rng, 30.0, 900.0)
        dt = t - start_s
        up = np.clip(dt / ramp_s, 0.0, 1.0)
        down = np.where(dt > ramp_s + hold_s, np.exp(-(dt - ramp_s - hold_s) / decay_s), 1.0)
        multiplier = np.maximum(multiplier, 1.0 + (height - 1.0) * up * down)
    noise = _log_ou_noise(rng, t, sigma=rng.uniform(0.05, 0.2), tau_s=rng.uniform(60.0, 600.0))
    return _normalised(noise * multiplier)


WEEKEND_DAYS = (5, 6)  # day 0 is a Monday


def weekly_shape(t: np.ndarray, sim: SimulationConfig, rng: np.random.Generator) -> np.ndarray:
    """Diurnal and weekly cycles with multiplicative noise, compressed by ``time_compression``.

    A day (``86,400 / time_compression`` simulated seconds, as in ``diurnal``) swings from a trough
    of U(10%, 40%) of its peak at midnight (shifted by U(-2, 2) hours) to the peak half a day
    later. Saturday and Sunday are scaled by U(0.35, 0.8); every day by its own log-normal level
    (sd 0.05). The episode starts at midnight of a uniformly drawn day of the week, so a short
    episode sees one day and its neighbour. Multiplicative noise: a log Ornstein-Uhlenbeck process
    with sd U(0.05, 0.2) and time scale U(30, 300) simulated seconds. Normalised to peak at 1."""
    start_day = int(rng.integers(7))
    trough = rng.uniform(0.1, 0.4)
    shift_days = rng.uniform(-2.0, 2.0) / 24.0
    weekend_factor = rng.uniform(0.35, 0.8)
    day_s = 86_400.0 / sim.time_compression
    days = start_day + t / day_s
    day_index = np.floor(days).astype(np.int64)
    n_days = int(day_index.max() - start_day) + 1 if len(t) else 1
    day_level = np.exp(rng.normal(0.0, 0.05, size=n_days))
    daily = trough + (1 - trough) * 0.5 * (1 - np.cos(2 * math.pi * (days - shift_days)))
    weekend = np.isin(day_index % 7, WEEKEND_DAYS)
    level = day_level[day_index - start_day] * np.where(weekend, weekend_factor, 1.0)
    noise = _log_ou_noise(rng, t, sigma=rng.uniform(0.05, 0.2), tau_s=rng.uniform(30.0, 300.0))
    return _normalised(daily * level * noise)


STOCHASTIC_SHAPES = {
    "bursty": bursty_shape,
    "mmpp": mmpp_shape,
    "onoff": onoff_shape,
    "flash-crowd": flash_crowd_shape,
    "weekly": weekly_shape,
}
PACKAGED_TRACES = {"worldcup": "worldcup98_day", "worldcup-holdout": "worldcup98_holdout_day"}
SCENARIOS: tuple[str, ...] = (*NAMED_SHAPES, *STOCHASTIC_SHAPES, *PACKAGED_TRACES)
if SCENARIOS != SCENARIO_NAMES:  # the config's schema names them: one list, checked here
    raise RuntimeError(f"envs.scenarios implements {SCENARIOS}, core.config.SCENARIO_NAMES says {SCENARIO_NAMES}")
STANDARD_SCENARIO = "diurnal"


@lru_cache(maxsize=8)
def _packaged(name: str) -> Trace:
    return load_trace(packaged_trace_path(name))


def scenario_trace(scenario: str, gaps: TraceGaps = "reject") -> Trace | None:
    """The trace a scenario replays, or None for a synthetic shape. Raises on unknown names.
    ``gaps`` is what a ``trace:PATH`` file's missing bins get (``simulation.trace_gaps``); the
    packaged traces have none."""
    if scenario in NAMED_SHAPES or scenario in STOCHASTIC_SHAPES:
        return None
    if scenario in PACKAGED_TRACES:
        return _packaged(PACKAGED_TRACES[scenario])
    if scenario.startswith("trace:"):
        path = scenario.removeprefix("trace:")
        if not path:
            raise UnknownScenarioError("scenario 'trace:' needs a path, e.g. trace:data/day.csv")
        return load_trace(Path(path), gaps=gaps)
    raise UnknownScenarioError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)} or trace:PATH.csv")


def validate_scenario(scenario: str, gaps: TraceGaps = "reject") -> None:
    """Fail early (unknown name, unreadable trace) with the scenario's own error."""
    scenario_trace(scenario, gaps)


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

    Stochastic shapes (:data:`STOCHASTIC_SHAPES`) need ``rng``; the environment passes its own at every reset.
    """
    if scenario in NAMED_SHAPES:
        return NAMED_SHAPES[scenario](t, sim)
    if scenario in STOCHASTIC_SHAPES:
        if rng is None:
            raise ValueError(f"scenario {scenario!r} is random: it needs a generator")
        return STOCHASTIC_SHAPES[scenario](t, sim, rng)
    trace = trace if trace is not None else scenario_trace(scenario, sim.trace_gaps)
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
