"""What a live run records in its folder so that a new driver can continue it (``autotune run --resume``).

``run_state.json`` is written when the run starts and again every control interval: the run's id
(every task it submits carries it, so its report counts its own tasks), the replay's id prefix, the
options it ran with, its endpoints as displayed (passwords masked: a resumed run is given the same
endpoints again, and they are checked against these), the driver's PID with its start time, host and
boot, and the decisions so far. The intervals themselves are appended to ``intervals.csv`` as they
happen. A run that finished says so, and is not resumed.

The driver check is what makes taking over safe: a run whose driver is still alive (same PID, same
start time, same host and boot) is refused, since two drivers would run the same tasks at once.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import socket
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.domain import ClusterSnapshot

STATE_FILE = "run_state.json"
INTERVALS_FILE = "intervals.csv"


class ResumeError(ValueError):
    """A run folder that cannot be resumed; the message says why and names the folder."""


@dataclass
class RunState:
    run_id: str
    cluster_name: str
    id_prefix: str
    tenant: str
    started_s: float
    options: dict[str, Any]
    endpoints: dict[str, str]
    driver_pid: int
    driver_start_ticks: int
    host: str
    boot_id: str
    status: str = "running"  # running | finished | ended (by an outage longer than the budget)
    decisions: int = 0
    fallback_decisions: int = 0
    resumed: int = 0  # how many times a new driver took over
    ended_by: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def this_driver() -> tuple[int, int, str, str]:
    """(pid, start time in clock ticks, host, boot id) of this process."""
    from autotune.local_ray import ProcFS

    proc = ProcFS()
    stat = proc.stat(os.getpid())
    return os.getpid(), stat.start_ticks if stat is not None else 0, socket.gethostname(), proc.boot_id()


def driver_alive(state: RunState) -> bool:
    """Whether the driver that wrote ``state`` still runs (a reused PID or another boot is not it).
    On another host it cannot be checked here: assumed alive."""
    from autotune.local_ray import ProcFS, same_process

    proc = ProcFS()
    if state.host != socket.gethostname():
        return True
    if state.boot_id and proc.boot_id() and state.boot_id != proc.boot_id():
        return False
    return same_process(proc.stat(state.driver_pid), state.driver_start_ticks)


def write_state(run_dir: Path, state: RunState) -> None:
    """Write the state atomically (a crash mid-write leaves the previous one)."""
    path = Path(run_dir) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_state(run_dir: Path) -> RunState:
    path = Path(run_dir) / STATE_FILE
    if not Path(run_dir).is_dir():
        raise ResumeError(f"--resume {run_dir}: no such run folder")
    if not path.is_file():
        raise ResumeError(
            f"--resume {run_dir}: no {STATE_FILE} in it (not a live run's folder, or one made "
            "before runs could be resumed)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return RunState(**data)
    except (OSError, ValueError, TypeError) as err:
        raise ResumeError(f"{path}: unreadable run state ({err})") from None


def check_resumable(run_dir: Path, state: RunState, endpoints: dict[str, str]) -> None:
    """Raise :class:`ResumeError` unless a new driver may take ``state``'s run over."""
    if state.status != "running":
        raise ResumeError(
            f"--resume {run_dir}: the run {state.status}"
            + (f" ({state.ended_by})" if state.ended_by else "")
            + "; nothing to resume"
        )
    if driver_alive(state):
        where = f" on {state.host}" if state.host != socket.gethostname() else ""
        raise ResumeError(
            f"--resume {run_dir}: its driver (pid {state.driver_pid}{where}) is still running; "
            "stop it first (two drivers would run the same tasks)"
        )
    if endpoints != state.endpoints:
        diff = ", ".join(
            f"{k}: {state.endpoints.get(k)!r} then, {endpoints.get(k)!r} now"
            for k in sorted(set(endpoints) | set(state.endpoints))
            if endpoints.get(k) != state.endpoints.get(k) and k in ("database", "queue")
        )
        if diff:
            raise ResumeError(f"--resume {run_dir}: give the same database and queue as the run had ({diff})")


# -- intervals.csv --------------------------------------------------------------------------------
_EXTRA_COLUMNS = ("success_rate", "backlog", "sli_all_ok")


def intervals_header() -> list[str]:
    return [*ClusterSnapshot._fields, *_EXTRA_COLUMNS]


def interval_row(snap: ClusterSnapshot, all_ok: bool) -> list[Any]:
    return [*snap, snap.success_rate, snap.backlog, all_ok]


def append_interval(run_dir: Path, snap: ClusterSnapshot, all_ok: bool) -> None:
    path = Path(run_dir) / INTERVALS_FILE
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(intervals_header())
        w.writerow(interval_row(snap, all_ok))


def read_intervals(run_dir: Path) -> list[ClusterSnapshot]:
    """The snapshots an earlier driver appended (a torn last line, from a crash mid-write, is left out)."""
    path = Path(run_dir) / INTERVALS_FILE
    if not path.exists():
        return []
    hints = typing.get_type_hints(ClusterSnapshot)
    out = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                values: list[Any] = []
                for name in ClusterSnapshot._fields:
                    kind = hints[name]
                    text = row[name]
                    if kind is int:
                        values.append(int(float(text)))
                    elif kind is float:
                        values.append(float(text))
                    else:  # the per-priority tuple
                        values.append(tuple(int(x) for x in ast.literal_eval(text)))
                out.append(ClusterSnapshot(*values))
            except (KeyError, TypeError, ValueError, SyntaxError):
                continue
    return out
