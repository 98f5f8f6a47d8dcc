"""Where the live system's parts are: flags, then environment variables, then the embedded default.

| setting | flag | environment | default (embedded, no servers) |
|---|---|---|---|
| database (tasks, attempts, audit, decisions) | `--database-url` | `AUTOTUNE_DATABASE_URL` | SQLite file in the run folder |
| live queue and task status | `--redis-url` | `AUTOTUNE_REDIS_URL` | the same SQLite file |
| metrics read back by the tuner | `--prometheus-url` | `AUTOTUNE_PROMETHEUS_URL` | the in-process exporter |
| Ray cluster | `--ray-address` | `AUTOTUNE_RAY_ADDRESS`, `RAY_ADDRESS` | a local Ray started for the run |
| exporter port (`/metrics`) | `--metrics-port` | `AUTOTUNE_METRICS_PORT` | not served |
| exporter address | `--metrics-host` | `AUTOTUNE_METRICS_HOST` | 127.0.0.1 (0.0.0.0: every interface) |

Every address is checked before the run starts: an unreachable one is one :class:`EndpointError`
naming it and how to start or change it, never a traceback from deep inside a client library.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV = {
    "database_url": "AUTOTUNE_DATABASE_URL",
    "redis_url": "AUTOTUNE_REDIS_URL",
    "prometheus_url": "AUTOTUNE_PROMETHEUS_URL",
    "ray_address": "AUTOTUNE_RAY_ADDRESS",
    "metrics_port": "AUTOTUNE_METRICS_PORT",
    "metrics_host": "AUTOTUNE_METRICS_HOST",
}


class EndpointError(RuntimeError):
    """A configured server could not be reached; the message names it, its address and a way out."""


@dataclass(frozen=True)
class Endpoints:
    database_url: str
    queue_url: str
    prometheus_url: str | None
    ray_address: str | None
    metrics_port: int | None
    metrics_host: str = "127.0.0.1"

    @property
    def embedded(self) -> bool:
        return self.database_url.startswith("sqlite") and self.queue_url.startswith("sqlite")

    def describe(self) -> dict[str, str]:
        from sqlalchemy.engine import make_url

        def mask(url: str) -> str:
            try:
                return make_url(url).render_as_string(hide_password=True)
            except Exception:
                return url

        return {
            "database": mask(self.database_url),
            "queue": mask(self.queue_url),
            "metrics": self.prometheus_url or "in-process exporter",
            "ray": self.ray_address or "local (started for this run)",
            "exporter": f"http://{self.metrics_host}:{self.metrics_port}/metrics"
            if self.metrics_port
            else "not served",
        }


def resolve_endpoints(
    run_dir: Path,
    *,
    database_url: str | None = None,
    redis_url: str | None = None,
    prometheus_url: str | None = None,
    ray_address: str | None = None,
    metrics_port: int | None = None,
    metrics_host: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Endpoints:
    """Flags first, then ``AUTOTUNE_*`` variables, then the embedded default in ``run_dir``."""
    env = os.environ if environ is None else environ
    database_url = database_url or env.get(ENV["database_url"]) or f"sqlite:///{(run_dir / 'autotune.db').resolve()}"
    queue_url = redis_url or env.get(ENV["redis_url"]) or database_url
    prometheus_url = prometheus_url or env.get(ENV["prometheus_url"]) or None
    ray_address = ray_address or env.get(ENV["ray_address"]) or env.get("RAY_ADDRESS") or None
    port_text = metrics_port if metrics_port is not None else env.get(ENV["metrics_port"])
    port = None
    if port_text not in (None, ""):
        try:
            port = int(port_text)
        except (TypeError, ValueError):
            raise EndpointError(
                f"metrics port {port_text!r} ({ENV['metrics_port']} or --metrics-port): not a number"
            ) from None
        if not 0 < port < 65536:
            raise EndpointError(f"metrics port {port} ({ENV['metrics_port']} or --metrics-port): use 1-65535")
    if not queue_url.startswith(("redis://", "rediss://", "unix://", "sqlite", "mysql")):
        raise EndpointError(
            f"queue URL {queue_url!r}: use redis://host:port/db, or a sqlite:/// or "
            "mysql+pymysql:// URL for the embedded SQL queue"
        )
    host = metrics_host or env.get(ENV["metrics_host"]) or "127.0.0.1"
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as err:
        raise EndpointError(
            f"metrics host {host!r} ({ENV['metrics_host']} or --metrics-host): not an address "
            f"this machine can listen on ({err})"
        ) from None
    return Endpoints(database_url, queue_url, prometheus_url, ray_address, port, host)


def _probe(address: str, timeout_s: float = 3.0) -> None:
    """Raise EndpointError unless ``address`` (``host:port`` or ``ray://host:port``) accepts a TCP
    connection; ``auto`` and other forms are left to Ray."""

    hostport = address.split("://", 1)[-1]
    host, sep, port_text = hostport.rpartition(":")
    if not sep or not port_text.isdigit() or address == "auto":
        return
    try:
        with socket.create_connection((host or "127.0.0.1", int(port_text)), timeout=timeout_s):
            return
    except OSError as err:
        raise EndpointError(
            f"Ray at {address} unreachable: {err}; check --ray-address / {ENV['ray_address']} "
            "(start one with: ray start --head), or leave it unset to start a local Ray"
        ) from None


def start_ray(address: str | None, *, num_cpus: int | None = None, namespace: str = "autotune") -> str:
    """Connect to the Ray cluster at ``address`` or start a local one; returns what was used.

    A local one is recorded, and what a killed driver's local Ray left running is ended first
    (:mod:`autotune.local_ray`); :func:`autotune.local_ray.stop_local_ray` shuts it down."""
    import ray

    if ray.is_initialized():
        return "already connected"
    from autotune import local_ray

    if address:
        _probe(address)  # ray.init retries an unreachable GCS for minutes; say so at once
    else:
        local_ray.clean_stale()  # what a killed driver's local Ray left behind
    try:
        if address:
            ray.init(address=address, namespace=namespace, log_to_driver=False)
            return address
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, namespace=namespace)
        local_ray.record_started()  # so the next start can clean up after this driver if it is killed
        return "local"
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = address or "a local Ray"
        first = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        raise EndpointError(
            f"Ray at {where} unreachable: {first}; check --ray-address / "
            f"{ENV['ray_address']} (start one with: ray start --head), or leave it unset "
            "to start a local Ray"
        ) from None
