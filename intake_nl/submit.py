"""Submitting a parsed instruction: the ordinary intake's checks, then the store, the audit log and
the live queue, in that order (nothing is queued that is not durable and audited).

The task passes :func:`executors.cluster.accept_submission`, the definition every task goes through:
schema, registered type, the submitter's tenant and roles, payload size. A refusal there is a
:class:`executors.intake.SubmissionError` and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from core.config import AutotuneConfig
from core.priority import PRIORITY_CLASSES, priority_class
from executors.cluster import accept_submission
from executors.envelope import entry
from executors.intake import Submitter
from executors.queue import TaskQueue
from executors.store import AuditEvent, TaskStore
from intake_nl.instruction import TaskInstruction, check_params, to_task

if TYPE_CHECKING:
    from executors.cluster import TaskCluster


@dataclass(frozen=True)
class Submitted:
    task_id: str
    type: str
    tenant: str
    priority: float
    priority_class: str


def checked(cfg: AutotuneConfig, instruction: TaskInstruction) -> TaskInstruction:
    """The instruction with its parameters checked again against the schema, whoever built it; a
    ValueError ("nothing submitted: ...") if it is not ready to submit."""
    if instruction.intent is not None and instruction.intent in cfg.tasks:
        params, missing, problems = check_params(
            cfg.tasks[instruction.intent].params, instruction.params, ZoneInfo(cfg.intake.nl.timezone)
        )
        if problems:
            raise ValueError(f"nothing submitted: {'; '.join(problems)}")
        instruction = replace(instruction, params=params, missing=missing)
    why = instruction.refusal(cfg.intake.nl.confidence_threshold)
    if why is not None:
        raise ValueError(f"nothing submitted: {why}")
    return instruction


def submit_instruction(
    cfg: AutotuneConfig,
    store: TaskStore,
    queue: TaskQueue,
    instruction: TaskInstruction,
    submitter: Submitter,
    now_s: float,
    *,
    task_id: str | None = None,
) -> Submitted:
    """Store, audit and enqueue the instruction's task for ``submitter``; returns what was queued.

    Raises ValueError if the instruction is not ready (see :meth:`TaskInstruction.refusal`) and
    SubmissionError if the ordinary intake refuses the task; neither writes anything."""
    instruction = checked(cfg, instruction)
    raw = to_task(instruction, cfg, task_id=task_id)
    tasks, records, _ = accept_submission(cfg, store, [raw], submitter, now_s)
    task, rec = tasks[0], records[0]
    store.append_audit(
        [
            AuditEvent(
                now_s,
                submitter.tenant,
                submitter.user,
                "submit",
                task.id,
                {"type": task.type, "via": f"nl:{instruction.backend}", "confidence": round(instruction.confidence, 3)},
            )
        ]
    )
    # the dynamic score orders the queue, as for every task; a stated priority travels in the payload
    cls_ = priority_class(rec.priority)
    queue.enqueue_many([(task.id, cls_, entry(0))])  # the entry names the task; the store holds the rest
    return Submitted(task.id, task.type, submitter.tenant, rec.priority, PRIORITY_CLASSES[cls_])


def submit_to_cluster(cluster: TaskCluster, instruction: TaskInstruction, submitter: Submitter) -> str:
    """Submit through a running :class:`executors.cluster.TaskCluster` (its own intake, audit and
    metrics); returns the task id. The same readiness and schema checks as :func:`submit_instruction`."""
    instruction = checked(cluster.cfg, instruction)
    (task_id,) = cluster.submit([to_task(instruction, cluster.cfg)], submitter)
    return task_id
