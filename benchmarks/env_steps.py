"""Simulator speed: environment steps per second on one core for the standard scenario.

    python benchmarks/env_steps.py [--steps 50000]

Pins itself to one CPU core, compiles the kernel first (not timed), then times:
- ``env.step``: ConcurrencyScalingEnv.step with random actions (what PPO consumes);
- ``gym.make``: the same through gym.make's default wrappers (order enforcing, env checker);
- ``sim.advance``: the compiled simulator alone, no observation, reward or guard.
Resets at episode ends are included in the timing.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import gymnasium as gym
import numpy as np

import envs  # noqa: F401
from core.config import AutotuneConfig
from core.observation import ENV_ID
from envs.scaling_env import ConcurrencyScalingEnv
from envs.scenarios import STANDARD_SCENARIO


def time_env(env, n_steps: int, seed: int = 0) -> float:
    actions = np.random.default_rng(seed).integers(0, 3, n_steps)
    env.reset(seed=seed)
    t0 = time.perf_counter()
    for a in actions:
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()
    return time.perf_counter() - t0


def time_sim(env: ConcurrencyScalingEnv, n_steps: int) -> float:
    env.reset(seed=0)
    sim = env.sim
    interval = env.cfg.control.interval_s
    per_episode = env.n_steps
    t0 = time.perf_counter()
    for i in range(n_steps):
        if i % per_episode == 0 and i:
            env.reset()
        sim.set_target(100 + (i % 5) * 10)
        sim.advance(interval)
    return time.perf_counter() - t0


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=5, help="report the best of this many runs")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    cfg = AutotuneConfig()
    env = ConcurrencyScalingEnv(cfg, scenario=STANDARD_SCENARIO)
    time_env(env, 500)  # compile and warm up
    wrapped = gym.make(ENV_ID, config=cfg, scenario=STANDARD_SCENARIO)
    time_env(wrapped, 500)
    rows = []
    for label, fn in (
        ("env.step", lambda: time_env(env, args.steps)),
        ("gym.make", lambda: time_env(wrapped, args.steps)),
        ("sim.advance", lambda: time_sim(env, args.steps)),
    ):
        best = min(fn() for _ in range(args.repeats))
        rows.append((label, args.steps, best, args.steps / best))
    s = cfg.simulation
    print(
        f"scenario {STANDARD_SCENARIO}: peak {s.peak_rate_per_s:g} tasks/s, interval {cfg.control.interval_s:g} s, "
        f"tick {s.tick_s:g} s, episode {env.n_steps} steps; one core; best of {args.repeats}"
    )
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'mode':<12} {'steps':>8} {'seconds':>8} {'steps/s':>10}")
    for label, n, sec, rate in rows:
        print(f"{label:<12} {n:>8} {sec:>8.2f} {rate:>10,.0f}")


if __name__ == "__main__":
    main()
