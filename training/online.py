"""Fine-tuning a trained PPO policy online: more PPO updates from the live cluster's own intervals.

The environment is :class:`envs.live_env.LiveScalingEnv`, so every step goes through the tuner and
its guard (bounds, step limits, cooldowns, the emergency rule) and is audited like any decision;
learning never bypasses the safeguards. A live interval is real time (15 s by default), so a
fine-tuning run is small: ``steps`` intervals, with a rollout of ``n_steps`` intervals per update.

The result is a model folder like a training run's: ``model.zip``, ``model_meta.json`` (the
original's, so :func:`models.load_model` checks it the same way) and ``run.yaml`` (resolved config,
command, git revision, the model it started from).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from core.observation import ENV_ID
from core.provenance import write_run_metadata
from envs.live_env import LiveScalingEnv
from models import META_NAME, ModelError, load_model, model_paths
from training.ppo_hyperparams import fine_tune_hyperparams


def fine_tune_online(
    live: Any,
    model: str | Path,
    out_dir: str | Path,
    *,
    steps: int,
    n_steps: int | None = None,
    learning_rate: float | None = None,
    seed: int = 0,
) -> Path:
    """Continue training ``model`` (a model folder or zip) for ``steps`` live intervals of the opened,
    not yet started :class:`autotune.live_run.LiveRun` ``live``; returns ``out_dir``.

    ``n_steps`` (default: ``min(steps, 64)``) intervals make one rollout; the minibatch is the whole
    rollout. ``learning_rate`` defaults to the model's own. An episode is one replay: ``steps`` must
    fit in it. Bad hyperparameters raise :class:`training.ppo_hyperparams.HyperparamError`."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    hp = fine_tune_hyperparams(n_steps=n_steps or min(steps, 64), learning_rate=learning_rate, seed=seed)
    intervals = int(live.opts.duration_s // live.cfg.control.interval_s)
    if steps > intervals:
        raise ValueError(
            f"steps ({steps}) exceed the replay's {intervals} control intervals "
            f"({live.opts.duration_s:g} s / {live.cfg.control.interval_s:g} s)"
        )
    control = live.cfg.control
    # the same checks as the tuner's: env id, features, factors, action base
    load_model(model, ENV_ID, tuple(control.factors), control.action_base, control.base_rule)
    zip_path, meta_path = model_paths(model)

    from stable_baselines3 import PPO

    env = LiveScalingEnv(live)
    try:
        ppo = PPO.load(zip_path, env=env, device="cpu", **hp.ppo_overrides())
    except Exception as err:
        raise ModelError(f"{zip_path}: cannot continue training it ({type(err).__name__}: {err})") from None
    ppo.learn(total_timesteps=steps, reset_num_timesteps=False, progress_bar=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ppo.save(out / "model.zip")
    shutil.copyfile(meta_path, out / META_NAME)
    write_run_metadata(
        out / "run.yaml",
        live.cfg,
        started_from=str(zip_path),
        steps=steps,
        n_steps=hp.n_steps,
        seed=hp.seed,
        learning_rate=hp.learning_rate,
        live_options=asdict(live.opts),
    )
    return out
