"""PPO hyperparameters, typed: what ``training/hyperparams/*.yml`` may say, and the bounds it must keep.

The files are rl-baselines3-zoo style: a ``default:`` entry and one entry per env id, each a mapping
of hyperparameters. :func:`load_hyperparams` takes ``default:``, then the env id's entry over it (key
by key), then command-line overrides (``autotune train --hp KEY=VALUE``; dotted keys reach into
``randomization`` and ``evaluation``), and validates the result as :class:`PPOHyperparams`. A
misspelled key, a value of the wrong type or out of its bounds, a missing key or a missing env entry
raise one :class:`HyperparamError`, one line naming the file, the entry and the key::

    training/hyperparams/ppo.yml: ConcurrencyScaling-v1: unknown key 'gamm' (did you mean 'gamma'?)

Names and bounds follow ``stable_baselines3.PPO``; where it asserts (``batch_size > 1``, since it
normalises advantages per minibatch) or the run would make no sense, the model refuses first.
Numbers are strict: ``n_steps: 512.0`` or ``learning_rate: 3e-4`` (a string to YAML 1.1, which wants
``3.0e-4``) are refused rather than guessed at.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.config import (
    MAX_ENVS,
    MAX_ROLLOUT_STEPS,
    MAX_SEED,
    SCENARIO_NAMES,
    ConfigError,
    LimitError,
    is_scenario_name,
    read_text_file,
)
from core.observation import ENV_ID
from envs.rewards import DEFAULT_LAGRANGE_LR, DEFAULT_LAGRANGE_MULTIPLIER
from training.randomization import RandomizationSpec

HYPERPARAMS_DIR = Path(__file__).resolve().parent / "hyperparams"
HYPERPARAMS_FILE = HYPERPARAMS_DIR / "ppo.yml"
DEFAULT_ENTRY = "default"
OVERRIDES = "--hp"  # how errors name the command-line overrides


class HyperparamError(ValueError):
    """Hyperparameters that cannot be used. ``problems`` has one entry per bad key, each naming the
    file, the entry and the key; the message is all of them on one line."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class _CrossCheckError(ValueError):
    """A check across keys that knows which key to blame (like :class:`core.config.LimitError`)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


_Seed = Annotated[int, Field(strict=True, ge=0, le=MAX_SEED)]
_Width = Annotated[int, Field(strict=True, ge=1)]


class _Model(BaseModel):
    # allow_inf_nan=False: an infinite learning rate passes `gt=0` and fails an hour into training
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class EvaluationSpec(_Model):
    """The fixed episodes the run evaluates on (``EvalCallback``; the best of them is ``best_model.zip``)."""

    scenarios: tuple[str, ...] = Field(
        default=("flash-sale", "worldcup"), description="scenario names, each evaluated per seed"
    )
    seeds: tuple[_Seed, ...] = Field(default=(1001,), description="arrival seeds of each scenario")

    # emptiness checked after the items (a Field min_length would also report a list of bad items as empty)
    @field_validator("scenarios", "seeds")
    @classmethod
    def _not_empty(cls, v: tuple[Any, ...]) -> tuple[Any, ...]:
        if not v:
            raise ValueError("give at least one")
        return v

    @field_validator("scenarios")
    @classmethod
    def _known_scenarios(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [s for s in v if not is_scenario_name(s)]
        if unknown:
            raise ValueError(
                f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIO_NAMES)} or trace:PATH.csv"
            )
        return v

    def episodes(self) -> list[dict[str, Any]]:
        """One override dict per scenario and seed, for ``RandomizedScalingEnv(fixed=...)``."""
        return [{"simulation.scenario": s, "_seed": seed} for s in self.scenarios for seed in self.seeds]


class LagrangeSpec(_Model):
    """The dual ascent of the ``constrained`` reward's multiplier (:func:`envs.rewards.dual_update`),
    once per rollout; unused by the other rewards."""

    initial: float = Field(
        default=DEFAULT_LAGRANGE_MULTIPLIER, strict=True, ge=0, description="the price of a violation at the start"
    )
    lr: float = Field(
        default=DEFAULT_LAGRANGE_LR, strict=True, ge=0, description="step per rollout per unit of attainment shortfall"
    )


class PPOHyperparams(_Model):
    """Everything ``autotune train`` takes from a hyperparameter file: PPO's own hyperparameters (the
    names of ``stable_baselines3.PPO``'s arguments), the run's budget and bookkeeping, and the domain
    randomisation, in the order of ``ppo.yml``. The file's values are the defaults: only ``policy``,
    ``net_arch``, ``randomization``, ``evaluation`` and ``lagrange`` have defaults here."""

    n_envs: int = Field(strict=True, ge=1, description="environments stepped in one process (DummyVecEnv)")
    n_timesteps: int = Field(strict=True, ge=1, description="environment steps of the run (learn's total_timesteps)")
    policy: Literal["MlpPolicy"] = Field(default="MlpPolicy", description="the observation is a flat vector: an MLP")
    n_steps: int = Field(
        strict=True, ge=1, description="steps per environment per update; a rollout is n_steps x n_envs"
    )
    batch_size: int = Field(
        strict=True,
        ge=2,
        description="minibatch size, at most a rollout; > 1 as advantages are normalised per minibatch",
    )
    n_epochs: int = Field(strict=True, ge=1, description="passes over each rollout")
    learning_rate: float = Field(strict=True, gt=0, description="Adam's step size (constant)")
    gamma: float = Field(strict=True, gt=0, le=1, description="discount factor per control interval")
    gae_lambda: float = Field(strict=True, ge=0, le=1, description="GAE's bias/variance trade-off (1: Monte Carlo)")
    clip_range: float = Field(strict=True, gt=0, description="the probability ratio is clipped to 1 +- clip_range")
    ent_coef: float = Field(strict=True, ge=0, description="entropy bonus in the loss")
    vf_coef: float = Field(strict=True, ge=0, description="value loss weight in the loss")
    max_grad_norm: float = Field(strict=True, gt=0, description="gradients are clipped to this global norm")
    net_arch: tuple[_Width, ...] = Field(
        default=(64, 64), description="hidden layer widths of the policy and value networks (policy_kwargs)"
    )
    eval_freq: int = Field(strict=True, ge=1, description="environment steps (all envs) between evaluations")
    checkpoint_freq: int = Field(strict=True, ge=1, description="environment steps (all envs) between checkpoints")
    randomization: RandomizationSpec = Field(
        default_factory=RandomizationSpec, description="what each training episode draws its cluster and load from"
    )
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    lagrange: LagrangeSpec = Field(default_factory=LagrangeSpec)

    @field_validator("n_envs")
    @classmethod
    def _envs_limit(cls, v: int) -> int:
        if v > MAX_ENVS:
            raise LimitError(
                "n_envs",
                f"{v:,} environments; the limit is {MAX_ENVS} (they step in one process, each with its own simulator)",
            )
        return v

    @model_validator(mode="after")
    def _rollout(self) -> PPOHyperparams:
        rollout = self.n_steps * self.n_envs
        if rollout > MAX_ROLLOUT_STEPS:
            raise LimitError(
                "n_steps",
                f"n_steps x n_envs is {rollout:,}; the limit is {MAX_ROLLOUT_STEPS:,} "
                "(the rollout buffer holds every step of an update)",
            )
        if self.batch_size > rollout:
            raise _CrossCheckError(
                "batch_size", f"{self.batch_size} exceeds n_steps x n_envs ({rollout}), the steps of one update"
            )
        return self

    def ppo_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``stable_baselines3.PPO(self.policy, env, **kwargs)``."""
        return {
            "learning_rate": self.learning_rate,
            "n_steps": self.n_steps,
            "batch_size": self.batch_size,
            "n_epochs": self.n_epochs,
            "gamma": self.gamma,
            "gae_lambda": self.gae_lambda,
            "clip_range": self.clip_range,
            "ent_coef": self.ent_coef,
            "vf_coef": self.vf_coef,
            "max_grad_norm": self.max_grad_norm,
            "policy_kwargs": {"net_arch": list(self.net_arch)},
        }


class FineTuneHyperparams(_Model):
    """What online fine-tuning (:mod:`training.online`) sets in a trained model's PPO; the rest of its
    hyperparameters are the model's own."""

    n_steps: int = Field(
        strict=True, ge=2, le=MAX_ROLLOUT_STEPS, description="live intervals per rollout; the minibatch is the rollout"
    )
    learning_rate: float | None = Field(default=None, strict=True, gt=0, description="None keeps the model's own")
    seed: int = Field(default=0, strict=True, ge=0, le=MAX_SEED)

    def ppo_overrides(self) -> dict[str, Any]:
        """Keyword arguments for ``stable_baselines3.PPO.load(path, env=..., **overrides)``."""
        out: dict[str, Any] = {"n_steps": self.n_steps, "batch_size": self.n_steps, "seed": self.seed}
        if self.learning_rate is not None:
            out["learning_rate"] = self.learning_rate
        return out


def fine_tune_hyperparams(**values: Any) -> FineTuneHyperparams:
    """Validated :class:`FineTuneHyperparams`; :class:`HyperparamError` naming each bad key."""
    try:
        return FineTuneHyperparams.model_validate(values)
    except ValidationError as err:
        raise HyperparamError(_problems(err, lambda _key: "fine-tuning", "fine-tuning")) from None


def load_hyperparams(
    path: str | os.PathLike[str] = HYPERPARAMS_FILE,
    env_id: str = ENV_ID,
    overrides: Mapping[str, Any] | None = None,
) -> PPOHyperparams:
    """``default:``, then ``env_id``'s entry, then ``overrides`` (dotted keys allowed), validated."""
    p = Path(path)
    entries = _read_entries(p, env_id)
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}  # dotted key -> where its value came from, for the messages
    for entry in (DEFAULT_ENTRY, env_id):
        for key, value in entries[entry].items():
            merged[key] = copy.deepcopy(value)
            origin[str(key)] = f"{p}: {entry}"
    for dotted, value in (overrides or {}).items():
        for key in _set_dotted(merged, dotted, value):
            origin[key] = OVERRIDES

    def where(dotted: str) -> str:
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in origin:
                return origin[".".join(parts[:n])]
        return f"{p}: {env_id}"

    try:
        return PPOHyperparams.model_validate(merged)
    except ValidationError as err:
        missing_where = f"{p}: {env_id}"
        hint = f" (neither {DEFAULT_ENTRY}: nor {env_id}: sets it)"
        raise HyperparamError(_problems(err, where, missing_where, hint)) from None


def _read_entries(p: Path, env_id: str) -> dict[str, dict[str, Any]]:
    """The file's ``default:`` and ``env_id`` entries, each a mapping (a bare ``env_id:`` is ``{}``)."""
    try:
        text = read_text_file(p, "hyperparameter file")
    except ConfigError as err:
        raise HyperparamError(str(err)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        why = " ".join(str(getattr(err, "problem", None) or err).split())  # one line
        raise HyperparamError(f"{p}{line}: not valid YAML ({why})") from None
    if not isinstance(data, dict) or not isinstance(data.get(DEFAULT_ENTRY), dict):
        raise HyperparamError(f"{p}: needs a '{DEFAULT_ENTRY}:' entry (a mapping of hyperparameters)")
    if env_id not in data:
        listed = ", ".join(str(k) for k in data)
        raise HyperparamError(
            f"{p}: no '{env_id}:' entry (the file has: {listed}); add '{env_id}: {{}}' to train it on the defaults"
        )
    entry = data[env_id] if data[env_id] is not None else {}
    if not isinstance(entry, dict):
        raise HyperparamError(f"{p}: {env_id}: must be a mapping of hyperparameters, found {type(entry).__name__}")
    return {DEFAULT_ENTRY: data[DEFAULT_ENTRY], env_id: entry}


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> list[str]:
    """Set ``data[a][b]`` for ``"a.b"``; returns the dotted keys it set or created."""
    *parents, last = dotted.split(".")
    node, created = data, [dotted]
    for i, part in enumerate(parents):
        section = ".".join(parents[: i + 1])
        if part not in node:
            node[part] = {}
            created.append(section)
        if not isinstance(node[part], dict):
            raise HyperparamError(f"{OVERRIDES}: {dotted}: {section} is a single value, not a section with keys")
        node = node[part]
    node[last] = value
    return created


def _problems(
    err: ValidationError, where: Callable[[str], str], missing_where: str, missing_hint: str = ""
) -> list[str]:
    """One line per error: ``<where the value came from>: <key>: <what is wrong>``."""
    errors = err.errors()
    suggested: set[str] = set()  # a misspelled key is reported once, not also as its missing original
    unknown: dict[int, str] = {}
    for i, e in enumerate(errors):
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            loc = tuple(str(part) for part in e["loc"])
            close = difflib.get_close_matches(loc[-1], _keys_at(loc[:-1]), n=1)
            if close:
                suggested.add(".".join((*loc[:-1], close[0])))
                unknown[i] = f" (did you mean '{'.'.join((*loc[:-1], close[0]))}'?)"
            else:
                unknown[i] = ""
    out = []
    for i, e in enumerate(errors):
        dotted = ".".join(str(part) for part in e["loc"])
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, (LimitError, _CrossCheckError)):  # a check across keys that knows its key
            out.append(f"{where(cause.field)}: {cause}")
        elif i in unknown:
            out.append(f"{where(dotted)}: unknown key '{dotted}'{unknown[i]}")
        elif e["type"] in ("missing", "missing_argument"):
            if dotted not in suggested:
                out.append(f"{missing_where}: missing key '{dotted}'{missing_hint}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            named = msg.split(":", 1)[0]  # a nested check names its own key ("randomization.peak_rate_per_s: ...")
            if dotted and (named == dotted or named.startswith(f"{dotted}.")):
                out.append(f"{where(named)}: {msg}")
                continue
            got = e.get("input")
            suffix = "" if isinstance(got, (dict, list, tuple)) or got is None else f" (got {got!r})"
            out.append(f"{where(dotted)}: {dotted or '(top level)'}: {msg}{suffix}")
    return out


def _keys_at(parent: tuple[str, ...]) -> list[str]:
    """The keys a section of :class:`PPOHyperparams` takes (``()``: the top level)."""
    node: Any = PPOHyperparams
    for part in parent:
        node = _fields(node).get(part)
    return list(_fields(node))


def _fields(tp: Any) -> dict[str, Any]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {name: f.annotation for name, f in tp.model_fields.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return {f.name: f.type for f in dataclasses.fields(tp)}
    return {}
