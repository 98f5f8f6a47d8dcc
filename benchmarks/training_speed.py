"""PPO training speed, time to pass the calibrated HPA, and the cost of one policy decision.

    python benchmarks/training_speed.py [--max-steps 800000] [--check-every 50000] [--seed 0]

1. trains PPO with the shipped hyperparameters (``training/hyperparams/ppo.yml``) and, every
   ``--check-every`` steps, runs the current policy and the calibrated HPA on the evaluation
   scenarios (flash-sale, step, bursty, worldcup; seeds 0-1), printing SLI attainment and cost; it
   stops at the first check where PPO's mean SLI attainment is at least the HPA's and its total cost
   lower ("passes"), or at ``--max-steps``. Wall time counts training and the checks;
2. times one decision of the shipped policy (observation in, scaling factor out): p50 and p99.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from control.guard import scale_concurrency
from control.policies import Policy
from core.config import AutotuneConfig, with_overrides
from core.observation import N_FEATURES
from core.provenance import git_revision
from envs.rollout import run_policy
from envs.scaling_env import ConcurrencyScalingEnv
from models.registry import make_policy

SCENARIOS = ("flash-sale", "step", "bursty", "worldcup")
SEEDS = (0, 1)


def evaluate(policy_for, cfg: AutotuneConfig) -> tuple[float, float]:
    att, cost = [], 0.0
    for scenario in SCENARIOS:
        c = with_overrides(cfg, {"simulation.scenario": scenario})
        env = ConcurrencyScalingEnv(c)
        for seed in SEEDS:
            s = run_policy(env, policy_for(c, seed), seed).summary
            att.append(s.sli_attainment)
            cost += s.cost_slot_hours
    return float(np.mean(att)), cost


def ppo_from(model, factors):
    from models import greedy_action

    def decide(ctx, state):
        return float(scale_concurrency(ctx.current, factors[greedy_action(model, ctx.observation)])), state

    return Policy("ppo", decide)


def time_to_pass(args) -> None:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.utils import set_random_seed
    from stable_baselines3.common.vec_env import DummyVecEnv

    from training.ppo_hyperparams import load_hyperparams
    from training.randomization import RandomizedScalingEnv

    cfg = AutotuneConfig()
    hp = load_hyperparams()
    hpa_att, hpa_cost = evaluate(lambda c, seed: make_policy("hpa", c, seed), cfg)
    print(
        f"calibrated HPA on {', '.join(SCENARIOS)} x seeds {SEEDS}: SLI attainment {hpa_att:.2%}, "
        f"{hpa_cost:.1f} slot-hours"
    )
    torch.set_num_threads(1)
    set_random_seed(args.seed)
    env = make_vec_env(
        lambda: RandomizedScalingEnv(cfg, hp.randomization), n_envs=hp.n_envs, seed=args.seed, vec_env_cls=DummyVecEnv
    )
    model = PPO(hp.policy, env, seed=args.seed, device="cpu", **hp.ppo_kwargs())
    factors = tuple(cfg.control.factors)
    print(
        f"{'steps':>9} {'train s':>8} {'wall s':>8} {'train steps/s':>14} {'PPO SLI':>8} {'PPO cost':>9} {'passes':>7}"
    )
    t0 = time.perf_counter()
    train_s = 0.0
    while model.num_timesteps < args.max_steps:
        t = time.perf_counter()
        model.learn(args.check_every, reset_num_timesteps=False)
        train_s += time.perf_counter() - t
        att, cost = evaluate(lambda c, seed: ppo_from(model, factors), cfg)
        passes = att >= hpa_att and cost < hpa_cost
        print(
            f"{model.num_timesteps:>9,} {train_s:>8.0f} {time.perf_counter() - t0:>8.0f} "
            f"{model.num_timesteps / train_s:>14,.0f} {att:>8.2%} {cost:>9.1f} {'yes' if passes else 'no':>7}",
            flush=True,
        )
        if passes:
            break


def decision_latency() -> None:
    cfg = AutotuneConfig()
    policy = make_policy("ppo", cfg)
    env = ConcurrencyScalingEnv(cfg)
    env.reset(seed=0)
    from envs.rollout import policy_context

    obs = np.random.default_rng(0).uniform(0, 2, (2000, N_FEATURES)).astype(np.float32)
    ctx = policy_context(env, obs[0], policy)
    times = []
    for o in obs:
        c = ctx.__class__(**{**ctx.__dict__, "observation": o})
        t = time.perf_counter()
        policy.decide(c, None)
        times.append(time.perf_counter() - t)
    us = np.array(times[100:]) * 1e6
    print(
        f"one decision of the shipped PPO policy (observation to proposal), {len(us)} decisions: "
        f"p50 {np.percentile(us, 50):.0f} us, p99 {np.percentile(us, 99):.0f} us"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-steps", type=int, default=800_000)
    ap.add_argument("--check-every", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-training", action="store_true", help="only time decisions")
    args = ap.parse_args()
    print(
        f"# git {git_revision()[:12]}; {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    if not args.skip_training:
        time_to_pass(args)
    decision_latency()


if __name__ == "__main__":
    main()
