"""Typed, validated configuration, loaded from YAML.

The shape follows the reference system's task config::

    tasks:
      order_processing:
        concurrency: 100
        timeout: 300
        retry_policy: {max_retries: 3, backoff: exponential}

plus the SLIs, the cluster's bounds, the control loop and the concurrency guard. Every section has
defaults, so an empty file (or no file) is a valid configuration. Errors name the file and the field
path (``tasks.order_processing.concurrency``), never a bare pydantic dump.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from control.retry import RetryPolicy


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the source and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StepConfig(_Model):
    """One downstream call of a task (payment, inventory, shipping, ...)."""

    mean_s: float = Field(gt=0, description="mean service time of the call, seconds")
    cv: float = Field(default=0.5, ge=0, description="coefficient of variation of the service time")
    transient_failure: float = Field(default=0.0, ge=0, le=1, description="retryable failure probability")
    permanent_failure: float = Field(default=0.0, ge=0, le=1, description="non-retryable failure probability")
    call_timeout_s: float = Field(default=5.0, gt=0, description="client timeout; a slower call fails as retryable")

    @model_validator(mode="after")
    def _failure_sum(self) -> "StepConfig":
        if self.transient_failure + self.permanent_failure > 1:
            raise ValueError("transient_failure + permanent_failure must be <= 1")
        return self


def _default_order_steps() -> dict[str, StepConfig]:
    return {
        "payment": StepConfig(mean_s=0.40, cv=0.6, transient_failure=0.004, permanent_failure=0.0005),
        "inventory": StepConfig(mean_s=0.15, cv=0.5, transient_failure=0.002, permanent_failure=0.0002),
        "shipping": StepConfig(mean_s=0.50, cv=0.8, transient_failure=0.004, permanent_failure=0.0003),
    }


class TaskTypeConfig(_Model):
    """A registered task type: its concurrency, timeout, retry policy and the calls it makes."""

    concurrency: int = Field(default=100, ge=1, description="initial concurrency (slots)")
    timeout: float = Field(default=300.0, gt=0, description="task timeout in seconds, queueing included")
    retry_policy: RetryPolicy = RetryPolicy()  # validated by pydantic, one definition
    steps: dict[str, StepConfig] = Field(default_factory=_default_order_steps)
    priority_mix: tuple[float, float, float] = Field(
        default=(0.2, 0.6, 0.2), description="share of arrivals in priority classes high, normal, low"
    )
    cpu: float = Field(default=0.1, gt=0, description="CPU a running task needs")
    memory_mb: float = Field(default=64.0, gt=0, description="memory a running task needs, MB")
    required_roles: tuple[str, ...] = ()
    untrusted: bool = Field(default=False, description="run in a subprocess under the limits below")
    memory_limit_mb: int = Field(default=512, ge=16, description="address-space limit of an untrusted task")
    cpu_limit_s: float = Field(default=30.0, gt=0, description="CPU seconds an untrusted task may use")
    cpu_rate_limit: float = Field(default=0.5, gt=0, le=64,
                                  description="CPU cores an untrusted task may use at once")

    @field_validator("steps")
    @classmethod
    def _has_steps(cls, v: dict[str, StepConfig]) -> dict[str, StepConfig]:
        if not v:
            raise ValueError("a task type needs at least one step")
        return v

    @field_validator("priority_mix")
    @classmethod
    def _mix(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(x < 0 or not math.isfinite(x) for x in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"must be three non-negative shares summing to 1 (got {list(v)})")
        return v


class SLIConfig(_Model):
    """Service level objectives: success rate, mean processing time, backlog. P90/P99 are tracked."""

    success_rate_min: float = Field(default=0.995, gt=0, le=1)
    success_rate_window_s: float = Field(default=300.0, gt=0, description="trailing window of the success rate")
    mean_processing_time_s_max: float = Field(default=5.0, gt=0)
    backlog_max: float = Field(default=100.0, gt=0)


class ClusterConfig(_Model):
    """The executor cluster's capacity model."""

    min_concurrency: int = Field(default=4, ge=1)
    max_concurrency: int = Field(default=400, ge=1)
    warmup_s: float = Field(default=10.0, ge=0, description="delay before a new slot serves")
    slots_per_replica: int = Field(default=10, ge=1, description="slots per executor actor (HPA replica)")

    @model_validator(mode="after")
    def _bounds(self) -> "ClusterConfig":
        if self.min_concurrency > self.max_concurrency:
            raise ValueError(
                f"min_concurrency ({self.min_concurrency}) must be <= max_concurrency ({self.max_concurrency})"
            )
        return self


class GuardSettings(_Model):
    """Concurrency guard: step limits, cooldowns and the emergency rule (bounds come from cluster)."""

    max_scale_up_fraction: float = Field(default=1.0, gt=0, description="at most +100% per decision")
    max_scale_down_fraction: float = Field(default=0.5, gt=0, le=1, description="at most -50% per decision")
    min_step: int = Field(default=4, ge=1, description="a change of this many slots is always allowed")
    scale_down_cooldown_s: float = Field(default=60.0, ge=0, description="no scale-down this soon after a change")
    scale_up_cooldown_s: float = Field(default=0.0, ge=0)
    emergency: bool = True
    emergency_scale_up_factor: float = Field(default=2.0, gt=1, description="target while SLIs break and backlog grows")


class ControlConfig(_Model):
    """The decision loop: how often, and which scaling factors the agent picks from."""

    interval_s: float = Field(default=15.0, gt=0)
    factors: tuple[float, ...] = (0.8, 1.0, 1.2)
    reward: str = "sli_cost"

    @field_validator("reward")
    @classmethod
    def _known_reward(cls, v: str) -> str:
        from envs.rewards import REWARDS  # imported here: envs depends on this module

        if v not in REWARDS:
            raise ValueError(f"unknown reward {v!r}; choose one of {', '.join(REWARDS)}")
        return v

    @field_validator("factors")
    @classmethod
    def _factors(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if len(v) < 2:
            raise ValueError("need at least two scaling factors")
        for i, f in enumerate(v):
            if not math.isfinite(f) or f <= 0:
                raise ValueError(f"factor {i} is {f}; every factor must be > 0")
        return v


class SimulationConfig(_Model):
    """The simulator's clock and the scenario it replays."""

    tick_s: float = Field(default=0.5, gt=0, le=5, description="simulated time step")
    scenario: str = "diurnal"
    peak_rate_per_s: float = Field(default=150.0, gt=0, description="arrival rate at the load's peak")
    duration_s: float = Field(default=3600.0, gt=0, description="episode length in simulated seconds")
    time_compression: float = Field(default=24.0, gt=0, description="trace seconds per simulated second")
    trace_offset_s: float = Field(default=0.0, ge=0, description="where in the trace the episode starts")

    @field_validator("scenario")
    @classmethod
    def _known_scenario(cls, v: str) -> str:
        from envs.scenarios import SCENARIOS  # imported here: envs depends on this module

        if v not in SCENARIOS and not (v.startswith("trace:") and len(v) > len("trace:")):
            raise ValueError(f"unknown scenario {v!r}; choose one of {', '.join(SCENARIOS)} or trace:PATH.csv")
        return v


class IntakeConfig(_Model):
    """Who may submit what: tenants, and limits on a submission."""

    tenants: tuple[str, ...] = ("default",)
    max_payload_bytes: int = Field(default=65_536, ge=1, description="JSON-encoded payload size limit")
    max_batch: int = Field(default=10_000, ge=1, description="tasks in one submission")

    @field_validator("tenants")
    @classmethod
    def _tenants(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one tenant")
        for t in v:
            if not t or len(t) > 64 or not all(ch.isalnum() or ch in "-_" for ch in t):
                raise ValueError(f"tenant {t!r}: use 1-64 letters, digits, '-' or '_' (it becomes a key prefix)")
        return v


class AutotuneConfig(_Model):
    """The whole configuration."""

    tasks: dict[str, TaskTypeConfig] = Field(default_factory=lambda: {"order_processing": TaskTypeConfig()})
    slis: SLIConfig = SLIConfig()
    cluster: ClusterConfig = ClusterConfig()
    guard: GuardSettings = GuardSettings()
    control: ControlConfig = ControlConfig()
    simulation: SimulationConfig = SimulationConfig()
    intake: IntakeConfig = IntakeConfig()
    task_type: str = Field(default="order_processing", description="the task type the simulator replays")

    @model_validator(mode="after")
    def _cross(self) -> "AutotuneConfig":
        if self.task_type not in self.tasks:
            raise ValueError(f"task_type {self.task_type!r} is not one of tasks: {sorted(self.tasks)}")
        for name, task in self.tasks.items():
            c = task.concurrency
            if not (self.cluster.min_concurrency <= c <= self.cluster.max_concurrency):
                raise ValueError(
                    f"tasks.{name}.concurrency ({c}) must lie within cluster bounds "
                    f"[{self.cluster.min_concurrency}, {self.cluster.max_concurrency}]"
                )
        return self

    @property
    def task(self) -> TaskTypeConfig:
        return self.tasks[self.task_type]


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        suffix = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
        lines.append(f"{source}: {loc}: {msg}{suffix}")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any] | None, source: str = "config") -> AutotuneConfig:
    """Validate a mapping; raise :class:`ConfigError` naming ``source`` and each bad field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, found {type(data).__name__}")
    try:
        return AutotuneConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(path: str | os.PathLike[str] | None = None) -> AutotuneConfig:
    """Load a YAML config; ``None`` gives the defaults."""
    if path is None:
        return AutotuneConfig()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    return config_from_dict(data, source=str(p))


def with_overrides(cfg: AutotuneConfig, overrides: dict[str, Any], source: str = "overrides") -> AutotuneConfig:
    """Return ``cfg`` with dotted-path overrides applied (``{"control.interval_s": 5}``), re-validated."""
    data = cfg.model_dump(mode="python")
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"{source}: unknown field {dotted!r}")
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ConfigError(f"{source}: unknown field {dotted!r}")
        node[parts[-1]] = value
    return config_from_dict(data, source=source)
