"""``autotune train``: PPO (stable-baselines3) on domain-randomised scaling environments.

A run folder (default ``models/<run>/``) receives the final model (``model.zip``), the best model by
evaluation reward (``best_model.zip``), checkpoints, TensorBoard logs (``tb/``), evaluation results
(``evaluations.npz``), ``model_meta.json`` (what the model observes and decides), ``config.yml`` (the
resolved config and hyperparameters), ``command.txt`` and ``run.yaml`` (git revision, versions).
The hyperparameters come validated from :func:`training.ppo_hyperparams.load_hyperparams`.
With ``control.reward: constrained`` the reward's Lagrange multiplier is trained by dual ascent
(:class:`training.lagrange.LagrangeCallback`, hyperparameters ``lagrange.initial`` and ``lagrange.lr``),
logged to TensorBoard as ``lagrange/multiplier`` and ``lagrange/attainment``, and its course is
recorded in ``model_meta.json`` (``lagrange``).
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from core.config import AutotuneConfig
from core.observation import ENV_ID
from core.provenance import write_run_metadata
from training.ppo_hyperparams import PPOHyperparams
from training.randomization import RandomizedScalingEnv


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    model_path: Path
    best_model_path: Path | None
    total_timesteps: int
    wall_time_s: float
    steps_per_s: float


def train(
    cfg: AutotuneConfig,
    hp: PPOHyperparams,
    seed: int,
    run_dir: Path,
    *,
    progress: bool = True,
    argv: list[str] | None = None,
    verbose: int = 0,
) -> TrainResult:
    """Train PPO; everything needed to redo the run is written into ``run_dir``."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.utils import set_random_seed
    from stable_baselines3.common.vec_env import DummyVecEnv

    from models import write_meta
    from training.lagrange import LagrangeCallback

    run_dir.mkdir(parents=True, exist_ok=True)
    argv = list(sys.argv if argv is None else argv)
    (run_dir / "command.txt").write_text(shlex.join(argv) + "\n", encoding="utf-8")
    record = hp.model_dump(mode="json")
    (run_dir / "config.yml").write_text(
        yaml.safe_dump(
            {"seed": seed, "env_id": ENV_ID, "hyperparams": record, "config": cfg.model_dump(mode="json")},
            sort_keys=False,
        ),
        encoding="utf-8",
    )
    write_run_metadata(run_dir / "run.yaml", cfg, argv, seed=seed)

    torch.set_num_threads(1)  # a 64x64 MLP: threads cost more than they give, and break repeatability
    set_random_seed(seed)
    spec = hp.randomization
    env = make_vec_env(lambda: RandomizedScalingEnv(cfg, spec), n_envs=hp.n_envs, seed=seed, vec_env_cls=DummyVecEnv)
    fixed = hp.evaluation.episodes()
    eval_env = DummyVecEnv([lambda: Monitor(RandomizedScalingEnv(cfg, spec, fixed=fixed))])
    eval_env.seed(seed + 10_000)
    model = PPO(
        hp.policy,
        env,
        seed=seed,
        device="cpu",
        verbose=verbose,
        tensorboard_log=str(run_dir / "tb"),
        **hp.ppo_kwargs(),
    )
    n_envs = hp.n_envs
    callbacks: list[BaseCallback] = [
        EvalCallback(
            eval_env,
            n_eval_episodes=len(fixed),
            eval_freq=max(hp.eval_freq // n_envs, 1),
            best_model_save_path=str(run_dir),
            log_path=str(run_dir),
            deterministic=True,
            verbose=0,
        ),
        CheckpointCallback(
            save_freq=max(hp.checkpoint_freq // n_envs, 1), save_path=str(run_dir / "checkpoints"), name_prefix="ppo"
        ),
    ]
    lagrange = None
    if cfg.control.reward == "constrained":  # the price of a violation follows the attainment target
        lagrange = LagrangeCallback(cfg.slis, cfg.control.attainment_target, hp.lagrange.initial, hp.lagrange.lr)
        callbacks.append(lagrange)
    t0 = time.perf_counter()
    model.learn(total_timesteps=hp.n_timesteps, callback=callbacks, progress_bar=progress, tb_log_name="ppo")
    wall = time.perf_counter() - t0
    model_path = run_dir / "model.zip"
    model.save(model_path)
    best = run_dir / "best_model.zip"
    write_meta(
        run_dir,
        ENV_ID,
        tuple(cfg.control.factors),
        action_base=cfg.control.action_base,
        base_rule=cfg.control.base_rule,
        total_timesteps=int(model.num_timesteps),
        seed=seed,
        wall_time_s=round(wall, 1),
        steps_per_s=round(model.num_timesteps / wall, 1),
        hyperparams=record,
        **({} if lagrange is None else {"lagrange": lagrange.summary()}),
    )
    env.close()
    eval_env.close()
    return TrainResult(
        run_dir, model_path, best if best.exists() else None, int(model.num_timesteps), wall, model.num_timesteps / wall
    )
