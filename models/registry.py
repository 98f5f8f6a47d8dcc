"""Policies by name: the rule baselines of :mod:`control.policies`, learned models read from files,
and a researcher's ``module:callable``. The one place a name (``--policy``, ``compare``'s list, the
live run's) becomes a :class:`control.policies.Policy`.

- ``ppo``: the shipped PPO model (``models/ppo_default``), or any trained model by path;
- ``hpa``, ``kpa``, ``keda``, ``predictive`` and ``static`` run their calibrated settings
  (``models/calibration.yaml``, read by :mod:`models.calibration`, when it was made for this
  cluster's bounds; else the anchor's defaults); ``<name>-default`` runs the anchor's defaults.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from control.actions import Chooser, factor_policy
from control.policies import (
    REFERENCE_HPA,
    Policy,
    default_hpa_config,
    hpa_policy,
    oracle_policy,
    random_policy,
    threshold_policy,
)
from core.config import AutotuneConfig
from core.observation import ENV_ID
from models import DEFAULT_MODEL_DIR, greedy_action, load_model
from models.calibration import RULES, calibrated_settings, rule_policy


# -- learned ------------------------------------------------------------------------------------
def agent_policy(cfg: AutotuneConfig, choose: Chooser, name: str = "agent") -> Policy:
    """What an action means under ``cfg`` (``control.factors`` scaling ``control.action_base``), as
    a policy: :func:`control.actions.factor_policy` with the base rule resolved by name. The
    simulator's environment, the live environment and :func:`ppo_policy` all build theirs here."""
    control = cfg.control
    base = make_policy(control.base_rule, cfg) if control.action_base == "rule" else None
    return factor_policy(choose, tuple(control.factors), base, name)


def ppo_policy(path: str | Path, cfg: AutotuneConfig, name: str = "ppo") -> Policy:
    """A trained PPO model (a folder with model.zip and model_meta.json, or the zip itself)."""
    control = cfg.control
    model, meta = load_model(path, ENV_ID, tuple(control.factors), control.action_base, control.base_rule)
    agent = agent_policy(cfg, lambda ctx: greedy_action(model, ctx.observation), name)
    return replace(
        agent,
        params={
            "model": str(path),
            **agent.params,
            **{k: meta.extra[k] for k in ("total_timesteps", "seed") if k in meta.extra},
        },
    )


BASELINES = (
    "static",
    "static-default",
    "hpa",
    "hpa-default",
    "hpa-backlog",
    "hpa-reference",
    "kpa",
    "kpa-default",
    "keda",
    "keda-default",
    "predictive",
    "predictive-default",
    "threshold",
    "random",
    "oracle",
)
LEARNED = ("ppo",)
# computed offline from a whole episode (envs.bound): simulate and compare know it, nothing runs it live
YARDSTICKS = ("bound",)


class UnknownPolicyError(ValueError):
    pass


def make_policy(name: str, cfg: AutotuneConfig, seed: int = 0) -> Policy:
    """A baseline by name, or a researcher's ``module:callable`` (a Policy, or a decide function)."""
    if name in YARDSTICKS:
        raise UnknownPolicyError(
            f"{name!r} is an offline yardstick computed from a whole episode's arrivals; "
            "it can be simulated and compared (autotune simulate/compare), not run as a policy"
        )
    if name in RULES:
        return rule_policy(name, calibrated_settings(cfg, name) or {}, cfg)
    if name.endswith("-default") and name.removesuffix("-default") in RULES:
        return rule_policy(name.removesuffix("-default"), {}, cfg, name)
    if name == "hpa-backlog":
        return hpa_policy(cfg, default_hpa_config(cfg, "backlog"), "hpa-backlog")
    if name == "hpa-reference":
        return hpa_policy(cfg, REFERENCE_HPA, "hpa-reference")
    if name == "threshold":
        return threshold_policy()
    if name == "random":
        return random_policy(tuple(cfg.control.factors), seed)
    if name == "oracle":
        return oracle_policy()
    if name == "ppo":
        return ppo_policy(DEFAULT_MODEL_DIR, cfg)
    if name.endswith(".zip") or "/" in name or Path(name).is_dir():
        return ppo_policy(name, cfg, name=Path(name).stem if name.endswith(".zip") else Path(name).name)
    if ":" in name:
        return _import_policy(name)
    raise UnknownPolicyError(
        f"unknown policy {name!r}; choose one of {', '.join(BASELINES + LEARNED)}, a model path, or module:callable"
    )


def _import_policy(spec: str) -> Policy:
    import importlib
    import os
    import sys

    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:  # a researcher's module beside them, as `python -m` would find it
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise UnknownPolicyError(f"policy {spec!r}: cannot import module {module_name!r}: {err}") from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise UnknownPolicyError(f"policy {spec!r}: module {module_name!r} has no attribute {attr!r}")
    if isinstance(obj, Policy):
        return obj
    if callable(obj):
        return Policy(spec, obj)
    raise UnknownPolicyError(
        f"policy {spec!r}: expected a Policy or a decide(ctx, state) function, found {type(obj).__name__}"
    )
