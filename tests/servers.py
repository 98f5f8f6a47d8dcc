"""Stop and restart this machine's real Redis and MariaDB, for the fault tests and the chaos benchmark.

Each server is stopped by asking it to shut down (Redis ``SHUTDOWN NOSAVE``, MariaDB ``SHUTDOWN``),
never by signalling processes by name, and started again with the command the machine's services
are started with (the ones ``.ci/services.sh`` uses). :func:`down_for` stops one, keeps it down for
a while, and always starts it again, waiting until it answers; :func:`ensure_up` is the safety net a
test's teardown calls. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pymysql
import redis

REDIS_START = [
    "redis-server",
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    "6379",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
]
MARIADB_START = ["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd"]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait(check, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} after {timeout_s:g} s")


# -- Redis ---------------------------------------------------------------------------------------
def redis_up() -> bool:
    try:
        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def stop_redis() -> None:
    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2)
    try:
        client.shutdown(nosave=True)
    except redis.ConnectionError:
        pass  # the server closes the connection as it goes
    _wait(lambda: not _port_open(6379), "Redis still listens")


def start_redis() -> None:
    if not redis_up():
        subprocess.run(REDIS_START, check=True, capture_output=True, timeout=30)
    _wait(redis_up, "Redis does not answer")


# -- MariaDB -------------------------------------------------------------------------------------
def _mariadb() -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", connect_timeout=2)


def mariadb_up() -> bool:
    try:
        _mariadb().close()
        return True
    except pymysql.err.MySQLError:
        return False


def stop_mariadb() -> None:
    conn = _mariadb()
    with conn.cursor() as cur:
        cur.execute("SELECT @@pid_file")
        (pid_file,) = cur.fetchone()
    try:
        pid = int(open(pid_file).read().strip())
    except (OSError, ValueError):
        pid = None
    try:
        with conn.cursor() as cur:
            cur.execute("SHUTDOWN")
    except pymysql.err.MySQLError:
        pass
    finally:
        try:
            conn.close()
        except pymysql.err.Error:
            pass
    _wait(lambda: not _port_open(3306), "MariaDB still listens")
    if pid is not None:  # until the process is gone, start-stop-daemon would think it still runs
        _wait(lambda: not os.path.exists(f"/proc/{pid}"), f"MariaDB (pid {pid}) still running")


def start_mariadb() -> None:
    if not mariadb_up():
        subprocess.run(MARIADB_START, check=True, capture_output=True, timeout=30)
    _wait(mariadb_up, "MariaDB does not answer", timeout_s=90)


SERVERS = {"redis": (stop_redis, start_redis, redis_up), "mariadb": (stop_mariadb, start_mariadb, mariadb_up)}


def ensure_up() -> None:
    """Start whichever of the two is down (a test that stopped one must leave it running)."""
    for _, start, up in SERVERS.values():
        if not up():
            start()


@contextmanager
def down_for(server: str, seconds: float, after_s: float = 0.0) -> Iterator[dict[str, float]]:
    """In a background thread: wait ``after_s``, stop ``server`` ("redis" or "mariadb"), keep it
    down ``seconds``, start it again. The dict gets ``stopped_s`` and ``started_s`` (wall clock).
    On leaving the block the thread is joined and the server is up, whatever happened."""
    stop, start, _ = SERVERS[server]
    times: dict[str, float] = {}
    errors: list[BaseException] = []

    def cycle() -> None:
        try:
            time.sleep(after_s)
            stop()
            times["stopped_s"] = time.time()
            time.sleep(seconds)
        except BaseException as err:
            errors.append(err)
        finally:
            try:
                start()
                times["started_s"] = time.time()
            except BaseException as err:
                errors.append(err)

    thread = threading.Thread(target=cycle, name=f"outage-{server}", daemon=True)
    thread.start()
    try:
        yield times
    finally:
        thread.join()
        start()
        if errors:
            raise errors[0]
