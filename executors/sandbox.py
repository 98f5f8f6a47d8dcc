"""Untrusted task types run in a child process under resource limits, so a runaway task dies alone.

The parent (an executor actor) starts ``python -m executors.sandbox`` with the task's JSON on stdin;
the child sets ``RLIMIT_AS`` (memory) and ``RLIMIT_CPU`` (CPU seconds) before running the task
function, and reports a JSON result on stdout. A task over its memory limit dies with MemoryError, one
over its CPU limit is killed by SIGXCPU/SIGKILL; either way the executor reads a clear error and lives
on. (The reference system's "half a CPU" is a rate, which needs cgroups; here CPU is bounded in
seconds per task.)

Task functions are registered here by name; a payload ``{"op": NAME, ...}`` selects one.
"""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


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
    ok: bool
    result: dict[str, Any] | None
    error: str | None


async def run_sandboxed(payload: dict[str, Any], memory_limit_mb: int, cpu_limit_s: float,
                        wall_timeout_s: float = 60.0) -> SandboxResult:
    """Run one task in a limited child process; never raises for the task's own failures."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "executors.sandbox", str(memory_limit_mb), str(cpu_limit_s),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(payload).encode()), wall_timeout_s)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return SandboxResult(False, None, f"exceeded the wall-clock limit of {wall_timeout_s:g} s")
    code = proc.returncode
    if code == 0:
        try:
            return SandboxResult(True, json.loads(out.decode()), None)
        except json.JSONDecodeError:
            return SandboxResult(False, None, "sandboxed task printed no result")
    text = err.decode(errors="replace")
    if "MemoryError" in text:
        return SandboxResult(False, None, f"exceeded the memory limit of {memory_limit_mb} MB")
    if code in (-signal.SIGXCPU, -signal.SIGKILL):
        return SandboxResult(False, None, f"exceeded the CPU limit of {cpu_limit_s:g} s")
    last = text.strip().splitlines()[-1] if text.strip() else f"exit status {code}"
    return SandboxResult(False, None, f"sandboxed task failed: {last}")


def _child(memory_limit_mb: int, cpu_limit_s: float) -> int:
    mem = memory_limit_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    cpu = max(1, int(cpu_limit_s + 0.999))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    payload = json.loads(sys.stdin.read() or "{}")
    op = OPS.get(str(payload.get("op")))
    if op is None:
        print(f"unknown sandboxed operation {payload.get('op')!r} (known: {', '.join(OPS)})", file=sys.stderr)
        return 2
    print(json.dumps(op(payload)))
    return 0


if __name__ == "__main__":
    sys.exit(_child(int(sys.argv[1]), float(sys.argv[2])))
