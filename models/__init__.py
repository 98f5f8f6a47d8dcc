"""Trained policies: saving them with what they were trained for, and loading them as policies.

A model folder holds ``model.zip`` (stable-baselines3 PPO) and ``model_meta.json`` (env id, feature
names, scaling factors, training facts). Loading checks the model against the environment it is about
to drive and fails with one clear :class:`ModelError` naming what was expected and what was found:
a missing or corrupt file, another observation space, another env version, other factors.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.observation import FEATURE_NAMES, N_FEATURES

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "ppo_default"
META_NAME = "model_meta.json"
MODEL_NAME = "model.zip"


class ModelError(ValueError):
    """A model that cannot drive this environment; the message says why."""


@dataclass(frozen=True)
class ModelMeta:
    env_id: str
    feature_names: tuple[str, ...]
    factors: tuple[float, ...]
    extra: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "env_id": self.env_id,
            "feature_names": list(self.feature_names),
            "factors": list(self.factors),
            **self.extra,
        }


BEST_NAME = "best_model.zip"


def model_paths(path: str | Path) -> tuple[Path, Path]:
    """(model zip, model_meta.json) for a model folder or a zip path.

    A folder means its ``best_model.zip`` (the best by the training run's evaluation scenarios) when
    there is one, else its ``model.zip`` (the last).
    """
    p = Path(path)
    if p.is_dir() or p.suffix != ".zip":
        best = p / BEST_NAME
        return (best if best.is_file() else p / MODEL_NAME), p / META_NAME
    return p, p.with_name(META_NAME)


def write_meta(folder: Path, env_id: str, factors: tuple[float, ...], **extra: Any) -> Path:
    meta = ModelMeta(env_id, FEATURE_NAMES, tuple(factors), extra)
    path = folder / META_NAME
    path.write_text(json.dumps(meta.as_dict(), indent=2), encoding="utf-8")
    return path


def read_meta(path: Path) -> ModelMeta:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: model metadata missing (expected {META_NAME} beside the model)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ModelError(f"{path}: model metadata unreadable ({err})") from None
    try:
        return ModelMeta(
            str(data.pop("env_id")),
            tuple(data.pop("feature_names")),
            tuple(float(f) for f in data.pop("factors")),
            data,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ModelError(f"{path}: model metadata lacks {err}") from None


def check_compatible(meta: ModelMeta, env_id: str, factors: tuple[float, ...], where: Path) -> None:
    if meta.env_id != env_id:
        raise ModelError(f"{where}: model trained for {meta.env_id}, this environment is {env_id}")
    if meta.feature_names != FEATURE_NAMES:
        raise ModelError(
            f"{where}: model observes {len(meta.feature_names)} features {list(meta.feature_names)}, "
            f"this environment gives {N_FEATURES} {list(FEATURE_NAMES)}"
        )
    if tuple(meta.factors) != tuple(factors):
        raise ModelError(f"{where}: model picks factors {list(meta.factors)}, config has {list(factors)}")


def load_model(path: str | Path, env_id: str, factors: tuple[float, ...]):
    """Load a PPO model and check it can drive ``env_id`` with ``factors``."""
    zip_path, meta_path = model_paths(path)
    if not zip_path.is_file():
        raise ModelError(f"{zip_path}: model file not found")
    if not zipfile.is_zipfile(zip_path):
        raise ModelError(f"{zip_path}: not a stable-baselines3 model (not a zip archive)")
    meta = read_meta(meta_path)
    check_compatible(meta, env_id, factors, zip_path)
    import torch
    from stable_baselines3 import PPO

    torch.set_num_threads(1)  # one small MLP forward per decision: threads only add overhead
    try:
        model = PPO.load(zip_path, device="cpu")
    except Exception as err:
        raise ModelError(f"{zip_path}: cannot load the model ({type(err).__name__}: {err})") from None
    space = model.observation_space
    if getattr(space, "shape", None) != (N_FEATURES,):
        raise ModelError(
            f"{zip_path}: model expects observations of shape {getattr(space, 'shape', space)}, "
            f"this environment gives ({N_FEATURES},)"
        )
    n_actions = getattr(model.action_space, "n", None)
    if n_actions != len(factors):
        raise ModelError(f"{zip_path}: model has {n_actions} actions, config has {len(factors)} factors")
    return model, meta


def greedy_action(model, obs: np.ndarray) -> int:
    """The policy's most likely action, straight through the torch network (no SB3 predict overhead)."""
    import torch

    with torch.no_grad():
        t = torch.as_tensor(obs, dtype=torch.float32).reshape(1, -1)
        dist = model.policy.get_distribution(t)
        return int(dist.distribution.probs.argmax(dim=1).item())
