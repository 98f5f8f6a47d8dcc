"""Did a run lose, duplicate or re-run anything? The audit of a faulty run, from the store and the
executors' execution log (``ExecutorPool(execution_log=...)``).

Used by the fault tests and ``benchmarks/chaos.py``; pure but for reading the two sources.

- ``lost``: submitted tasks that are not terminal in the store at the end (or not there at all);
- ``duplicated_terminal``: tasks with more than one terminal record: two attempt rows that ended
  the task (succeeded, or failed for good);
- ``reran``: tasks with an execution whose outcome was not kept (its attempt row is missing, the
  driver died with it, or says ``lost``, its executor died): the at-least-once re-runs;
- ``unexplained_reruns``: of those executions, the ones no fault explains: a task ran again though
  no crash interrupted it. Must be 0. An execution is explained when it started before the latest
  fault, or ran on an executor the fault orphaned (working before it, nothing it ran after it kept:
  a dead driver's actors finish the batches they were handed for a moment after the driver is gone).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from executors.store import TERMINAL, TaskStore


@dataclass(frozen=True)
class Execution:
    tenant: str
    task_id: str
    attempt: int
    type: str
    executor: str
    started_s: float
    ended_s: float | None
    outcome: str | None


@dataclass(frozen=True)
class Accounting:
    submitted: int
    terminal: int
    lost: int
    duplicated_terminal: int
    reran: int
    unexplained_reruns: int
    executions: int

    def as_row(self) -> dict[str, int]:
        return {
            "submitted": self.submitted,
            "terminal": self.terminal,
            "lost": self.lost,
            "duplicated_terminal": self.duplicated_terminal,
            "reran": self.reran,
        }


def read_execution_log(path: str | Path) -> list[Execution]:
    """Executions from the log, start lines matched with their end lines (a crash leaves starts
    without an end); a torn last line is left out."""
    starts: dict[tuple[str, str, int], list[list]] = defaultdict(list)
    p = Path(path)
    if not p.exists():
        return []
    for line in p.read_text().splitlines():
        parts = line.split()
        try:
            if parts[0] == "start" and len(parts) == 7:
                starts[(parts[2], parts[3], int(parts[4]))].append([parts[5], parts[6], float(parts[1]), None, None])
            elif parts[0] == "end" and len(parts) == 6:
                open_ = [e for e in starts[(parts[2], parts[3], int(parts[4]))] if e[3] is None]
                if open_:
                    open_[0][3], open_[0][4] = float(parts[1]), parts[5]
        except (IndexError, ValueError):
            continue
    return [Execution(t, k, a, *e) for (t, k, a), es in starts.items() for e in es]


def account(
    store: TaskStore,
    tenant: str,
    task_ids: Iterable[str],
    executions: Sequence[Execution],
    fault_times_s: Sequence[float] = (),
) -> Accounting:
    """The audit of ``task_ids`` of ``tenant`` (see the module docstring). ``fault_times_s``: when
    the faults that may interrupt an attempt happened (a killed driver or executor)."""
    ids = list(dict.fromkeys(task_ids))
    wanted = set(ids)
    statuses = store.statuses(tenant, ids)
    terminal = sum(1 for t in ids if statuses.get(t) in TERMINAL)
    rows = [a for a in store.all_attempts(tenant) if a.task_id in wanted]
    kept = {(a.task_id, a.attempt) for a in rows if a.outcome != "lost"}
    ends: defaultdict[str, int] = defaultdict(int)
    for a in rows:
        if a.outcome in TERMINAL:
            ends[a.task_id] += 1
    latest_fault = max(fault_times_s, default=float("-inf"))
    # executors orphaned by the fault: working when it struck, and nothing they ran after it was kept
    # (a dead driver's actors finish the batches they hold for a moment; nobody records them)
    kept_all = {(a.tenant, a.task_id, a.attempt) for a in store.all_attempts(tenant) if a.outcome != "lost"}
    before = {e.executor for e in executions if e.started_s <= latest_fault}
    before -= {
        e.executor for e in executions if e.started_s > latest_fault and (e.tenant, e.task_id, e.attempt) in kept_all
    }

    def explained(e: Execution) -> bool:
        return e.started_s <= latest_fault or e.executor in before

    reran, unexplained = set(), 0
    mine = [e for e in executions if e.tenant == tenant and e.task_id in wanted]
    for e in mine:
        if (e.task_id, e.attempt) not in kept:
            reran.add(e.task_id)
            if not explained(e):
                unexplained += 1
    # an execution kept twice under one attempt number (a duplicate the store's key hid)
    by_attempt: dict[tuple[str, int], list[Execution]] = defaultdict(list)
    for e in mine:
        by_attempt[(e.task_id, e.attempt)].append(e)
    for (task_id, _), es in by_attempt.items():
        if len(es) > 1:
            reran.add(task_id)
            unexplained += sum(1 for e in sorted(es, key=lambda e: e.started_s)[1:] if not explained(e))
    return Accounting(
        len(ids),
        terminal,
        len(ids) - terminal,
        sum(1 for n in ends.values() if n > 1),
        len(reran),
        unexplained,
        len(mine),
    )
