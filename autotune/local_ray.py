"""A local Ray that a run started does not outlive a crashed driver's next start.

When ``autotune run`` starts a local Ray (no ``--ray-address``) and its driver is killed (SIGKILL, OOM
killer, a lost terminal), most of Ray's processes die with it, but some do not: on Ray 2.60 the
raylet's ``DashboardAgent`` and ``RuntimeEnvAgent`` stay alive, re-parented to init, forever. So:

- after starting a local Ray, :func:`record_started` writes what was started to a state file, one
  per driver: the driver's PID and start time, Ray's session dir, and the PID and start time of
  every process Ray started for the session (the node's own processes and their descendants);
- before starting one, :func:`clean_stale` reads every state file; for each whose driver is gone (PID
  not running, or running with another start time: a reused PID), the recorded processes that are
  still the same processes (PID *and* start time match) get SIGTERM, then SIGKILL after a grace
  period, and the file is deleted;
- :func:`stop_local_ray` (from ``LiveRun.close`` and at interpreter exit) shuts Ray down, ends any
  recorded process left, and deletes the file.

A process is only ever signalled if it is in a record and its start time (``/proc/<pid>/stat``
field 22, clock ticks since boot) is the recorded one; records from another boot are deleted
without signalling anything, records from another host (a shared home directory) are left alone.

State directory: ``$AUTOTUNE_STATE_DIR/local-ray/``, default
``${XDG_STATE_HOME:-~/.local/state}/rl-autotune/local-ray/``; files are named ``<driver pid>.json``.
Linux only (``/proc``): elsewhere the records list no processes and nothing is ever signalled.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE_DIR_ENV = "AUTOTUNE_STATE_DIR"
FORMAT_VERSION = 1
GRACE_S = 3.0  # SIGTERM to SIGKILL; the agents catch SIGTERM and often do not exit on it


# -- pure parts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` used here."""

    pid: int
    comm: str  # the command name, at most 15 characters
    ppid: int
    state: str  # R, S, D, Z (zombie), X (dead), ...
    start_ticks: int  # field 22: start time after boot, clock ticks

    @property
    def running(self) -> bool:
        return self.state not in ("Z", "X", "x")


def parse_stat(text: str) -> ProcStat:
    """Parse one ``/proc/<pid>/stat`` line. The command name (field 2) is in parentheses and may hold
    spaces and parentheses itself, so the fields after it are counted from the last ``)``."""
    head, sep, tail = text.rpartition(")")
    pid_text, _, comm = head.partition(" (")
    fields = tail.split()
    if not sep or len(fields) < 20 or not pid_text.isdigit():
        raise ValueError(f"not a /proc/<pid>/stat line: {text[:80]!r}")
    # tail starts at field 3 (state); field n is fields[n - 3]
    return ProcStat(int(pid_text), comm, int(fields[1]), fields[0], int(fields[19]))


def same_process(stat: ProcStat | None, start_ticks: int) -> bool:
    """True if ``stat`` is a running process that started at ``start_ticks`` (not a reused PID)."""
    return stat is not None and stat.running and stat.start_ticks == start_ticks


def descendants(roots: Iterable[int], stats: Mapping[int, ProcStat]) -> set[int]:
    """The PIDs of every process below ``roots`` (children, their children, ...), roots excluded."""
    children: dict[int, list[int]] = {}
    for st in stats.values():
        children.setdefault(st.ppid, []).append(st.pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def naming(session_dir: str, cmdlines: Mapping[int, str]) -> set[int]:
    """The PIDs whose command line names ``session_dir``: the fallback when Ray's node object does not
    list its processes."""
    return {pid for pid, cmd in cmdlines.items() if session_dir and session_dir in cmd}


@dataclass(frozen=True)
class RecordedProcess:
    pid: int
    start_ticks: int
    name: str = ""


@dataclass(frozen=True)
class LocalRayRecord:
    """What one driver started: written after ``ray.init``, deleted at a normal shutdown."""

    driver_pid: int
    driver_start_ticks: int
    boot_id: str
    hostname: str
    session_dir: str
    processes: tuple[RecordedProcess, ...]

    def to_json(self) -> str:
        return json.dumps({"version": FORMAT_VERSION, **asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> LocalRayRecord:
        """Parse a state file; ValueError (naming what is wrong) for anything else."""
        try:
            data = json.loads(text)
            if data.get("version") != FORMAT_VERSION:
                raise ValueError(f"format version {data.get('version')!r}, expected {FORMAT_VERSION}")
            procs = tuple(
                RecordedProcess(int(p["pid"]), int(p["start_ticks"]), str(p.get("name", ""))) for p in data["processes"]
            )
            return cls(
                int(data["driver_pid"]),
                int(data["driver_start_ticks"]),
                str(data["boot_id"]),
                str(data["hostname"]),
                str(data["session_dir"]),
                procs,
            )
        except (AttributeError, KeyError, TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"not a local Ray record: {err.__class__.__name__}: {err}") from None


@dataclass(frozen=True)
class Cleanup:
    """A stale record: its driver is gone; ``alive`` are its processes still running as recorded."""

    record: LocalRayRecord
    alive: tuple[RecordedProcess, ...]


def plan_cleanup(record: LocalRayRecord, stats: Mapping[int, ProcStat], boot_id: str, hostname: str) -> Cleanup | None:
    """What to do with one record: None to leave it (its driver is alive, or it is another host's),
    else the processes to end before deleting it (none if it is from an earlier boot)."""
    if record.hostname != hostname:
        return None  # a shared state dir: that host's PIDs mean nothing here
    if record.boot_id != boot_id:
        return Cleanup(record, ())  # everything it names died at the reboot
    if same_process(stats.get(record.driver_pid), record.driver_start_ticks):
        return None
    return Cleanup(record, tuple(p for p in record.processes if same_process(stats.get(p.pid), p.start_ticks)))


# -- the adapter: /proc, signals, files ---------------------------------------------------------


@dataclass(frozen=True)
class ProcFS:
    """Reads ``/proc`` (or a directory laid out like it, for tests)."""

    root: Path = Path("/proc")

    def stat(self, pid: int) -> ProcStat | None:
        try:
            return parse_stat((self.root / str(pid) / "stat").read_text())
        except (OSError, ValueError):
            return None  # gone (or going) while we looked

    def stats(self) -> dict[int, ProcStat]:
        out = {}
        for entry in self.root.iterdir() if self.root.is_dir() else ():
            if entry.name.isdigit() and (st := self.stat(int(entry.name))) is not None:
                out[st.pid] = st
        return out

    def cmdlines(self) -> dict[int, str]:
        out = {}
        for entry in self.root.iterdir() if self.root.is_dir() else ():
            if entry.name.isdigit():
                try:
                    out[int(entry.name)] = (
                        (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    )
                except OSError:
                    pass
        return out

    def boot_id(self) -> str:
        try:
            return (self.root / "sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            return ""


Signaller = Callable[[RecordedProcess, int], bool]


def signal_if_same(proc: ProcFS) -> Signaller:
    """Send a signal to a recorded process only if it is still that process. The check and the signal
    go through one pidfd, so a PID reused between them cannot be hit."""

    def send(p: RecordedProcess, sig: int) -> bool:
        try:
            fd = os.pidfd_open(p.pid)
        except ProcessLookupError:
            return False
        except OSError:  # no pidfd (old kernel): a check, then kill
            fd = None
        try:
            if not same_process(proc.stat(p.pid), p.start_ticks):
                return False
            if fd is None:
                os.kill(p.pid, sig)
            else:
                signal.pidfd_send_signal(fd, sig)
            return True
        except ProcessLookupError:
            return False
        except PermissionError as err:
            log.warning("cannot signal recorded Ray process %d (%s): %s", p.pid, p.name, err)
            return False
        finally:
            if fd is not None:
                os.close(fd)

    return send


def end_processes(
    procs: Iterable[RecordedProcess],
    proc: ProcFS,
    send: Signaller,
    *,
    grace_s: float = GRACE_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """SIGTERM each process still as recorded, SIGKILL what is left after ``grace_s``; returns how many
    were signalled. A zombie counts as ended (its parent, or init, reaps it)."""
    hit = [p for p in procs if send(p, signal.SIGTERM)]
    for p in wait_gone(hit, proc, grace_s, sleep=sleep, clock=clock):
        send(p, signal.SIGKILL)  # checks again that it is still the recorded process
    return len(hit)


def wait_gone(
    procs: Iterable[RecordedProcess],
    proc: ProcFS,
    timeout_s: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[RecordedProcess]:
    """Wait up to ``timeout_s`` for the processes to end; returns those still running as recorded."""
    deadline = clock() + timeout_s
    left = [p for p in procs if same_process(proc.stat(p.pid), p.start_ticks)]
    while left and clock() < deadline:
        sleep(0.1)
        left = [p for p in left if same_process(proc.stat(p.pid), p.start_ticks)]
    return left


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the records are: ``$AUTOTUNE_STATE_DIR/local-ray``, else under XDG_STATE_HOME."""
    env = os.environ if environ is None else environ
    base = env.get(STATE_DIR_ENV) or str(Path(env.get("XDG_STATE_HOME") or "~/.local/state") / "rl-autotune")
    return Path(base).expanduser() / "local-ray"


def record_path(directory: Path, driver_pid: int) -> Path:
    return directory / f"{driver_pid}.json"


def clean_stale(
    directory: Path | None = None,
    proc: ProcFS | None = None,
    send: Signaller | None = None,
    *,
    grace_s: float = GRACE_S,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Cleanup]:
    """End the recorded Ray processes of every driver that is gone and delete its record; returns what
    was cleaned. One warning per record whose processes were still running."""
    directory = state_dir() if directory is None else directory
    proc = proc or ProcFS()
    send = send or signal_if_same(proc)
    try:
        files = sorted(directory.glob("*.json"))
    except OSError as err:
        log.warning("cannot read local Ray records in %s: %s", directory, err)
        return []
    if not files:
        return []
    stats, boot_id, host = proc.stats(), proc.boot_id(), socket.gethostname()
    cleaned = []
    for path in files:
        try:
            record = LocalRayRecord.from_json(path.read_text())
        except FileNotFoundError:
            continue  # another driver cleaned it meanwhile
        except (OSError, ValueError) as err:
            log.warning("removing unreadable local Ray record %s: %s", path, err)
            path.unlink(missing_ok=True)
            continue
        plan = plan_cleanup(record, stats, boot_id, host)
        if plan is None:
            continue
        ended = end_processes(plan.alive, proc, send, grace_s=grace_s, sleep=sleep) if plan.alive else 0
        path.unlink(missing_ok=True)
        if ended:
            log.warning(
                "ended %d process(es) of the local Ray left by driver PID %d, which is gone (session %s)",
                ended,
                record.driver_pid,
                record.session_dir,
            )
        cleaned.append(plan)
    return cleaned


def describe_node(node: Any, proc: ProcFS, driver_pid: int) -> LocalRayRecord:
    """The record of the local Ray ``node`` (``ray._private.worker._global_node``) started by this driver:
    the processes Ray lists for it and everything below them (the agents and workers the raylet
    spawns); if Ray lists none, the processes whose command line names the session dir."""
    session_dir = str(node.get_session_dir_path()) if node is not None else ""
    roots = {
        info.process.pid
        for infos in getattr(node, "all_processes", {}).values()
        for info in infos
        if getattr(info, "process", None) is not None
    }
    stats = proc.stats()
    pids = roots | descendants(roots, stats) if roots else naming(session_dir, proc.cmdlines())
    pids.discard(driver_pid)
    procs = tuple(
        RecordedProcess(pid, stats[pid].start_ticks, stats[pid].comm)
        for pid in sorted(pids)
        if pid in stats and stats[pid].running
    )
    driver = stats.get(driver_pid) or proc.stat(driver_pid)
    return LocalRayRecord(
        driver_pid, driver.start_ticks if driver else -1, proc.boot_id(), socket.gethostname(), session_dir, procs
    )


_current: Path | None = None  # this driver's record, while its local Ray runs


def record_started(directory: Path | None = None, proc: ProcFS | None = None) -> Path | None:
    """Write the record of the local Ray just started in this process (after ``ray.init``); returns its
    path, or None if it could not be written (a warning says why: a crash would then leave orphans)."""
    global _current
    import ray

    proc = proc or ProcFS()
    directory = state_dir() if directory is None else directory
    record = describe_node(getattr(ray._private.worker, "_global_node", None), proc, os.getpid())
    path = record_path(directory, record.driver_pid)
    tmp = path.with_suffix(".json.tmp")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp.write_text(record.to_json())
        os.replace(tmp, path)  # never a half-written record
    except OSError as err:
        log.warning(
            "cannot record the local Ray in %s (%s): if this run is killed, its Ray processes "
            "stay behind; set %s to a writable directory",
            directory,
            err,
            STATE_DIR_ENV,
        )
        return None
    if _current is None:  # registered after ray.init's own exit hook, so it runs first
        atexit.register(stop_local_ray)
    _current = path
    return path


def stop_local_ray(proc: ProcFS | None = None) -> None:
    """Shut down the local Ray this driver started and recorded, end any recorded process left, delete
    the record. Does nothing if there is none; safe to call twice."""
    global _current
    import ray

    path, _current = _current, None
    if path is None:
        return
    proc = proc or ProcFS()
    try:
        record = LocalRayRecord.from_json(path.read_text())
    except (OSError, ValueError):
        record = None
    node = getattr(ray._private.worker, "_global_node", None)
    if ray.is_initialized() and (
        record is None or node is None or str(node.get_session_dir_path()) == record.session_dir
    ):
        ray.shutdown()
    if record is not None:
        # the raylet's agents end a moment after the raylet; only what is still there after that is ended
        left = wait_gone(record.processes, proc, GRACE_S)
        if left:
            ended = end_processes(left, proc, signal_if_same(proc))
            log.warning("ended %d local Ray process(es) still running after ray.shutdown()", ended)
    path.unlink(missing_ok=True)
