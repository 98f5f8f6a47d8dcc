"""``autotune train``: PPO (stable-baselines3) on domain-randomised scaling environments.

A run folder (default ``models/<run>/``) receives the final model (``model.zip``), the best model by
evaluation reward (``best_model.zip``), checkpoints, TensorBoard logs (``tb/``), evaluation results
(``evaluations.npz``), ``model_meta.json`` (what the model observes and decides), ``config.yml`` (the
resolved config and hyperparameters), ``command.txt`` and ``run.yaml`` (git revision, versions).
"""

from __future__ import annotations

import copy
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.config import MAX_ENVS, MAX_ROLLOUT_STEPS, AutotuneConfig, ConfigError, read_text_file
from core.observation import ENV_ID
from core.provenance import write_run_metadata
from training.randomization import RandomizationSpec, RandomizedScalingEnv

HYPERPARAMS_FILE = Path(__file__).resolve().parent / "hyperparams" / "ppo.yml"
PPO_KEYS = (
    "n_steps",
    "batch_size",
    "n_epochs",
    "learning_rate",
    "gamma",
    "gae_lambda",
    "clip_range",
    "ent_coef",
    "vf_coef",
    "max_grad_norm",
)


class HyperparamError(ValueError):
    pass


def load_hyperparams(
    path: Path = HYPERPARAMS_FILE, env_id: str = ENV_ID, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``default:``, then the env id's entry, then command-line overrides (dotted keys allowed)."""
    try:
        data = yaml.safe_load(read_text_file(path, "hyperparameter file")) or {}
    except ConfigError as err:
        raise HyperparamError(str(err)) from None
    except yaml.YAMLError as err:
        raise HyperparamError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("default"), dict):
        raise HyperparamError(f"{path}: needs a 'default:' entry")
    hp = copy.deepcopy(data["default"])
    hp.update(copy.deepcopy(data.get(env_id) or {}))
    for dotted, value in (overrides or {}).items():
        node = hp
        *parents, last = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise HyperparamError(f"--hp {dotted}: unknown hyperparameter")
            node = node[part]
        if last not in node:
            raise HyperparamError(f"--hp {dotted}: unknown hyperparameter (known: {', '.join(sorted(node))})")
        node[last] = value
    _validate(hp, path)
    return hp


def _validate(hp: dict[str, Any], source: Path) -> None:
    for key in ("n_envs", "n_timesteps", "n_steps", "batch_size", "n_epochs", "eval_freq", "checkpoint_freq"):
        if not isinstance(hp.get(key), int) or hp[key] < 1:
            raise HyperparamError(f"{source}: {key} must be a positive integer, got {hp.get(key)!r}")
    for key in ("learning_rate", "gamma", "gae_lambda", "clip_range", "ent_coef", "vf_coef", "max_grad_norm"):
        value = hp.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 and math.isfinite(value)):
            raise HyperparamError(f"{source}: {key} must be a finite non-negative number, got {value!r}")
    if hp["n_envs"] > MAX_ENVS:
        raise HyperparamError(
            f"{source}: n_envs is {hp['n_envs']:,}; the limit is {MAX_ENVS} (they step in one "
            "process, each with its own simulator)"
        )
    if hp["n_steps"] * hp["n_envs"] > MAX_ROLLOUT_STEPS:
        raise HyperparamError(
            f"{source}: n_steps x n_envs is {hp['n_steps'] * hp['n_envs']:,}; the limit is "
            f"{MAX_ROLLOUT_STEPS:,} (the rollout buffer holds every step of an update)"
        )
    if not 0 < hp["gamma"] <= 1:
        raise HyperparamError(f"{source}: gamma must be in (0, 1], got {hp['gamma']}")
    if hp["batch_size"] > hp["n_steps"] * hp["n_envs"]:
        raise HyperparamError(
            f"{source}: batch_size ({hp['batch_size']}) exceeds n_steps x n_envs ({hp['n_steps'] * hp['n_envs']})"
        )
    try:
        RandomizationSpec.from_dict(hp.get("randomization"))
    except (TypeError, ValueError) as err:
        raise HyperparamError(f"{source}: {err}") from None


def evaluation_overrides(hp: dict[str, Any]) -> list[dict[str, Any]]:
    ev = hp.get("evaluation") or {}
    scenarios = ev.get("scenarios") or ["flash-sale", "worldcup"]
    seeds = ev.get("seeds") or [1001]
    return [{"simulation.scenario": s, "_seed": int(seed)} for s in scenarios for seed in seeds]


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
    hp: dict[str, Any],
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
    from stable_baselines3.common.callbacks import CheckpointCallback, EvalCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.utils import set_random_seed
    from stable_baselines3.common.vec_env import DummyVecEnv

    from models import write_meta

    run_dir.mkdir(parents=True, exist_ok=True)
    argv = list(sys.argv if argv is None else argv)
    (run_dir / "command.txt").write_text(shlex.join(argv) + "\n", encoding="utf-8")
    (run_dir / "config.yml").write_text(
        yaml.safe_dump(
            {"seed": seed, "env_id": ENV_ID, "hyperparams": hp, "config": cfg.model_dump(mode="json")}, sort_keys=False
        ),
        encoding="utf-8",
    )
    write_run_metadata(run_dir / "run.yaml", cfg, argv, seed=seed)

    torch.set_num_threads(1)  # a 64x64 MLP: threads cost more than they give, and break repeatability
    set_random_seed(seed)
    spec = RandomizationSpec.from_dict(hp.get("randomization"))
    env = make_vec_env(lambda: RandomizedScalingEnv(cfg, spec), n_envs=hp["n_envs"], seed=seed, vec_env_cls=DummyVecEnv)
    fixed = evaluation_overrides(hp)
    eval_env = DummyVecEnv([lambda: Monitor(RandomizedScalingEnv(cfg, spec, fixed=fixed))])
    eval_env.seed(seed + 10_000)
    model = PPO(
        hp.get("policy", "MlpPolicy"),
        env,
        seed=seed,
        device="cpu",
        verbose=verbose,
        tensorboard_log=str(run_dir / "tb"),
        policy_kwargs={"net_arch": list(hp.get("net_arch", [64, 64]))},
        **{k: hp[k] for k in PPO_KEYS},
    )
    n_envs = hp["n_envs"]
    callbacks = [
        EvalCallback(
            eval_env,
            n_eval_episodes=len(fixed),
            eval_freq=max(hp["eval_freq"] // n_envs, 1),
            best_model_save_path=str(run_dir),
            log_path=str(run_dir),
            deterministic=True,
            verbose=0,
        ),
        CheckpointCallback(
            save_freq=max(hp["checkpoint_freq"] // n_envs, 1), save_path=str(run_dir / "checkpoints"), name_prefix="ppo"
        ),
    ]
    t0 = time.perf_counter()
    model.learn(total_timesteps=hp["n_timesteps"], callback=callbacks, progress_bar=progress, tb_log_name="ppo")
    wall = time.perf_counter() - t0
    model_path = run_dir / "model.zip"
    model.save(model_path)
    best = run_dir / "best_model.zip"
    write_meta(
        run_dir,
        ENV_ID,
        tuple(cfg.control.factors),
        total_timesteps=int(model.num_timesteps),
        seed=seed,
        wall_time_s=round(wall, 1),
        steps_per_s=round(model.num_timesteps / wall, 1),
        hyperparams=hp,
    )
    env.close()
    eval_env.close()
    return TrainResult(
        run_dir, model_path, best if best.exists() else None, int(model.num_timesteps), wall, model.num_timesteps / wall
    )
