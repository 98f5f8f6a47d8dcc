"""The tuner's decision: a pure function of (input, state, policy, fallback), the one decision path.

Every control interval :func:`decide` asks the policy in charge for a target concurrency, passes it
through the guard (:func:`control.guard.guard`, with the context built by
:func:`control.guard.guard_context`), and says what is applied and why. No clocks, no I/O. It is the
only place a decision is made, offline and online alike (as Ray Serve wraps every autoscaling policy
in one function): the simulator's environment (:class:`envs.scaling_env.ConcurrencyScalingEnv`, and
through it rollouts, ``compare``, ``calibrate`` and training), the live environment and the live loop
(:mod:`autotune.tuning_loop`, which reads the metrics, applies the result and stores the record) all call it.

Modes:

- ``active``: the policy's guarded decision is applied;
- ``shadow``: the policy decides and is recorded (with what its guard would have made of it), but
  the fallback controller (the calibrated HPA) is in charge and its decision is applied, so a new
  policy can be judged against the one in charge;
- ``off``: nothing changes; the policy's would-be decision is still recorded.

Fallback to the calibrated HPA (``reason`` says which, ``fallback`` is True) when the model is
missing or incompatible (``fallback:model:...``), when the policy raised (``fallback:policy-error:...``),
when the metrics are stale, missing or NaN (``fallback:metrics:...``; with no snapshot at all the
concurrency is held: the HPA cannot decide blind either), or when the guard's emergency rule fires
for the policy's proposal (``fallback:emergency``). The next interval without the cause returns to
the policy. The fallback is asked every interval it can be, so its own state (the HPA's
stabilisation window) is warm when it takes over.

Changing the mode and overriding the concurrency are operator actions (:func:`change_mode`,
:func:`override`): they need the ``operator`` role and produce a record like any decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Protocol

import numpy as np

from control.guard import GuardContext, GuardDecision, GuardState, guard, guard_context
from control.policies import Lookahead, Policy, PolicyContext
from core.config import AutotuneConfig, ClusterConfig
from core.domain import ClusterSnapshot
from core.observation import N_FEATURES

OPERATOR_ROLE = "operator"


class Mode(str, Enum):
    ACTIVE = "active"
    SHADOW = "shadow"
    OFF = "off"

    def __str__(self) -> str:
        return self.value


class PermissionDenied(PermissionError):
    """An operator action by someone without the operator role; the message names who and what."""


@dataclass(frozen=True)
class TunerState:
    mode: Mode = Mode.ACTIVE
    guard_state: GuardState = GuardState()  # noqa: RUF009 - an immutable NamedTuple; the cluster's: last applied change, for cooldowns
    shadow_guard_state: GuardState = GuardState()  # noqa: RUF009 - immutable; the shadowed policy's, as if it were in charge
    policy_state: Any = None
    fallback_state: Any = None

    @classmethod
    def initial(cls, mode: Mode, policy: Policy | None, fallback: Policy) -> TunerState:
        return cls(
            Mode(mode),
            policy_state=None if policy is None else policy.initial_state,
            fallback_state=fallback.initial_state,
        )


@dataclass(frozen=True)
class TunerInput:
    now_s: float
    current: int  # target concurrency in force
    snapshot: ClusterSnapshot | None  # the interval just ended; None when the metrics could not be read
    previous: ClusterSnapshot | None
    observation: np.ndarray | None
    metrics_problem: str | None  # stale, missing or NaN metrics, as the adapter found them
    nominal_service_time_s: float
    config: AutotuneConfig
    lookahead: Lookahead | None = None  # realised arrivals ahead: the simulator's, for clairvoyant baselines


@dataclass(frozen=True)
class DecisionRecord:
    time_s: float
    mode: str
    policy: str  # the policy being tuned with (or judged, in shadow mode)
    controller: str  # whose value was applied: the policy, the fallback, "hold", "operator"
    observation: list[float] | None
    policy_output: float | None  # what the policy proposed (None when it was not asked)
    guard_applied: int | None  # what the guard made of the policy's proposal
    guard_reasons: tuple[str, ...]
    applied: int
    previous: int
    reason: str  # policy | shadow | off | fallback:... | mode:a->b | override
    fallback: bool = False
    who: str = "tuner"
    emergency: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def overridden(self) -> bool:
        """The applied value is not what the policy proposed: the guard changed it, or another
        controller (the fallback, a hold) decided."""
        return bool(self.guard_reasons) or self.controller != self.policy


class DecisionSink(Protocol):
    """Where each decision goes once made (the store's ``record_decisions``, the exporter, a list
    in a test). The live loop calls it; a failing sink is logged, never ends the run."""

    def __call__(self, record: DecisionRecord, /) -> None: ...


def proposal(value: float, name: str = "agent") -> Policy:
    """A policy that proposes ``value``: an agent's action, or a proposal made elsewhere."""
    return Policy(name, lambda ctx, state: (value, state))


def _policy_context(inp: TunerInput) -> PolicyContext:
    assert inp.snapshot is not None
    obs = inp.observation if inp.observation is not None else np.zeros(N_FEATURES, dtype=np.float32)
    return PolicyContext(
        now_s=inp.now_s,
        current=inp.current,
        snapshot=inp.snapshot,
        previous=inp.previous,
        observation=obs,
        config=inp.config,
        nominal_service_time_s=inp.nominal_service_time_s,
        lookahead=inp.lookahead,
    )


def _ask(policy: Policy, inp: TunerInput, state: Any) -> tuple[float | None, Any, str | None]:
    """The policy's proposal and new state, or (None, old state, what went wrong)."""
    try:
        proposal, new_state = policy.decide(_policy_context(inp), state)
    except Exception as err:
        return None, state, f"{type(err).__name__}: {err}"
    try:
        return float(proposal), new_state, None
    except (TypeError, ValueError):
        return math.nan, new_state, None  # not a number: the guard holds (invalid_proposal)


def _guard_ctx(inp: TunerInput) -> GuardContext:
    assert inp.snapshot is not None
    return guard_context(inp.now_s, inp.current, inp.snapshot, inp.previous, inp.config.slis)


def _obs_list(inp: TunerInput) -> list[float] | None:
    return None if inp.observation is None else np.asarray(inp.observation, dtype=np.float64).ravel().tolist()


def decide(
    inp: TunerInput, state: TunerState, policy: Policy | None, fallback: Policy, policy_problem: str | None = None
) -> tuple[DecisionRecord, TunerState]:
    """One interval's decision; see the module docstring for modes and fallbacks."""
    name = policy.name if policy is not None else "none"
    mode = state.mode
    if inp.snapshot is None:  # nothing to decide on: hold, say why
        why = inp.metrics_problem or "no metrics"
        return DecisionRecord(
            inp.now_s,
            str(mode),
            name,
            "hold",
            _obs_list(inp),
            None,
            None,
            (),
            inp.current,
            inp.current,
            f"fallback:metrics:{why}",
            fallback=True,
        ), state

    # the fallback is asked whenever there is a snapshot, so its state is warm when it takes over
    fb_out, fb_state, fb_err = _ask(fallback, inp, state.fallback_state)
    ctx, cfg = _guard_ctx(inp), inp.config
    fb_dec = guard(ctx, fb_out if fb_out is not None else float(inp.current), state.guard_state, cfg.guard, cfg.cluster)

    # the policy, if it can be asked
    problem = None
    out: float | None = None
    dec: GuardDecision | None = None
    policy_state = state.policy_state
    if policy is None or policy_problem:
        problem = f"fallback:model:{policy_problem or 'no policy'}"
    elif inp.metrics_problem:
        problem = f"fallback:metrics:{inp.metrics_problem}"
    else:
        out, policy_state, err = _ask(policy, inp, policy_state)
        if err is not None or out is None:
            problem = f"fallback:policy-error:{err}"
        else:
            dec = guard(
                ctx, out, state.shadow_guard_state if mode is Mode.SHADOW else state.guard_state, cfg.guard, cfg.cluster
            )
            if dec.emergency and mode is Mode.ACTIVE:
                problem = "fallback:emergency"

    # who decides, and the guard state that follows (the cluster's, and the shadowed policy's)
    guard_state, shadow_state = state.guard_state, state.shadow_guard_state
    extra: dict[str, Any] = {}
    fallback_used = False
    if mode is Mode.OFF:
        controller, applied = "off", inp.current
        reason = "off" if problem is None else f"off;{problem}"
    elif mode is Mode.SHADOW:
        if dec is not None:
            shadow_state = dec.state
        guard_state = fb_dec.state
        controller, applied = fallback.name, fb_dec.applied
        reason = "shadow" if problem is None else f"shadow;{problem}"
        extra = {"controller_output": fb_out, "controller_reasons": list(fb_dec.reasons)}
    elif problem is None and dec is not None:
        guard_state = dec.state
        controller, applied, reason = name, dec.applied, "policy"
    elif fb_err is not None:  # the fallback failed too: hold
        controller, applied, reason, fallback_used = "hold", inp.current, f"{problem};fallback-error:{fb_err}", True
    else:
        guard_state = fb_dec.state
        controller, applied, reason, fallback_used = fallback.name, fb_dec.applied, problem or "fallback", True
        extra = {"controller_output": fb_out, "controller_reasons": list(fb_dec.reasons)}

    rec = DecisionRecord(
        inp.now_s,
        str(mode),
        name,
        controller,
        _obs_list(inp),
        out,
        None if dec is None else dec.applied,
        () if dec is None else dec.reasons,
        applied,
        inp.current,
        reason,
        fallback=fallback_used,
        emergency=bool(dec is not None and dec.emergency) or fb_dec.emergency,
        extra=extra,
    )
    return rec, TunerState(mode, guard_state, shadow_state, policy_state, fb_state)


def _require_operator(user: str, roles: frozenset[str], action: str) -> None:
    if OPERATOR_ROLE not in roles:
        have = ", ".join(sorted(roles)) or "none"
        raise PermissionDenied(f"user {user!r} may not {action}: it needs the {OPERATOR_ROLE!r} role (has: {have})")


def change_mode(
    state: TunerState, mode: Mode, user: str, roles: frozenset[str], now_s: float, current: int
) -> tuple[TunerState, DecisionRecord]:
    """Switch between active, shadow and off (operator role); the record is the audit entry."""
    mode = Mode(mode)
    _require_operator(user, roles, f"change the tuner's mode to {mode.value!r}")
    rec = DecisionRecord(
        time_s=now_s,
        mode=str(mode),
        policy="",
        controller="operator",
        observation=None,
        policy_output=None,
        guard_applied=None,
        guard_reasons=(),
        applied=current,
        previous=current,
        reason=f"mode:{state.mode.value}->{mode.value}",
        who=user,
    )
    return replace(state, mode=mode), rec


def override(
    state: TunerState,
    concurrency: int,
    user: str,
    roles: frozenset[str],
    now_s: float,
    current: int,
    cluster: ClusterConfig,
) -> tuple[TunerState, DecisionRecord]:
    """Set the concurrency by hand (operator role), within the cluster's bounds; counts as a change
    for the guard's cooldowns."""
    _require_operator(user, roles, f"override the concurrency to {concurrency!r}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int):
        raise ValueError(f"override: concurrency must be a whole number of slots, got {concurrency!r}")
    if not cluster.min_concurrency <= concurrency <= cluster.max_concurrency:
        raise ValueError(
            f"override: concurrency {concurrency} is outside the cluster's bounds "
            f"[{cluster.min_concurrency}, {cluster.max_concurrency}]"
        )
    rec = DecisionRecord(
        time_s=now_s,
        mode=str(state.mode),
        policy="",
        controller="operator",
        observation=None,
        policy_output=float(concurrency),
        guard_applied=None,
        guard_reasons=(),
        applied=concurrency,
        previous=current,
        reason="override",
        who=user,
    )
    return replace(state, guard_state=GuardState(now_s)), rec
