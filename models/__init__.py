"""Trained policies: saving them with what they were trained for, and loading them as policies.

A model folder holds ``model.zip`` (stable-baselines3 PPO) and ``model_meta.json`` (env id, feature
names, scaling factors, what the factors scale, training facts). Loading checks the model against the
environment it is about to drive and fails with one clear :class:`ModelError` naming what was expected
and what was found: a missing or corrupt file, another observation space, another env version, other
factors, another action base (``control.action_base``: a meta without one was written before residual
actions existed and means ``current``) or, in ``rule`` mode, another base rule.
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
    action_base: str = "current"  # what a factor scales (control.action_base)
    base_rule: str | None = None  # the rule whose proposal it scales, in "rule" mode

    def as_dict(self) -> dict[str, Any]:
        base = {"action_base": self.action_base}
        if self.base_rule is not None:
            base["base_rule"] = self.base_rule
        return {
            "env_id": self.env_id,
            "feature_names": list(self.feature_names),
            "factors": list(self.factors),
            **base,
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


def write_meta(
    folder: Path,
    env_id: str,
    factors: tuple[float, ...],
    *,
    action_base: str = "current",
    base_rule: str | None = None,
    **extra: Any,
) -> Path:
    """``base_rule`` is recorded in ``rule`` mode only (in ``current`` mode no rule is involved)."""
    meta = ModelMeta(
        env_id, FEATURE_NAMES, tuple(factors), extra, action_base, base_rule if action_base == "rule" else None
    )
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
        action_base = str(data.pop("action_base", "current"))  # older models: factors scaled the concurrency
        base_rule = data.pop("base_rule", None)
        return ModelMeta(
            str(data.pop("env_id")),
            tuple(data.pop("feature_names")),
            tuple(float(f) for f in data.pop("factors")),
            data,
            action_base,
            None if base_rule is None else str(base_rule),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ModelError(f"{path}: model metadata lacks {err}") from None


def check_compatible(
    meta: ModelMeta,
    env_id: str,
    factors: tuple[float, ...],
    where: Path,
    action_base: str = "current",
    base_rule: str | None = None,
) -> None:
    if meta.env_id != env_id:
        raise ModelError(f"{where}: model trained for {meta.env_id}, this environment is {env_id}")
    if meta.feature_names != FEATURE_NAMES:
        raise ModelError(
            f"{where}: model observes {len(meta.feature_names)} features {list(meta.feature_names)}, "
            f"this environment gives {N_FEATURES} {list(FEATURE_NAMES)}"
        )
    if tuple(meta.factors) != tuple(factors):
        raise ModelError(f"{where}: model picks factors {list(meta.factors)}, config has {list(factors)}")
    if meta.action_base != action_base:
        raise ModelError(
            f"{where}: model was trained with control.action_base {_base(meta.action_base, meta.base_rule)}, "
            f"config has control.action_base {_base(action_base, base_rule)}"
        )
    if action_base == "rule" and meta.base_rule != base_rule:
        raise ModelError(
            f"{where}: model was trained to scale control.base_rule {meta.base_rule!r}, config has {base_rule!r}"
        )


def _base(action_base: str, base_rule: str | None) -> str:
    if action_base == "rule":
        return f"'rule' (factors scale the {base_rule!r} rule's proposal)"
    if action_base == "current":
        return "'current' (factors scale the concurrency in force)"
    return repr(action_base)


def load_model(
    path: str | Path,
    env_id: str,
    factors: tuple[float, ...],
    action_base: str = "current",
    base_rule: str | None = None,
):
    """Load a PPO model and check it can drive ``env_id`` with ``factors`` scaling ``action_base``
    (in ``rule`` mode, ``base_rule``'s proposal)."""
    zip_path, meta_path = model_paths(path)
    if not zip_path.is_file():
        raise ModelError(f"{zip_path}: model file not found")
    if not zipfile.is_zipfile(zip_path):
        raise ModelError(f"{zip_path}: not a stable-baselines3 model (not a zip archive)")
    meta = read_meta(meta_path)
    check_compatible(meta, env_id, factors, zip_path, action_base, base_rule)
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
