"""Typed, validated configuration, loaded from YAML.

The shape follows the reference system's task config::

    tasks:
      order_processing:
        concurrency: 100
        timeout: 300
        retry_policy: {max_retries: 3, backoff: exponential}

plus the SLIs, the cluster's bounds, the control loop and the concurrency guard. Every section has
defaults, so an empty file (or no file) is a valid configuration. Errors name the file and the field
path (``tasks.order_processing.concurrency``), never a bare pydantic dump. Every float must be
finite (``.inf`` and ``.nan`` are refused), and sizes that would exhaust memory are refused with
the limit named (see *Limits* below).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.retry import RetryPolicy

# The names a config may use. They are part of the schema (like an enum's values); the
# implementations live above this layer (envs.rewards, envs.scenarios), which check at import that
# they implement exactly these.
REWARD_NAMES: tuple[str, ...] = ("sli_cost", "reference", "constrained")
CALIBRATED_RULE_NAMES: tuple[str, ...] = ("hpa", "kpa", "keda", "predictive", "static")
"""The rules ``autotune calibrate`` tunes alike (``models.calibration.RULES`` checks it is the same list)."""
SCENARIO_NAMES: tuple[str, ...] = (
    "constant",
    "diurnal",
    "flash-sale",
    "step",
    "bursty",
    "mmpp",
    "onoff",
    "flash-crowd",
    "weekly",
    "worldcup",
    "worldcup-holdout",
)


TraceGaps = Literal["reject", "fill-zero", "interpolate"]
"""What loading a trace does with missing bins (``envs.trace.load_trace``): refuse the file, fill
them with zeros, or interpolate linearly between the neighbours."""


def is_scenario_name(name: str) -> bool:
    """A name a config may give as ``simulation.scenario``: one of :data:`SCENARIO_NAMES` or ``trace:PATH``."""
    return name in SCENARIO_NAMES or (name.startswith("trace:") and len(name) > len("trace:"))


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the source and the field."""


# --- Limits -----------------------------------------------------------------------------------
# Inputs whose size would exhaust memory (or never finish) are refused when they are read, with
# the limit named, instead of a MemoryError minutes later. All of them live here; each is far
# above real use. README.md ("Bad input") lists them.

MAX_TICKS = 5_000_000
"""Simulator ticks of one episode (``simulation.duration_s / simulation.tick_s``), and of any other
span the simulator keeps a per-tick array or loop for: the control interval, a task's timeout, the
cluster's warm-up, a task's retries. An episode costs about 75 bytes a tick (rates, drawn
arrivals), so the limit is ~400 MB: 29 days at the default 0.5 s tick, where the default episode
is 7,200 ticks. The live replay (``autotune run``) is held to it too, at its own tick."""

MAX_ARRIVALS_PER_TICK = 100_000
"""Arrivals drawn in one tick at the peak (``peak_rate_per_s * tick_s``): 200,000 tasks/s at a
0.5 s tick, over 1,000 times the default peak. The live replay turns each arrival of a tick into a
task at once, so a tick's arrivals must fit in memory comfortably; past ~1e18 the Poisson draw
fails outright."""

MAX_TRACE_ROWS = 10_000_000
"""Rows of a trace CSV (``envs/trace.py``): loading costs ~150 bytes a row (the cells are parsed as
text first, to quote a bad one), so ~1.5 GB; that is 19 years of minutes or 115 days of seconds
(the WorldCup98 span is 125,000 minutes)."""

MAX_TRACE_BYTES = 1 << 30
"""Bytes of a trace CSV: the file is read into memory whole; 10 million rows of ``timestamp,count``
with ISO-8601 times are ~350 MB."""

MAX_SEEDS = 10_000
"""``--seeds`` of compare and calibrate: every seed is a simulation per policy and scenario; the
job list alone of 10^8 seeds is a MemoryError, and 10,000 already run for hours."""

MAX_WORKERS_PER_CORE = 4
"""``--workers`` may be at most this many per core: more processes than cores add no speed, and
each holds its own simulator and imports (~200 MB)."""

MAX_SEED = 2**32 - 1
"""Largest ``--seed``: NumPy's legacy seeding (used by Stable-Baselines3) takes 32 bits."""

MAX_LAST_DECISIONS = 1_000_000
"""``autotune decisions --last``: SQLite takes 64-bit limits; a million rows is already more than a
terminal shows."""

MAX_ENVS = 256
"""PPO's ``n_envs``: the environments step in one process (DummyVecEnv), each with its simulator."""

MAX_ROLLOUT_STEPS = 1_000_000
"""PPO's ``n_steps * n_envs``: the rollout buffer holds every step of an update (the default is
2,048)."""


class LimitError(ValueError):
    """A size over one of the limits above; ``field`` is what was too big (a config path or a flag)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def check_ticks(field: str, span_s: float, tick_s: float, what: str = "") -> None:
    """:class:`LimitError` naming ``field`` unless ``span_s`` seconds are at most :data:`MAX_TICKS` ticks of
    ``tick_s`` (``what`` describes the span when it is not the field's value itself)."""
    ticks = span_s / tick_s
    if not ticks <= MAX_TICKS:  # `not <=` so that NaN is refused too
        span = what or f"{span_s:g} s"
        raise LimitError(
            field,
            f"{span} is {ticks:.3g} ticks of {tick_s:g} s; the limit is {MAX_TICKS:,} "
            f"ticks ({_seconds(MAX_TICKS * tick_s)} at that tick)",
        )


def _seconds(x: float) -> str:
    return f"{x:,.0f} s" if x >= 10 else f"{x:g} s"


def check_arrivals(field: str, rate_per_s: float, tick_s: float) -> None:
    """:class:`LimitError` naming ``field`` unless ``rate_per_s`` draws at most :data:`MAX_ARRIVALS_PER_TICK`
    arrivals in a tick of ``tick_s``."""
    per_tick = rate_per_s * tick_s
    if not per_tick <= MAX_ARRIVALS_PER_TICK:
        raise LimitError(
            field,
            f"{rate_per_s:g} tasks/s is {per_tick:.3g} arrivals per tick of {tick_s:g} s; "
            f"the limit is {MAX_ARRIVALS_PER_TICK:,} per tick "
            f"({MAX_ARRIVALS_PER_TICK / tick_s:,.0f} tasks/s at that tick)",
        )


class _Model(BaseModel):
    # allow_inf_nan=False: an infinite interval or rate passes `gt=0` and crashes much later
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class StepConfig(_Model):
    """One downstream call of a task (payment, inventory, shipping, ...)."""

    mean_s: float = Field(gt=0, description="mean service time of the call, seconds")
    cv: float = Field(default=0.5, ge=0, description="coefficient of variation of the service time")
    transient_failure: float = Field(default=0.0, ge=0, le=1, description="retryable failure probability")
    permanent_failure: float = Field(default=0.0, ge=0, le=1, description="non-retryable failure probability")
    call_timeout_s: float = Field(default=5.0, gt=0, description="client timeout; a slower call fails as retryable")

    @model_validator(mode="after")
    def _failure_sum(self) -> StepConfig:
        if self.transient_failure + self.permanent_failure > 1:
            raise ValueError("transient_failure + permanent_failure must be <= 1")
        return self


def _default_order_steps() -> dict[str, StepConfig]:
    return {
        "payment": StepConfig(mean_s=0.40, cv=0.6, transient_failure=0.004, permanent_failure=0.0005),
        "inventory": StepConfig(mean_s=0.15, cv=0.5, transient_failure=0.002, permanent_failure=0.0002),
        "shipping": StepConfig(mean_s=0.50, cv=0.8, transient_failure=0.004, permanent_failure=0.0003),
    }


class ParamSpec(_Model):
    """One parameter of a task type's schema: what the natural-language intake extracts and checks.

    The values travel in the task's payload; ``deadline`` (type ``datetime``) also sets the task's
    ``deadline_s``, which drives its dynamic priority."""

    type: Literal["string", "integer", "number", "date", "datetime", "enum"] = "string"
    required: bool = False
    description: str = ""
    choices: tuple[str, ...] = Field(default=(), description="allowed values of an enum")
    pattern: str | None = Field(default=None, description="regular expression a string must match whole")

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.type == "enum" and not self.choices:
            raise ValueError("an enum parameter needs choices")
        if self.choices and self.type != "enum":
            raise ValueError(f"choices are for enum parameters, not {self.type}")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as err:
                raise ValueError(f"pattern is not a regular expression ({err})") from None
        return self


ORDER_ID_PATTERN = r"ORD-\d{5,8}"
SKU_PATTERN = r"SKU-[A-Z0-9]{2,12}"
PRIORITY_PARAM = ParamSpec(
    type="enum", choices=("high", "normal", "low"), description="how urgent: high (urgent, asap), normal, low (no rush)"
)
DEADLINE_PARAM = ParamSpec(type="datetime", description="when it must be done (sets the task's deadline)")


class TaskTypeConfig(_Model):
    """A registered task type: its concurrency, timeout, retry policy and the calls it makes."""

    description: str = Field(default="", description="what the task does, in a line (shown to the intake)")
    params: dict[str, ParamSpec] = Field(default_factory=dict, description="the parameters its payload carries")
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
    cpu_rate_limit: float = Field(default=0.5, gt=0, le=64, description="CPU cores an untrusted task may use at once")
    noop: bool = Field(
        default=False,
        description="succeeds at once without calling its steps (benchmarks "
        "measure the cluster's own overhead with it); set by the deployment, never by a payload",
    )

    @field_validator("params")
    @classmethod
    def _param_names(cls, v: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        for name in v:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", name):
                raise ValueError(f"parameter name {name!r}: use lower-case letters, digits and '_'")
        return v

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


def _default_task_types() -> dict[str, TaskTypeConfig]:
    """The registry a fresh install has: the reference order processing and four more e-commerce
    task types the natural-language intake can submit. Each calls simulated downstream services."""
    order_id = ParamSpec(required=True, pattern=ORDER_ID_PATTERN, description="order id, ORD- and 5-8 digits")
    return {
        "order_processing": TaskTypeConfig(
            description="process an order: payment, then inventory, then shipping",
            params={"order_id": order_id, "priority": PRIORITY_PARAM, "deadline": DEADLINE_PARAM},
        ),
        "refund": TaskTypeConfig(
            description="refund all or part of an order to the customer",
            params={
                "order_id": order_id,
                "amount": ParamSpec(type="number", required=True, description="amount to refund"),
                "currency": ParamSpec(type="enum", choices=("CNY", "USD"), description="currency of the amount"),
                "priority": PRIORITY_PARAM,
                "deadline": DEADLINE_PARAM,
            },
            steps={"payment": StepConfig(mean_s=0.40, cv=0.6, transient_failure=0.004, permanent_failure=0.0005)},
            required_roles=("refunds",),
            concurrency=20,
            priority_mix=(0.4, 0.5, 0.1),
        ),
        "check_inventory": TaskTypeConfig(
            description="check the stock of a product (SKU), optionally in one warehouse",
            params={
                "sku": ParamSpec(
                    required=True, pattern=SKU_PATTERN, description="product SKU, SKU- and 2-12 letters or digits"
                ),
                "warehouse": ParamSpec(
                    type="enum",
                    choices=("SH", "BJ", "GZ", "SZ"),
                    description="warehouse: SH Shanghai, BJ Beijing, GZ Guangzhou, SZ Shenzhen",
                ),
                "quantity": ParamSpec(type="integer", description="units the user wants to know are available"),
            },
            steps={"inventory": StepConfig(mean_s=0.15, cv=0.5, transient_failure=0.002, permanent_failure=0.0002)},
            concurrency=20,
        ),
        "generate_report": TaskTypeConfig(
            description="generate a sales, inventory, refunds or orders report over a date range",
            params={
                "report_type": ParamSpec(
                    type="enum", required=True, choices=("sales", "inventory", "refunds", "orders")
                ),
                "start_date": ParamSpec(type="date", required=True, description="first day of the period"),
                "end_date": ParamSpec(type="date", required=True, description="last day of the period"),
                "format": ParamSpec(type="enum", choices=("pdf", "csv", "xlsx")),
                "deadline": DEADLINE_PARAM,
            },
            steps={"reporting": StepConfig(mean_s=2.0, cv=0.5, transient_failure=0.002)},
            concurrency=10,
            timeout=900.0,
            priority_mix=(0.1, 0.5, 0.4),
        ),
        "clean_data": TaskTypeConfig(
            description="clean up a dataset: purge, deduplicate or archive old rows",
            params={
                "dataset": ParamSpec(
                    required=True, pattern=r"[a-z][a-z0-9_]{1,63}", description="dataset (table) name"
                ),
                "before_date": ParamSpec(type="date", description="only rows older than this day"),
                "deadline": DEADLINE_PARAM,
            },
            steps={"storage": StepConfig(mean_s=1.5, cv=0.5, transient_failure=0.002)},
            required_roles=("data_admin",),
            concurrency=10,
            timeout=1800.0,
            priority_mix=(0.0, 0.3, 0.7),
        ),
    }


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
    outage_budget_s: float = Field(
        default=300.0,
        ge=0,
        description="how long the live cluster waits out an "
        "unreachable Redis or database before the run ends (with a report)",
    )
    outage_retry: RetryPolicy = Field(
        default=RetryPolicy(max_retries=1_000_000, base_s=0.2, jitter_s=0.2, cap_s=2.0),
        description="backoff between checks whether an unreachable server is back",
    )

    @model_validator(mode="after")
    def _bounds(self) -> ClusterConfig:
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
    action_base: Literal["current", "rule"] = Field(
        default="current",
        description="what a factor scales: the concurrency in force, or the base rule's proposal (residual)",
    )
    base_rule: str = Field(default="kpa", description="the calibrated rule whose proposal 'rule' mode scales")
    reward: str = "sli_cost"
    attainment_target: float = Field(
        default=0.99,
        gt=0,
        le=1,
        description="share of intervals meeting all SLIs that the constrained reward's multiplier aims for",
    )

    @field_validator("base_rule")
    @classmethod
    def _known_rule(cls, v: str) -> str:
        if v not in CALIBRATED_RULE_NAMES:
            raise ValueError(f"unknown base rule {v!r}; choose one of {', '.join(CALIBRATED_RULE_NAMES)}")
        return v

    @field_validator("reward")
    @classmethod
    def _known_reward(cls, v: str) -> str:
        if v not in REWARD_NAMES:
            raise ValueError(f"unknown reward {v!r}; choose one of {', '.join(REWARD_NAMES)}")
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
    trace_gaps: TraceGaps = Field(
        default="reject",
        description="missing bins in a trace:PATH file: reject the file, fill-zero, or interpolate linearly",
    )

    @field_validator("scenario")
    @classmethod
    def _known_scenario(cls, v: str) -> str:
        if not is_scenario_name(v):
            raise ValueError(f"unknown scenario {v!r}; choose one of {', '.join(SCENARIO_NAMES)} or trace:PATH.csv")
        return v


class LLMConfig(_Model):
    """The OpenAI-compatible chat-completions endpoint (DeepSeek serves one) behind the natural-language
    intake. Nothing is hard-coded: ``AUTOTUNE_LLM_BASE_URL`` / ``AUTOTUNE_LLM_MODEL`` /
    ``AUTOTUNE_LLM_API_KEY`` override these; ``DEEPSEEK_API_KEY`` is read when no key is set, and
    with it alone the DeepSeek defaults below apply."""

    base_url: str | None = Field(default=None, description="e.g. https://api.deepseek.com (its /chat/completions)")
    model: str | None = Field(default=None, description="e.g. deepseek-chat")
    api_key_env: str = Field(default="AUTOTUNE_LLM_API_KEY", description="environment variable holding the key")
    timeout_s: float = Field(default=20.0, gt=0, description="per request")
    retry_policy: RetryPolicy = RetryPolicy(max_retries=2, base_s=0.5, jitter_s=0.5, cap_s=4.0)
    breaker_failures: int = Field(default=3, ge=1, description="consecutive failures that open the breaker")
    breaker_reset_s: float = Field(default=60.0, ge=0, description="how long it stays open")
    temperature: float = Field(default=0.0, ge=0, le=2)


class NLIntakeConfig(_Model):
    """Natural-language intake: which parser, how sure it must be, and the time zone of relative dates."""

    backend: Literal["auto", "offline", "llm"] = Field(
        default="auto", description="auto: the LLM if one is configured, else offline; offline: never the network"
    )
    confidence_threshold: float = Field(default=0.5, ge=0, le=1, description="below it nothing is submitted")
    timezone: str = Field(default="Asia/Shanghai", description="IANA zone for 'tomorrow 9am' and dates")
    llm: LLMConfig = LLMConfig()

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as Asia/Shanghai or UTC)") from None
        return v


class TenantQuota(_Model):
    """What one tenant may hold of the cluster while others wait (see control.share and the
    cluster's admission of sandboxed tasks)."""

    slot_weight: float = Field(default=1.0, gt=0, description="weight of its fair share of slots")
    max_slots: int | None = Field(default=None, ge=0, description="hard cap on its slots (None: its fair share)")
    sandbox_cpu: float = Field(
        default=1.0,
        gt=0,
        description="cores its untrusted tasks may use at once: the sum "
        "of their cpu_rate_limit (one task always runs, even if larger)",
    )
    sandbox_memory_mb: int = Field(
        default=2048,
        ge=16,
        description="memory its untrusted tasks may hold at once: "
        "the sum of their memory_limit_mb (one task always runs, even if larger)",
    )


class QuotaConfig(_Model):
    """Tenant quotas: one per tenant, the default for the rest."""

    default: TenantQuota = TenantQuota()
    tenants: dict[str, TenantQuota] = Field(default_factory=dict)

    def for_tenant(self, tenant: str) -> TenantQuota:
        return self.tenants.get(tenant, self.default)


class IntakeConfig(_Model):
    """Who may submit what: tenants, limits on a submission, and the natural-language intake."""

    tenants: tuple[str, ...] = ("default",)
    max_payload_bytes: int = Field(default=65_536, ge=1, description="JSON-encoded payload size limit")
    max_batch: int = Field(default=10_000, ge=1, description="tasks in one submission")
    nl: NLIntakeConfig = NLIntakeConfig()

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

    tasks: dict[str, TaskTypeConfig] = Field(default_factory=_default_task_types)
    slis: SLIConfig = SLIConfig()
    cluster: ClusterConfig = ClusterConfig()
    guard: GuardSettings = GuardSettings()
    control: ControlConfig = ControlConfig()
    simulation: SimulationConfig = SimulationConfig()
    intake: IntakeConfig = IntakeConfig()
    quotas: QuotaConfig = QuotaConfig()
    task_type: str = Field(default="order_processing", description="the task type the simulator replays")

    @model_validator(mode="after")
    def _cross(self) -> AutotuneConfig:
        if self.task_type not in self.tasks:
            raise ValueError(f"task_type {self.task_type!r} is not one of tasks: {sorted(self.tasks)}")
        unknown = sorted(set(self.quotas.tenants) - set(self.intake.tenants))
        if unknown:
            raise ValueError(
                f"quotas.tenants names {unknown}, which are not in intake.tenants {list(self.intake.tenants)}"
            )
        for name, task in self.tasks.items():
            c = task.concurrency
            if not (self.cluster.min_concurrency <= c <= self.cluster.max_concurrency):
                raise ValueError(
                    f"tasks.{name}.concurrency ({c}) must lie within cluster bounds "
                    f"[{self.cluster.min_concurrency}, {self.cluster.max_concurrency}]"
                )
        return self

    @model_validator(mode="after")
    def _sizes(self) -> AutotuneConfig:
        """The simulator's per-tick arrays and loops stay within :data:`MAX_TICKS` and
        :data:`MAX_ARRIVALS_PER_TICK` (every task type: any may be the one simulated)."""
        sim = self.simulation
        tick = sim.tick_s
        check_ticks("simulation.duration_s", sim.duration_s, tick)
        check_arrivals("simulation.peak_rate_per_s", sim.peak_rate_per_s, tick)
        check_ticks("control.interval_s", self.control.interval_s, tick)
        check_ticks("cluster.warmup_s", self.cluster.warmup_s, tick)
        for name, task in self.tasks.items():
            check_ticks(f"tasks.{name}.timeout", task.timeout, tick)
            r = task.retry_policy
            attempts = r.max_retries + 1
            # the simulator keeps a backoff ring of (cap_s + jitter_s) / tick_s (+2) slots per attempt
            check_ticks(
                f"tasks.{name}.retry_policy",
                attempts * (r.cap_s + r.jitter_s + 2 * tick),
                tick,
                what=f"{attempts:,} attempts x a backoff of up to cap_s + jitter_s = {r.cap_s + r.jitter_s:g} s",
            )
        return self

    @property
    def task(self) -> TaskTypeConfig:
        return self.tasks[self.task_type]


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, LimitError):  # a check of the whole config that knows its field
            lines.append(f"{source}: {cause}")
            continue
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


def read_text_file(path: str | os.PathLike[str], what: str, max_bytes: int = 64 << 20) -> str:
    """The UTF-8 text of a file the user named; :class:`ConfigError` naming it (and ``what`` it
    should be) when it is missing, a directory, not a regular file, unreadable, over ``max_bytes``
    or not UTF-8 text."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: {what} not found")
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, not a {what}")
    if not p.is_file():  # /dev/zero, a FIFO: reading it could block or never end
        raise ConfigError(f"{p}: not a regular file (a {what} must be one)")
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise ConfigError(f"{p}: {size:,} bytes; a {what} may have at most {max_bytes:,}")
        data = p.read_bytes()
    except OSError as err:
        raise ConfigError(f"{p}: cannot read the {what}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{p}: not a UTF-8 text file (bad byte at offset {err.start}); a {what} must be text"
        ) from None


def load_config(path: str | os.PathLike[str] | None = None) -> AutotuneConfig:
    """Load a YAML config; ``None`` gives the defaults."""
    if path is None:
        return AutotuneConfig()
    p = Path(path)
    text = read_text_file(p, "config file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        why = " ".join(str(getattr(err, "problem", None) or err).split())  # one line
        raise ConfigError(f"{p}{where}: not valid YAML ({why})") from None
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
