"""An agent's action as a policy: a scaling factor applied to a base, the one definition of what an
action index means.

A learned policy (or a Gymnasium agent) picks an index into ``control.factors``. What the factor
scales is ``control.action_base``:

- ``current`` (the default, the design card's): the concurrency in force, moved by at least one slot
  (:func:`control.guard.scale_concurrency`);
- ``rule`` (residual): the proposal of a base rule (``control.base_rule``, one of the calibrated
  rules), which is asked every interval with its own state, as the tuner asks its fallback, so its
  windows are warm whatever the agent chose. Factor 1.0 proposes exactly what the rule proposes, so
  an agent that always picks it is the rule, through the same guard.

:func:`factor_policy` makes the :class:`~control.policies.Policy`; the simulator's environment, the
live environment and a trained PPO model all decide through it (built by
:func:`models.registry.agent_policy`, which resolves the base rule's name), so the meaning of an
action cannot differ between them. The policy's state is the base rule's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from control.guard import scale_concurrency
from control.policies import Policy, PolicyContext

Chooser = Callable[[PolicyContext], int]
"""Which factor index to apply, given what the policy is shown (a model's greedy action, or the
action an environment was stepped with)."""


def factor_policy(choose: Chooser, factors: tuple[float, ...], base: Policy | None, name: str = "agent") -> Policy:
    """A policy that scales the current concurrency (``base`` None) or ``base``'s proposal by
    ``factors[choose(ctx)]``."""
    factors = tuple(factors)

    if base is None:

        def decide(ctx: PolicyContext, state: Any) -> tuple[float, Any]:
            return float(scale_concurrency(ctx.current, factors[choose(ctx)])), state

        return Policy(name, decide, params={"action_base": "current"})

    rule = base

    def decide_residual(ctx: PolicyContext, state: Any) -> tuple[float, Any]:
        factor = factors[choose(ctx)]
        out, state = rule.decide(ctx, state)
        # a plain product: x1.0 is the rule's own number, bit for bit (a NaN stays a NaN for the guard)
        return float(out) * factor, state

    return Policy(
        name,
        decide_residual,
        rule.initial_state,
        needs_lookahead=rule.needs_lookahead,
        params={"action_base": "rule", "base_rule": rule.name},
    )
