"""Adapters to the live executor cluster: Ray actors (pool, cluster), the task queue (Redis or
SQLite), the durable store (MariaDB/MySQL or SQLite), the Prometheus exporter and metrics source.

They reuse the domain model in :mod:`core.domain`, the retry policy in :mod:`core.retry`, the
circuit breaker and the priority score, exactly as the simulator does.
"""
