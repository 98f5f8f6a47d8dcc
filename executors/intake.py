"""Task intake: everything a submission must pass before any of it is written anywhere.

Pure: :func:`validate_submission` takes the raw submission and what it is checked against, and
returns the accepted tasks in an order that runs every dependency first, or raises one
:class:`SubmissionError` naming what was wrong and where. Writing (Redis, MySQL) happens only after
it returns, so a bad task set leaves no trace.

Checks, in order: the submitter's tenant is known; the batch is not too large; each task is a mapping
with valid fields (the :class:`~core.domain.Task` model); its type is registered; its tenant is
the submitter's (a tenant cannot submit into another's namespace); the submitter's roles cover the
type's ``required_roles``; the JSON-encoded payload fits ``intake.max_payload_bytes``; ids are unique;
dependencies exist (in the set or among ``known_ids``) and form no cycle.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from core.config import AutotuneConfig
from core.deadlock import DependencyCycleError, UnknownDependencyError, check_dependencies
from core.domain import Task


class SubmissionError(ValueError):
    """A submission refused whole; the message names the task (index and id) and the problem."""


@dataclass(frozen=True)
class Submitter:
    """Who submits: authenticated elsewhere; intake only authorises."""

    user: str
    tenant: str
    roles: frozenset[str] = frozenset()


_compact_json = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps(..., separators=...) without
# building an encoder per call


def _where(i: int, raw: Any) -> str:
    tid = raw.get("id") if isinstance(raw, Mapping) else None
    return f"task {i}" + (f" ({tid!r})" if isinstance(tid, str) else "")


def validate_submission(
    raw_tasks: Sequence[Any], submitter: Submitter, cfg: AutotuneConfig, known_ids: Iterable[str] = ()
) -> list[Task]:
    """Validate a whole submission; return its tasks in dependency order, or raise SubmissionError."""
    intake = cfg.intake
    if submitter.tenant not in intake.tenants:
        raise SubmissionError(f"unknown tenant {submitter.tenant!r} (known: {', '.join(intake.tenants)})")
    if not isinstance(raw_tasks, Sequence) or isinstance(raw_tasks, (str, bytes)):
        raise SubmissionError(f"a submission is a list of tasks, got {type(raw_tasks).__name__}")
    if not raw_tasks:
        raise SubmissionError("a submission needs at least one task")
    if len(raw_tasks) > intake.max_batch:
        raise SubmissionError(f"{len(raw_tasks)} tasks in one submission; the limit is {intake.max_batch}")

    tasks: list[Task] = []
    by_id: dict[str, int] = {}
    missing_roles: dict[str, set[str]] = {}  # per task type: the same answer for every task of it
    for i, raw in enumerate(raw_tasks):
        if not isinstance(raw, Mapping):
            raise SubmissionError(f"{_where(i, raw)}: a task is a mapping of fields, got {type(raw).__name__}")
        data = dict(raw)
        data.setdefault("tenant", submitter.tenant)
        try:
            task = Task.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "(task)"
            raise SubmissionError(f"{_where(i, raw)}: {field}: {first['msg']}") from None
        if task.tenant != submitter.tenant:
            raise SubmissionError(
                f"{_where(i, raw)}: tenant {task.tenant!r} is not the submitter's tenant {submitter.tenant!r}"
            )
        task_type = cfg.tasks.get(task.type)
        if task_type is None:
            raise SubmissionError(
                f"{_where(i, raw)}: unknown task type {task.type!r} (registered: {', '.join(sorted(cfg.tasks))})"
            )
        missing = missing_roles.get(task.type)
        if missing is None:
            missing = missing_roles[task.type] = set(task_type.required_roles) - submitter.roles
        if missing:
            raise SubmissionError(
                f"{_where(i, raw)}: user {submitter.user!r} lacks role(s) {sorted(missing)} for {task.type!r}"
            )
        try:
            size = len(_compact_json(task.payload).encode())
        except (TypeError, ValueError) as err:
            raise SubmissionError(f"{_where(i, raw)}: payload is not JSON-encodable ({err})") from None
        if size > intake.max_payload_bytes:
            raise SubmissionError(f"{_where(i, raw)}: payload is {size} bytes; the limit is {intake.max_payload_bytes}")
        if task.id in by_id:
            raise SubmissionError(f"{_where(i, raw)}: id {task.id!r} already used by task {by_id[task.id]}")
        by_id[task.id] = i
        tasks.append(task)

    if not any(t.dependencies for t in tasks):
        return tasks  # no edges: the order given is a dependency order (the one the check returns)
    try:
        order = check_dependencies({t.id: t.dependencies for t in tasks}, known_ids)
    except (DependencyCycleError, UnknownDependencyError) as err:
        raise SubmissionError(str(err)) from None
    index = {t.id: t for t in tasks}
    return [index[tid] for tid in order]
