"""The domain model: task validation, lifecycle, task sets and priority order."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.deadlock import DependencyCycleError
from core.domain import (
    ALLOWED_PRIORS,
    ALLOWED_TRANSITIONS,
    InvalidTransition,
    PriorityInputs,
    Task,
    TaskStatus,
    accept_task_set,
    task_priority,
    transition,
)


def test_task_validation_names_the_field():
    with pytest.raises(ValidationError, match="cpu"):
        Task(id="a", type="order_processing", cpu=-1)
    with pytest.raises(ValidationError, match="deadline_s"):
        Task(id="a", type="order_processing", deadline_s=float("nan"))
    with pytest.raises(ValidationError, match="extra"):
        Task(id="a", type="order_processing", colour="red")
    with pytest.raises(ValidationError, match="duplicates"):
        Task(id="a", type="order_processing", dependencies=("b", "b"))


def test_lifecycle_transitions():
    s = transition(TaskStatus.QUEUED, TaskStatus.RUNNING)
    s = transition(s, TaskStatus.RETRYING)
    s = transition(s, TaskStatus.QUEUED)
    s = transition(s, TaskStatus.RUNNING)
    s = transition(s, TaskStatus.SUCCEEDED)
    assert s.terminal
    with pytest.raises(InvalidTransition, match="from succeeded to running"):
        transition(s, TaskStatus.RUNNING)
    with pytest.raises(InvalidTransition):
        transition(TaskStatus.RETRYING, TaskStatus.SUCCEEDED)  # a retry is queued again before it runs
    with pytest.raises(InvalidTransition):
        transition(TaskStatus.WAITING, TaskStatus.RUNNING)
    # the store does not record the claim: an attempt's outcome is settled over QUEUED
    assert transition(TaskStatus.QUEUED, TaskStatus.SUCCEEDED) is TaskStatus.SUCCEEDED
    assert transition(TaskStatus.WAITING, TaskStatus.QUEUED) is TaskStatus.QUEUED


def test_allowed_priors_read_the_transitions_backwards():
    for target in TaskStatus:
        for prior in TaskStatus:
            assert (prior in ALLOWED_PRIORS[target]) == (target in ALLOWED_TRANSITIONS[prior])
    assert ALLOWED_PRIORS[TaskStatus.WAITING] == frozenset()  # only ever a task's first status
    assert ALLOWED_PRIORS[TaskStatus.SUCCEEDED] == {TaskStatus.QUEUED, TaskStatus.RUNNING}


def test_task_set_with_a_cycle_is_rejected_naming_it():
    tasks = [
        Task(id="pay", type="t", dependencies=("ship",)),
        Task(id="ship", type="t", dependencies=("stock",)),
        Task(id="stock", type="t", dependencies=("pay",)),
        Task(id="mail", type="t"),
    ]
    with pytest.raises(DependencyCycleError) as exc:
        accept_task_set(tasks)
    assert "pay" in str(exc.value) and "ship" in str(exc.value) and "stock" in str(exc.value)
    assert "mail" not in str(exc.value)


def test_task_set_order_and_duplicate_ids():
    tasks = [Task(id="ship", type="t", dependencies=("pay",)), Task(id="pay", type="t")]
    assert accept_task_set(tasks) == ["pay", "ship"]
    with pytest.raises(ValueError, match="appears twice"):
        accept_task_set([Task(id="a", type="t"), Task(id="a", type="t")])


def test_overdue_task_outranks_one_due_later():
    now = 1_000_000.0
    overdue = Task(id="a", type="t", deadline_s=now - 30)
    later = Task(id="b", type="t", deadline_s=now + 3600)
    assert task_priority(overdue, now, 4.0, 4096) > task_priority(later, now, 4.0, 4096)


def test_priority_inputs_are_the_tasks_and_score_alike():
    t = Task(id="a", type="order_processing", deadline_s=1_000.0, cpu=2.0, memory_mb=512.0, historical_success_rate=0.7)
    assert task_priority(PriorityInputs.of(t), 900.0, 4.0, 4096.0) == task_priority(t, 900.0, 4.0, 4096.0)
    # a stored task whose resources are unknown: the Task model's defaults
    assert PriorityInputs(1_000.0) == PriorityInputs.of(Task(id="b", type="order_processing", deadline_s=1_000.0))
