"""What the parser produces, and the checks every backend's output passes before it can be submitted.

:func:`check_params` is the one definition of a valid parameter value: the offline extractors' and
the LLM's answers both go through it, against the task type's schema in the config
(:class:`~core.config.ParamSpec`). :func:`to_task` turns an instruction into the raw task the
ordinary intake (:func:`executors.intake.validate_submission`) checks again, with the submitter's
own tenant and roles: nothing in the text can choose those.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from core.config import AutotuneConfig, ParamSpec

NONE_INTENT = "none"


@dataclass(frozen=True)
class TaskInstruction:
    """A request turned into a machine instruction.

    ``intent`` is a registered task type, or None when the text asks for none of them (or the parser
    cannot tell). ``params`` hold only checked, normalised values; ``missing`` names the required
    parameters the text did not give; ``problems`` say what was given but refused (a bad value, an
    unregistered type proposed by the model); ``backend`` says which parser answered, and
    ``fallback`` why another one did not."""

    text: str
    intent: str | None
    params: dict[str, Any]
    confidence: float
    backend: str
    missing: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    fallback: str | None = None
    scores: dict[str, float] = field(default_factory=dict)

    def ready(self, threshold: float) -> bool:
        """Complete and sure enough to submit."""
        return self.intent is not None and not self.missing and self.confidence >= threshold

    def refusal(self, threshold: float) -> str | None:
        """Why nothing would be submitted, in a sentence; None if it would be."""
        if self.intent is None:
            why = "the request matches no registered task type"
            if self.problems:
                why += f" ({'; '.join(self.problems)})"
            return why
        if self.confidence < threshold:
            return (
                f"not sure enough: {self.intent!r} at confidence {self.confidence:.2f}, below the "
                f"threshold {threshold:.2f}; please rephrase"
            )
        if self.missing:
            return f"{self.intent!r} needs {', '.join(self.missing)}: missing from the request"
        return None


class ParamError(ValueError):
    """A parameter value that does not fit its schema."""


def check_value(name: str, spec: ParamSpec, value: Any, tz: ZoneInfo) -> Any:
    """``value`` normalised to what ``spec`` allows, or ParamError naming the parameter."""
    if value is None:
        raise ParamError(f"{name}: no value")
    t = spec.type
    if t in ("integer", "number"):
        if isinstance(value, bool):
            raise ParamError(f"{name}: expected a number, got {value!r}")
        if isinstance(value, str):
            try:
                value = float(value.replace(",", "").strip())
            except ValueError:
                raise ParamError(f"{name}: expected a number, got {value!r}") from None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ParamError(f"{name}: expected a finite number, got {value!r}")
        if value <= 0:
            raise ParamError(f"{name}: must be > 0, got {value!r}")
        if t == "integer":
            if value != int(value):
                raise ParamError(f"{name}: expected a whole number, got {value!r}")
            return int(value)
        return int(value) if float(value).is_integer() else round(float(value), 2)
    if not isinstance(value, str):
        raise ParamError(f"{name}: expected text, got {type(value).__name__}")
    value = value.strip()
    if t == "enum":
        for choice in spec.choices:
            if value.lower() == choice.lower():
                return choice
        raise ParamError(f"{name}: {value!r} is not one of {', '.join(spec.choices)}")
    if t == "date":
        try:
            return date.fromisoformat(value[:10]).isoformat()
        except ValueError:
            raise ParamError(f"{name}: expected a date YYYY-MM-DD, got {value!r}") from None
    if t == "datetime":
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise ParamError(f"{name}: expected an ISO 8601 date and time, got {value!r}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=tz)
        return when.isoformat()
    if not value or len(value) > 256:
        raise ParamError(f"{name}: expected 1-256 characters, got {len(value)}")
    if spec.pattern is not None and not re.fullmatch(spec.pattern, value):
        raise ParamError(f"{name}: {value!r} does not match {spec.pattern}")
    return value


def check_params(
    params: Mapping[str, ParamSpec], raw: Mapping[str, Any], tz: ZoneInfo
) -> tuple[dict[str, Any], tuple[str, ...], tuple[str, ...]]:
    """Check ``raw`` against the schema: (accepted values, missing required names, problems).

    Unknown names are dropped with a problem; a bad value is dropped with a problem, so a required
    parameter with a bad value counts as missing too."""
    clean: dict[str, Any] = {}
    problems: list[str] = []
    for name, value in raw.items():
        spec = params.get(name)
        if spec is None:
            problems.append(f"{name}: not a parameter of this task type")
            continue
        if value is None or value == "":
            continue
        try:
            clean[name] = check_value(name, spec, value, tz)
        except ParamError as err:
            problems.append(str(err))
    missing = tuple(n for n, s in params.items() if s.required and n not in clean)
    return clean, missing, tuple(problems)


def to_task(instruction: TaskInstruction, cfg: AutotuneConfig, *, task_id: str | None = None) -> dict[str, Any]:
    """The raw task for the ordinary intake: type, deadline and payload. Tenant, roles and the other
    checks come from the submitter at :func:`executors.intake.validate_submission`, not from here."""
    if instruction.intent is None:
        raise ValueError("an instruction without an intent cannot become a task")
    raw: dict[str, Any] = {
        "id": task_id or f"nl-{uuid.uuid4().hex[:16]}",
        "type": instruction.intent,
        "payload": {**instruction.params, "source": "nl", "request_text": instruction.text[:500]},
    }
    deadline = cfg.tasks[instruction.intent].params.get("deadline")
    if deadline is not None and deadline.type == "datetime" and "deadline" in instruction.params:
        raw["deadline_s"] = datetime.fromisoformat(instruction.params["deadline"]).timestamp()
    return raw
