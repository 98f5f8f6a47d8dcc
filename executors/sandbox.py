"""Untrusted task types run in a child process under resource limits, so a runaway task dies alone.

The parent (an executor actor) starts ``python -m executors.sandbox`` with the task's JSON on stdin;
the child sets ``RLIMIT_AS`` (memory) and ``RLIMIT_CPU`` (CPU seconds) before running the task
function, and reports a JSON result on stdout. A task over its memory limit dies with MemoryError, one
over its CPU limit is killed by SIGXCPU/SIGKILL; either way the executor reads a clear error and lives
on.

On top of that the task's CPU *rate* is limited (the reference system gave each task container half a
CPU): a CPU-bound task at rate 0.5 takes twice its CPU time in wall time, so one untrusted task cannot
take a core away from the executor and its neighbours. Two mechanisms, chosen per run
(``rate_limit_mechanism``; the result's ``rate_limit`` says which one ran):

- ``cgroup``: the kernel's CFS bandwidth control. The parent makes a child group
  (``rl-autotune-sandbox-<parent pid>-<n>``) in the cgroup v1 ``cpu`` hierarchy (``cpu.cfs_quota_us``
  = rate x ``cpu.cfs_period_us`` of 100 ms) or in cgroup v2 (``cpu.max``), moves the child into it
  before sending the task (the child blocks reading stdin until then), and removes the group once the
  child is gone, killing anything the task left running in it. Exact to the kernel's period, and it
  covers processes the task forks. Needs a writable cgroup hierarchy (root, or a delegated subtree);
  the child's interpreter start-up, before it is moved, runs unlimited.
- ``throttle``: for an unprivileged container, what ``cpulimit`` does. The parent reads the child's
  CPU time from ``/proc/<pid>/stat`` every 100 ms and, while it runs ahead of rate x wall time, stops
  the child's process group (SIGSTOP) for as long as it is ahead, then continues it (SIGCONT). Coarse:
  the child can burst up to one sampling period (~100 ms) above its rate, CPU of a forked grandchild
  counts only once reaped, and a stopped task's wall time still runs. The child is always continued
  before it is killed, and whenever the throttle stops for any reason.
- ``auto`` (the default) uses cgroups when the hierarchy is writable and the throttle otherwise
  (logged once per process, with the reason); ``none`` sets no rate limit.

The default rate, 0.5 CPU, is ``TaskTypeConfig.cpu_rate_limit``'s default (a test keeps the two
equal; the child must not import the configuration, whose import would count against its CPU).

Task functions are registered here by name; a payload ``{"op": NAME, ...}`` selects one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

RateLimitMechanism = Literal["auto", "cgroup", "throttle", "none"]
MECHANISMS: tuple[str, ...] = ("auto", "cgroup", "throttle", "none")
DEFAULT_CPU_RATE_LIMIT = 0.5
CFS_PERIOD_US = 100_000
CFS_MIN_QUOTA_US = 1_000  # the kernel refuses a smaller quota
THROTTLE_PERIOD_S = 0.1
CGROUP_PREFIX = "rl-autotune-sandbox-"


def _allocate(payload: dict[str, Any]) -> dict[str, Any]:
    """Hold ``mb`` megabytes (a report generator's working set, say)."""
    block = bytearray(int(payload.get("mb", 1)) * 1024 * 1024)
    return {"bytes": len(block)}


def _spin(payload: dict[str, Any]) -> dict[str, Any]:
    """Burn CPU for ``seconds`` (a data-cleaning pass, say)."""
    end = time.process_time() + float(payload.get("seconds", 0.1))
    n = 0
    while time.process_time() < end:
        n += 1
    return {"iterations": n}


def _echo(payload: dict[str, Any]) -> dict[str, Any]:
    return {"echo": payload}


OPS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"allocate": _allocate, "spin": _spin, "echo": _echo}


@dataclass(frozen=True)
class SandboxResult:
    """What became of one sandboxed task.

    ``rate_limit`` is the mechanism that limited its CPU rate (``cgroup-v1``, ``cgroup-v2``,
    ``throttle`` or ``none``); ``cpu_s`` is the CPU time the child reported (None if it did not finish),
    ``wall_s`` the time from start to exit, ``pid`` the child's process id.
    """

    ok: bool
    result: dict[str, Any] | None
    error: str | None
    rate_limit: str = "none"
    cpu_s: float | None = None
    wall_s: float | None = None
    pid: int | None = None


class CgroupUnavailable(RuntimeError):
    """No writable cgroup with the cpu controller; the message says what was missing."""


# ---------------------------------------------------------------------------------------------------
# Pure logic


def throttle_stop_s(cpu_used_s: float, wall_elapsed_s: float, rate: float) -> float:
    """How long to stop a process that used ``cpu_used_s`` in ``wall_elapsed_s`` to bring it to ``rate``.

    The process is ahead when it used more than ``rate`` x wall time; stopped for ``s`` seconds its use
    stays put while wall time grows, so ``cpu_used = rate x (wall + s)`` gives ``s``.
    """
    if rate <= 0:
        raise ValueError(f"CPU rate limit must be > 0, got {rate}")
    return max(0.0, cpu_used_s / rate - wall_elapsed_s)


def cfs_quota_us(rate: float, period_us: int = CFS_PERIOD_US) -> int:
    """The CFS quota per period for ``rate`` cores (at least the kernel's 1 ms minimum)."""
    if rate <= 0:
        raise ValueError(f"CPU rate limit must be > 0, got {rate}")
    return max(CFS_MIN_QUOTA_US, round(rate * period_us))


def proc_stat_cpu_s(stat_text: str, ticks_per_s: int) -> float:
    """CPU seconds (user + system, of the process and its reaped children) from ``/proc/<pid>/stat``.

    The command name (field 2) may hold spaces and parentheses, so fields are counted after the last
    ``)``: utime, stime, cutime, cstime are fields 14-17.
    """
    fields = stat_text[stat_text.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime + cutime + cstime) / ticks_per_s


@dataclass(frozen=True)
class CgroupCandidate:
    """A place to make CPU-limited child groups: a cgroup ``version`` (1 or 2) and the parent group."""

    version: int
    mountpoint: Path
    own_path: str  # this process's group relative to the mountpoint ("/" at the top)


def cpu_cgroup_candidates(mounts_text: str, self_cgroup_text: str) -> list[CgroupCandidate]:
    """Where a cpu-limited group could go, from ``/proc/self/mounts`` and ``/proc/self/cgroup``.

    A v1 hierarchy with the ``cpu`` controller comes first (it needs no delegation); then every cgroup2
    mount, whose ``cgroup.controllers`` the caller must check for ``cpu``.
    """
    v1_path = v2_path = "/"
    for line in self_cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            v2_path = path
        elif "cpu" in controllers.split(","):
            v1_path = path
    v1: list[CgroupCandidate] = []
    v2: list[CgroupCandidate] = []
    for line in mounts_text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        mountpoint, fstype, options = Path(parts[1]), parts[2], parts[3].split(",")
        if fstype == "cgroup" and "cpu" in options:
            v1.append(CgroupCandidate(1, mountpoint, v1_path))
        elif fstype == "cgroup2":
            v2.append(CgroupCandidate(2, mountpoint, v2_path))
    return v1 + v2


# ---------------------------------------------------------------------------------------------------
# Thin adapters: cgroups, /proc, signals


def _group_parent(candidate: CgroupCandidate) -> Path:
    """The process's own group if it is visible in the mount, else the mount's top."""
    own = candidate.mountpoint / candidate.own_path.lstrip("/")
    return own if own.is_dir() else candidate.mountpoint


def _check_v2(parent: Path) -> None:
    controllers = (parent / "cgroup.controllers").read_text().split()
    if "cpu" not in controllers:
        raise CgroupUnavailable(f"{parent}/cgroup.controllers lacks cpu ({' '.join(controllers) or 'empty'})")
    if "cpu" not in (parent / "cgroup.subtree_control").read_text().split():
        try:
            (parent / "cgroup.subtree_control").write_text("+cpu")
        except OSError as err:
            raise CgroupUnavailable(f"cannot enable cpu in {parent}/cgroup.subtree_control: {err.strerror}") from err


_group_numbers = itertools.count()


class CpuCgroup:
    """One child group with a CPU bandwidth limit; made, filled with one pid, removed."""

    def __init__(self, path: Path, version: int) -> None:
        self.path = path
        self.version = version

    @classmethod
    def create(cls, rate: float) -> CpuCgroup:
        """Make a group limited to ``rate`` cores, or raise :class:`CgroupUnavailable` saying why."""
        try:
            mounts = Path("/proc/self/mounts").read_text()
            own = Path("/proc/self/cgroup").read_text()
        except OSError as err:
            raise CgroupUnavailable(f"cannot read /proc/self: {err.strerror}") from err
        candidates = cpu_cgroup_candidates(mounts, own)
        if not candidates:
            raise CgroupUnavailable("no cgroup v1 cpu hierarchy or cgroup2 mount in /proc/self/mounts")
        reasons = []
        for cand in candidates:
            parent = _group_parent(cand)
            path = parent / f"{CGROUP_PREFIX}{os.getpid()}-{next(_group_numbers)}"
            try:
                if cand.version == 2:
                    _check_v2(parent)
                path.mkdir()
            except CgroupUnavailable as err:
                reasons.append(str(err))
                continue
            except OSError as err:
                reasons.append(f"cannot create a group in {parent}: {err.strerror or err}")
                continue
            group = cls(path, cand.version)
            try:
                quota = cfs_quota_us(rate)
                if cand.version == 1:
                    (path / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
                    (path / "cpu.cfs_quota_us").write_text(str(quota))
                else:
                    (path / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}")
            except OSError as err:
                with contextlib.suppress(OSError):
                    path.rmdir()
                reasons.append(f"cannot set the CPU quota in {path}: {err.strerror}")
                continue
            return group
        raise CgroupUnavailable("; ".join(reasons))

    @property
    def label(self) -> str:
        return f"cgroup-v{self.version}"

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    async def remove(self) -> None:
        """Remove the group, first killing whatever the task left running in it."""
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as err:
                if err.errno != errno.EBUSY:
                    log.warning("cannot remove cgroup %s: %s", self.path, err.strerror)
                    return
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.01)
        log.warning("cgroup %s still busy after 1 s; left in place", self.path)


def cgroup_unavailable_reason() -> str | None:
    """None when CPU-limited cgroups can be made here; otherwise why not (probes with a real group)."""
    try:
        group = CpuCgroup.create(DEFAULT_CPU_RATE_LIMIT)
    except CgroupUnavailable as err:
        return str(err)
    group.path.rmdir()
    return None


def cgroup_available() -> bool:
    return cgroup_unavailable_reason() is None


def _read_cpu_s(pid: int) -> float:
    return proc_stat_cpu_s(Path(f"/proc/{pid}/stat").read_text(), os.sysconf("SC_CLK_TCK"))


def _signal_group(pid: int, sig: int) -> None:
    """Signal the child's process group (the child leads its own session), if it still exists."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _throttle(pid: int, rate: float, started: float, period_s: float = THROTTLE_PERIOD_S) -> None:
    """Keep the child at ``rate`` cores by stopping it while it runs ahead; runs until cancelled.

    SIGCONT is in a ``finally``: cancelling this task (the child finished, timed out, or the caller was
    cancelled) always leaves the child running.
    """
    while True:
        await asyncio.sleep(period_s)
        try:
            cpu_s = _read_cpu_s(pid)
        except (OSError, ValueError):
            return  # gone
        stop_s = throttle_stop_s(cpu_s, time.monotonic() - started, rate)
        if stop_s > 0:
            _signal_group(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(stop_s)
            finally:
                _signal_group(pid, signal.SIGCONT)


_fallback_logged = False


def _log_fallback(reason: str) -> None:
    global _fallback_logged
    if not _fallback_logged:
        _fallback_logged = True
        log.warning("sandbox CPU rate limit: cgroups unavailable (%s); throttling with SIGSTOP/SIGCONT", reason)


# ---------------------------------------------------------------------------------------------------
# Parent side


async def run_sandboxed(
    payload: dict[str, Any],
    memory_limit_mb: int,
    cpu_limit_s: float,
    wall_timeout_s: float = 60.0,
    cpu_rate_limit: float | None = DEFAULT_CPU_RATE_LIMIT,
    rate_limit_mechanism: RateLimitMechanism = "auto",
) -> SandboxResult:
    """Run one task in a limited child process; never raises for the task's own failures.

    ``cpu_rate_limit`` is in cores (None: no rate limit). ``rate_limit_mechanism="cgroup"`` raises
    :class:`CgroupUnavailable` when cgroups cannot be used; ``"auto"`` falls back to the throttle.
    """
    if rate_limit_mechanism not in MECHANISMS:
        raise ValueError(f"rate_limit_mechanism must be one of {', '.join(MECHANISMS)}, got {rate_limit_mechanism!r}")
    if cpu_rate_limit is not None and not cpu_rate_limit > 0:
        raise ValueError(f"cpu_rate_limit must be > 0 cores (or None), got {cpu_rate_limit}")
    mechanism: str = "none" if cpu_rate_limit is None else rate_limit_mechanism
    group: CpuCgroup | None = None
    if mechanism in ("auto", "cgroup"):
        assert cpu_rate_limit is not None
        try:
            group = CpuCgroup.create(cpu_rate_limit)
        except CgroupUnavailable as err:
            if mechanism == "cgroup":
                raise
            _log_fallback(str(err))
            mechanism = "throttle"

    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "executors.sandbox",
        str(memory_limit_mb),
        str(cpu_limit_s),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    throttle: asyncio.Task[None] | None = None
    try:
        if group is not None:
            try:
                group.add(proc.pid)  # before the task is sent: the child waits on stdin until then
                mechanism = group.label
            except OSError as err:
                if mechanism == "cgroup":
                    raise CgroupUnavailable(f"cannot move pid {proc.pid} into {group.path}: {err.strerror}") from err
                _log_fallback(f"cannot move a pid into {group.path}: {err.strerror}")
                mechanism = "throttle"
        if mechanism == "throttle":
            assert cpu_rate_limit is not None
            throttle = asyncio.create_task(_throttle(proc.pid, cpu_rate_limit, started))
        try:
            out, err_bytes = await asyncio.wait_for(proc.communicate(json.dumps(payload).encode()), wall_timeout_s)
        except TimeoutError:
            return SandboxResult(
                False,
                None,
                f"exceeded the wall-clock limit of {wall_timeout_s:g} s",
                mechanism,
                None,
                time.monotonic() - started,
                proc.pid,
            )
    finally:
        if throttle is not None:
            throttle.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await throttle  # its finally continues the child
        if proc.returncode is None:
            _signal_group(proc.pid, signal.SIGCONT)
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
        if group is not None:
            await group.remove()
    return _interpret(
        proc.returncode, out, err_bytes, memory_limit_mb, cpu_limit_s, mechanism, time.monotonic() - started, proc.pid
    )


def _interpret(
    code: int | None,
    out: bytes,
    err: bytes,
    memory_limit_mb: int,
    cpu_limit_s: float,
    mechanism: str,
    wall_s: float,
    pid: int,
) -> SandboxResult:
    """The child's exit status and output as a result with a clear error."""
    if code == 0:
        try:
            report = json.loads(out.decode().strip().splitlines()[-1])
            return SandboxResult(True, report["result"], None, mechanism, report["cpu_s"], wall_s, pid)
        except (json.JSONDecodeError, IndexError, KeyError, TypeError):
            return SandboxResult(False, None, "sandboxed task printed no result", mechanism, None, wall_s, pid)
    text = err.decode(errors="replace")
    if "MemoryError" in text:
        error = f"exceeded the memory limit of {memory_limit_mb} MB"
    elif code in (-signal.SIGXCPU, -signal.SIGKILL):
        error = f"exceeded the CPU limit of {cpu_limit_s:g} s"
    else:
        last = text.strip().splitlines()[-1] if text.strip() else f"exit status {code}"
        error = f"sandboxed task failed: {last}"
    return SandboxResult(False, None, error, mechanism, None, wall_s, pid)


# ---------------------------------------------------------------------------------------------------
# Child side


def _child(memory_limit_mb: int, cpu_limit_s: float) -> int:
    mem = memory_limit_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    cpu = max(1, int(cpu_limit_s + 0.999))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    payload = json.loads(sys.stdin.read() or "{}")  # blocks until the parent has set the rate limit
    op = OPS.get(str(payload.get("op")))
    if op is None:
        print(f"unknown sandboxed operation {payload.get('op')!r} (known: {', '.join(OPS)})", file=sys.stderr)
        return 2
    result = op(payload)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"result": result, "cpu_s": usage.ru_utime + usage.ru_stime}))
    return 0


if __name__ == "__main__":
    sys.exit(_child(int(sys.argv[1]), float(sys.argv[2])))
