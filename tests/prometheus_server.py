"""A real Prometheus server for the tests (Debian's ``prometheus`` package), on a free loopback port.

Import the fixture into a test module (``from tests.prometheus_server import prometheus_server``)
and call it with the targets to scrape; every server it started is stopped after the test::

    def test_x(prometheus_server):
        prom = prometheus_server(["127.0.0.1:9123"])   # scrapes every second
        prom.url                                         # http://127.0.0.1:<port>

Without the binary the test fails (it never skips): the message says how to install it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml

INSTALL_HINT = "install it: apt-get install -y prometheus (or bash .ci/services.sh)"
JOB = "autotune"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``; fails the test with how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH; {INSTALL_HINT}", pytrace=False)
    return path


class PrometheusServer:
    """One ``prometheus`` process with its own config and storage in ``workdir``."""

    def __init__(
        self, workdir: Path, targets: Iterable[str], rule_files: Iterable[Path] = (), scrape_interval_s: float = 1.0
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        interval = f"{int(scrape_interval_s * 1000)}ms"
        config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
            "rule_files": [str(Path(p).resolve()) for p in rule_files],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": list(targets)}]}],
        }
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    def start(self, ready_timeout_s: float = 60.0) -> PrometheusServer:
        exe = binary("prometheus")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                exe,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"prometheus exited with status {self.proc.returncode}:\n{self.log()}", pytrace=False)
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"prometheus on {self.url} not ready after {ready_timeout_s} s:\n{self.log()}", pytrace=False)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None


@pytest.fixture
def prometheus_server(tmp_path):
    """Start Prometheus servers scraping the given targets; all are stopped after the test."""
    servers: list[PrometheusServer] = []

    def start(targets: Iterable[str], rule_files: Iterable[Path] = (), scrape_interval_s: float = 1.0):
        workdir = tmp_path / f"prometheus-{len(servers)}"
        workdir.mkdir()
        server = PrometheusServer(workdir, targets, rule_files, scrape_interval_s)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()
