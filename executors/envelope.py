"""What a queue entry carries, and what the cluster makes of a claimed one. Pure.

A queue entry is a doorbell, not the task: it names the task (its id is the entry's own field) and
carries one control field, the number of the attempt it was enqueued for (:func:`entry`). Everything
else the executor needs (the task's type, payload, deadline) and every fact that decides whether it
runs (its status, its attempt counter) is read from the store's record of the accepted task at claim
time (:class:`executors.store.ClaimView`). So a submitter's payload can never reach a control field:
a payload key ``type``, ``attempt`` or ``noop`` is just data handed to the task.

:func:`check_delivery` decides, for one claimed entry and the stored record:

- :class:`Run`: run it as attempt ``max(entry attempt + redeliveries, stored counter)``, so a
  redelivered entry (its executor or driver died) is a new attempt, and an entry older than a
  retry the store has scheduled never reuses an attempt number;
- :class:`Drop`: acknowledge it without running (the task is finished, is waiting for its
  dependencies, or has a retry scheduled that will enqueue it again): a duplicate entry left by a
  crash, never a task lost;
- :class:`Reject`: the entry cannot be run (not decodable, no such task in the store, an attempt that
  is not a whole number, a type the deployment does not register): it goes to the dead letters with
  the reason, and the task (if the store has it, unfinished) fails with that reason. One bad entry
  costs one task, never the driver.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from executors.queue_types import Delivery
from executors.store import TERMINAL, ClaimView

MAX_ATTEMPT = 10_000  # far above any retry policy (max_retries is bounded by the config)


def entry(attempt: int) -> dict[str, int]:
    """The queue entry of a task's ``attempt``: its only content."""
    return {"attempt": int(attempt)}


@dataclass(frozen=True)
class Run:
    attempt: int


@dataclass(frozen=True)
class Drop:
    reason: str


@dataclass(frozen=True)
class Reject:
    reason: str
    fail_task: bool  # the store has the task, unfinished: it fails with the reason


Verdict = Run | Drop | Reject


def check_delivery(d: Delivery, view: ClaimView | None, registered_types: Container[str]) -> Verdict:
    """What to do with one claimed entry, given the store's record of its task (None: not found)."""
    unfinished = view is not None and view.status not in TERMINAL
    if d.error is not None:
        return Reject(d.error, unfinished)
    if view is None:
        return Reject(f"no task {d.task_id!r} in the store (an entry nobody submitted through the intake)", False)
    attempt = d.payload.get("attempt", 0)
    if type(attempt) is not int or not 0 <= attempt <= MAX_ATTEMPT:
        return Reject(f"the entry's attempt {attempt!r} is not a whole number in 0..{MAX_ATTEMPT}", unfinished)
    if view.status in TERMINAL:
        return Drop(f"already {view.status}")
    if view.status == "waiting":
        return Drop("waits for its dependencies; it is enqueued when they have succeeded")
    if view.status == "retrying":
        return Drop("a retry is scheduled; it is enqueued when due")
    if view.type not in registered_types:
        return Reject(f"task type {view.type!r} is not registered in this deployment", True)
    return Run(max(attempt + max(0, d.deliveries - 1), view.attempt))
