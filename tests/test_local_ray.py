"""A local Ray that a run started does not outlive a crashed driver's next start (autotune/local_ray.py).

Unit tests on a fake ``/proc`` in a tmp dir; then end to end: ``autotune run`` killed with SIGKILL
leaves Ray processes behind, and the next ``autotune run`` ends them and leaves nothing itself.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from autotune.local_ray import (
    Cleanup,
    LocalRayRecord,
    ProcFS,
    ProcStat,
    RecordedProcess,
    clean_stale,
    descendants,
    describe_node,
    naming,
    parse_stat,
    plan_cleanup,
    same_process,
    signal_if_same,
    state_dir,
)

ROOT = Path(__file__).resolve().parents[1]
BOOT = "boot-1"
HOST = socket.gethostname()


def fake_proc(
    root: Path, pid: int, ppid: int, start: int, *, state: str = "S", comm: str = "x", cmdline: str = ""
) -> None:
    """One process in a fake /proc: its stat line (field 22 the start time) and cmdline."""
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "stat").write_text(f"{pid} ({comm}) {state} {ppid} " + " ".join(["0"] * 17) + f" {start} 0 0\n")
    (d / "cmdline").write_bytes(cmdline.replace(" ", "\0").encode())


def fake_boot(root: Path, boot_id: str = BOOT) -> None:
    (root / "sys/kernel/random").mkdir(parents=True, exist_ok=True)
    (root / "sys/kernel/random/boot_id").write_text(boot_id + "\n")


def record(driver=(100, 5000), procs=((201, 5001), (202, 5002)), boot=BOOT, host=HOST) -> LocalRayRecord:
    return LocalRayRecord(
        driver[0], driver[1], boot, host, "/tmp/ray/session_x", tuple(RecordedProcess(p, s, f"p{p}") for p, s in procs)
    )


# -- pure parts -------------------------------------------------------------------------------


def test_stat_line_parses_even_with_spaces_and_parentheses_in_the_command_name():
    line = "4242 (ray::Dash) x (y) S 7 4242 4242 0 -1 4194560 10 0 0 0 5 3 0 0 20 0 9 0 987654 1000 20\n"
    assert parse_stat(line) == ProcStat(4242, "ray::Dash) x (y", 7, "S", 987654)
    me = parse_stat(Path(f"/proc/{os.getpid()}/stat").read_text())
    assert (me.pid, me.ppid, me.running) == (os.getpid(), os.getppid(), True)
    for bad in ("", "4242 S 7", "abc (x) S 1 2 3"):
        with pytest.raises(ValueError, match="not a /proc/<pid>/stat line"):
            parse_stat(bad)


def test_same_process_needs_a_running_process_with_the_recorded_start_time():
    assert same_process(ProcStat(5, "a", 1, "S", 77), 77)
    assert not same_process(ProcStat(5, "a", 1, "S", 78), 77)  # the PID was reused
    assert not same_process(ProcStat(5, "a", 1, "Z", 77), 77)  # ended, not yet reaped
    assert not same_process(None, 77)


def test_descendants_walk_the_whole_tree_below_the_roots_only():
    stats = {
        p: ProcStat(p, "x", pp, "S", 1) for p, pp in [(1, 0), (10, 1), (11, 10), (12, 11), (13, 11), (20, 1), (21, 20)]
    }
    assert descendants([10], stats) == {11, 12, 13}
    assert descendants([10, 20], stats) == {11, 12, 13, 21}
    assert descendants([99], stats) == set()


def test_session_dir_fallback_matches_command_lines_naming_it():
    cmds = {1: "gcs_server --log_dir=/tmp/ray/session_a/logs", 2: "raylet --x=/tmp/ray/session_b", 3: "bash"}
    assert naming("/tmp/ray/session_a", cmds) == {1}
    assert naming("", cmds) == set()


def test_a_record_is_stale_only_when_its_driver_is_gone_and_only_its_own_processes_match():
    rec = record()
    alive_driver = {100: ProcStat(100, "python", 1, "S", 5000), 201: ProcStat(201, "gcs", 1, "S", 5001)}
    assert plan_cleanup(rec, alive_driver, BOOT, HOST) is None

    reused = {
        100: ProcStat(100, "bash", 1, "S", 9999),  # driver PID now someone else's
        201: ProcStat(201, "agent", 1, "S", 5001),  # still the recorded process
        202: ProcStat(202, "vim", 1, "S", 7777),
    }  # PID reused: never touched
    assert plan_cleanup(rec, reused, BOOT, HOST) == Cleanup(rec, (RecordedProcess(201, 5001, "p201"),))

    gone = {202: ProcStat(202, "agent", 1, "Z", 5002)}  # driver gone; the one left is a zombie
    assert plan_cleanup(rec, gone, BOOT, HOST) == Cleanup(rec, ())
    assert plan_cleanup(rec, reused, "boot-2", HOST) == Cleanup(rec, ())  # a reboot ended them all
    assert plan_cleanup(rec, reused, BOOT, "another-host") is None  # not ours to judge


def test_record_round_trips_and_bad_files_are_one_clear_error():
    rec = record()
    assert LocalRayRecord.from_json(rec.to_json()) == rec
    for text, what in (
        ("{", "JSONDecodeError"),
        ("[]", "AttributeError"),
        (json.dumps({"version": 1, "driver_pid": 1}), "KeyError"),
        (json.dumps({**json.loads(rec.to_json()), "version": 7}), "format version 7"),
    ):
        with pytest.raises(ValueError, match=what):
            LocalRayRecord.from_json(text)


def test_state_dir_is_the_env_override_else_xdg_else_home():
    assert state_dir({"AUTOTUNE_STATE_DIR": "/s"}) == Path("/s/local-ray")
    assert state_dir({"XDG_STATE_HOME": "/x"}) == Path("/x/rl-autotune/local-ray")
    assert state_dir({}) == Path("~/.local/state/rl-autotune/local-ray").expanduser()


# -- the adapter on a fake /proc ----------------------------------------------------------------


def test_describe_node_records_rays_processes_and_their_children_not_the_driver(tmp_path):
    proc = ProcFS(tmp_path)
    fake_boot(tmp_path)
    fake_proc(tmp_path, 100, 1, 5000, comm="python")  # the driver
    fake_proc(tmp_path, 201, 100, 5001, comm="gcs_server")
    fake_proc(tmp_path, 202, 100, 5002, comm="raylet")
    fake_proc(tmp_path, 203, 202, 5003, comm="ray::DashboardA")  # the raylet's agent: not in Ray's list
    fake_proc(tmp_path, 204, 202, 5004, state="Z")  # already ended
    fake_proc(tmp_path, 300, 100, 5005, comm="other")  # the driver's, but not Ray's
    node = SimpleNamespace(
        get_session_dir_path=lambda: "/tmp/ray/session_x",
        all_processes={
            "gcs_server": [SimpleNamespace(process=SimpleNamespace(pid=201))],
            "raylet": [SimpleNamespace(process=SimpleNamespace(pid=202))],
        },
    )
    rec = describe_node(node, proc, 100)
    assert (rec.driver_pid, rec.driver_start_ticks, rec.boot_id, rec.session_dir) == (
        100,
        5000,
        BOOT,
        "/tmp/ray/session_x",
    )
    assert rec.processes == (
        RecordedProcess(201, 5001, "gcs_server"),
        RecordedProcess(202, 5002, "raylet"),
        RecordedProcess(203, 5003, "ray::DashboardA"),
    )

    fake_proc(tmp_path, 400, 1, 5006, cmdline="raylet --session_dir=/tmp/ray/session_x")
    bare = SimpleNamespace(get_session_dir_path=lambda: "/tmp/ray/session_x", all_processes={})
    assert [p.pid for p in describe_node(bare, proc, 100).processes] == [400]


def test_clean_stale_ends_only_recorded_processes_of_dead_drivers(tmp_path, caplog):
    root, states = tmp_path / "proc", tmp_path / "state"
    states.mkdir()
    fake_boot(root)
    fake_proc(root, 100, 1, 9999)  # the dead driver's PID, reused
    fake_proc(root, 201, 1, 5001)  # its agent: ends on SIGTERM
    fake_proc(root, 202, 1, 5002)  # its other agent: ignores SIGTERM
    fake_proc(root, 203, 1, 8888)  # recorded PID, now another process
    fake_proc(root, 500, 1, 6000)  # a live driver
    fake_proc(root, 501, 500, 6001)  # and its Ray
    (states / "100.json").write_text(record(procs=((201, 5001), (202, 5002), (203, 5003))).to_json())
    (states / "500.json").write_text(record(driver=(500, 6000), procs=((501, 6001),)).to_json())
    (states / "666.json").write_text("{half a file")
    sent = []

    def send(p, sig):
        st = ProcFS(root).stat(p.pid)
        if not same_process(st, p.start_ticks):
            return False
        sent.append((p.pid, sig))
        if sig == signal.SIGKILL or p.pid == 201:
            (root / str(p.pid) / "stat").unlink()
        return True

    with caplog.at_level(logging.WARNING, logger="autotune.local_ray"):
        cleaned = clean_stale(states, ProcFS(root), send, grace_s=0.3)
    assert sent == [(201, signal.SIGTERM), (202, signal.SIGTERM), (202, signal.SIGKILL)]
    assert [c.record.driver_pid for c in cleaned] == [100]
    assert sorted(p.name for p in states.iterdir()) == ["500.json"]  # the live driver's record stays
    assert (root / "203" / "stat").exists() and (root / "501" / "stat").exists()
    lines = [r.getMessage() for r in caplog.records]
    assert any("ended 2 process(es)" in m and "driver PID 100" in m for m in lines), lines
    assert any("unreadable local Ray record" in m and "666.json" in m for m in lines), lines


def test_signals_reach_a_real_process_only_with_its_start_time(tmp_path):
    child = subprocess.Popen(["sleep", "60"])
    try:
        proc = ProcFS()
        start = proc.stat(child.pid).start_ticks
        send = signal_if_same(proc)
        assert not send(RecordedProcess(child.pid, start + 1), signal.SIGTERM)
        assert child.poll() is None
        assert send(RecordedProcess(child.pid, start), signal.SIGTERM)
        assert child.wait(timeout=30) == -signal.SIGTERM
        assert not send(RecordedProcess(child.pid, start), signal.SIGTERM)  # gone (reaped): nothing sent
    finally:
        child.kill()
        child.wait()


# -- end to end: real `autotune run`s, real Ray ----------------------------------------------------


def _alive(pid: int, start_ticks: int) -> bool:
    """Independent of the module under test: is ``pid`` still the process that started at ``start_ticks``?"""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] not in ("Z", "X") and int(fields[19]) == start_ticks


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _run(out: Path, duration_s: float, env: dict, log_to: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "autotune.cli",
        "run",
        "--duration-s",
        str(duration_s),
        "--time-scale",
        "0.05",
        "--interval-s",
        "5",
        "--peak-rate",
        "5",
        "--no-dashboard",
        "--out",
        str(out),
        "--policy",
        "hpa",
    ]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(log_to, "w"))


def _wait_for_record(path: Path, driver: subprocess.Popen, log_to: Path, timeout_s: float = 180.0) -> dict:
    """The driver's record once it lists a live Ray process (fails if the driver ends first)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rec = _read_record(path)
        if rec and any(_alive(p["pid"], p["start_ticks"]) for p in rec["processes"]):
            return rec
        if driver.poll() is not None:
            pytest.fail(f"autotune run exited {driver.returncode} before recording its Ray:\n{log_to.read_text()}")
        time.sleep(0.2)
    pytest.fail(f"no record of a live local Ray at {path} after {timeout_s:.0f} s:\n{log_to.read_text()}")


def test_a_killed_runs_ray_is_ended_by_the_next_run_which_leaves_nothing(tmp_path):
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("AUTOTUNE_") and k not in ("RAY_ADDRESS", "PYTHONPATH")
    }
    env["AUTOTUNE_STATE_DIR"] = str(tmp_path / "state")
    records = tmp_path / "state" / "local-ray"
    drivers: list[subprocess.Popen] = []
    seen: list[dict] = []
    try:
        first = _run(tmp_path / "run1", 30, env, tmp_path / "run1.log")
        drivers.append(first)
        rec1 = _wait_for_record(records / f"{first.pid}.json", first, tmp_path / "run1.log")
        seen.append(rec1)
        assert rec1["driver_pid"] == first.pid and rec1["session_dir"]
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        # what dies with the driver dies within moments; what is left after a while is orphaned
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and all(_alive(p["pid"], p["start_ticks"]) for p in rec1["processes"]):
            time.sleep(0.2)
        time.sleep(3.0)
        orphans = [p for p in rec1["processes"] if _alive(p["pid"], p["start_ticks"])]
        assert orphans, (
            "every Ray process of the killed driver ended by itself: Ray cleaned up, nothing "
            f"orphaned ({rec1['processes']})"
        )

        second = _run(tmp_path / "run2", 10, env, tmp_path / "run2.log")
        drivers.append(second)
        rec2 = _wait_for_record(records / f"{second.pid}.json", second, tmp_path / "run2.log")
        seen.append(rec2)
        assert not any(_alive(p["pid"], p["start_ticks"]) for p in rec1["processes"])  # ended before ray.init
        assert not (records / f"{first.pid}.json").exists()
        assert second.wait(timeout=300) == 0, (tmp_path / "run2.log").read_text()
        log2 = (tmp_path / "run2.log").read_text()
        assert f"ended {len(orphans)} process(es) of the local Ray left by driver PID {first.pid}" in log2, log2
        assert (tmp_path / "run2" / "summary.json").exists()
        assert not (records / f"{second.pid}.json").exists()  # a normal exit removes its record
        left = [p for p in rec2["processes"] if _alive(p["pid"], p["start_ticks"])]
        assert not left, f"the finished run left Ray processes running: {left}"
        assert list(records.iterdir()) == []
    finally:
        for d in drivers:
            if d.poll() is None:
                d.kill()
                d.wait()
        # every record seen, and any left on disk (a run killed here before it was seen)
        on_disk = [r for f in (records.glob("*.json") if records.is_dir() else ()) if (r := _read_record(f))]
        for rec in seen + on_disk:
            for p in rec["processes"]:
                if _alive(p["pid"], p["start_ticks"]):
                    os.kill(p["pid"], signal.SIGKILL)
