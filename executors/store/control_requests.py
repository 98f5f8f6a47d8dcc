"""Operator requests to a running tuner (a mode change, an override) and the tuner runs they are
bound to: the tuner applies or refuses each request at its next interval."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from executors.sql import chunks
from executors.store.base import StoreBase, metadata

control_table = sa.Table(
    "control_requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("cluster", sa.String(64), nullable=False),
    sa.Column("time_s", sa.Double, nullable=False),
    sa.Column("user", sa.String(64), nullable=False),
    sa.Column("roles", sa.Text, nullable=False),  # JSON list, as asserted by whoever authenticated the user
    sa.Column("action", sa.String(16), nullable=False),  # mode | override
    sa.Column("value", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending | applied | refused
    sa.Column("detail", sa.Text, nullable=True),
    # the signed request (autotune.operator_auth); nullable: tables made by older versions lack them
    sa.Column("run_id", sa.String(64), nullable=True),  # the tuner run it is bound to
    sa.Column("nonce", sa.String(64), nullable=True),
    sa.Column("issued_s", sa.Double, nullable=True),
    sa.Column("expires_s", sa.Double, nullable=True),
    sa.Column("signature", sa.String(128), nullable=True),
    sa.Index("ix_control_cluster_status", "cluster", "status"),
)

tuner_runs_table = sa.Table(  # which tuner runs a cluster now: control requests are bound to its run_id
    "tuner_runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("cluster", sa.String(64), nullable=False),
    sa.Column("started_s", sa.Double, nullable=False),
    sa.Column("heartbeat_s", sa.Double, nullable=False),  # beats once a control interval
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # running | ended
    sa.Column("interval_s", sa.Double, nullable=True),  # how often it beats
    sa.Column("run_dir", sa.Text, nullable=True),  # where its default operator keys are
    sa.Index("ix_tuner_runs_cluster", "cluster", "status"),
)


class ControlRequests(StoreBase):
    """Operator requests and tuner runs (a part of :class:`executors.store.TaskStore`)."""

    def request_control(
        self,
        cluster: str,
        user: str,
        roles: Iterable[str],
        action: str,
        value: str,
        now_s: float,
        *,
        run_id: str | None = None,
        nonce: str | None = None,
        issued_s: float | None = None,
        expires_s: float | None = None,
        signature: str | None = None,
    ) -> int:
        """Queue an operator action (``mode`` or ``override``) for the running tuner of ``cluster``,
        which applies or refuses it at its next interval (:meth:`finish_control`); returns its id.
        The keyword fields are the signed request (:mod:`autotune.operator_auth`); the tuner refuses
        a row without them. ``roles`` is kept for older readers; the tuner ignores it."""
        if action not in ("mode", "override"):
            raise ValueError(f"control action must be 'mode' or 'override', got {action!r}")
        row = {
            "cluster": cluster,
            "time_s": now_s,
            "user": user,
            "roles": json.dumps(sorted(roles)),
            "action": action,
            "value": str(value),
            "status": "pending",
            "detail": None,
            "run_id": run_id,
            "nonce": nonce,
            "issued_s": issued_s,
            "expires_s": expires_s,
            "signature": signature,
        }
        return self._with_retry(
            "request control", lambda c, _r: int(c.execute(control_table.insert(), row).inserted_primary_key[0])
        )

    def pending_control(self, cluster: str) -> list[dict[str, Any]]:
        """The cluster's pending operator requests, oldest first."""
        q = (
            sa.select(control_table)
            .where(control_table.c.cluster == cluster, control_table.c.status == "pending")
            .order_by(control_table.c.id)
        )
        return self._with_retry(
            "read control requests",
            lambda c, _r: [{**dict(r), "roles": json.loads(r["roles"])} for r in c.execute(q).mappings()],
        )

    def finish_control(self, request_id: int, status: str, detail: str | None = None) -> None:
        if status not in ("applied", "refused"):
            raise ValueError(f"control request status must be applied or refused, got {status!r}")
        stmt = control_table.update().where(control_table.c.id == request_id).values(status=status, detail=detail)
        self._with_retry("finish control request", lambda c, _r: c.execute(stmt))

    def control_request(self, request_id: int) -> dict[str, Any] | None:
        q = sa.select(control_table).where(control_table.c.id == request_id)
        row = self._with_retry("read control request", lambda c, _r: c.execute(q).mappings().first())
        return None if row is None else {**dict(row), "roles": json.loads(row["roles"])}

    def finished_control_with_nonces(self, cluster: str, nonces: Iterable[str]) -> list[dict[str, Any]]:
        """The cluster's applied or refused requests carrying one of ``nonces`` (to catch replays)."""
        wanted = sorted({n for n in nonces if n})

        def run(conn: sa.Connection, _retrying: bool) -> list[dict[str, Any]]:
            out = []
            for chunk in chunks(wanted):
                q = sa.select(control_table).where(
                    control_table.c.cluster == cluster,
                    control_table.c.status != "pending",
                    control_table.c.nonce.in_(chunk),
                )
                out += [{**dict(r), "roles": json.loads(r["roles"])} for r in conn.execute(q).mappings()]
            return out

        return self._with_retry("read finished control requests", run) if wanted else []

    # -- the tuner runs that control requests are bound to ---------------------------------------
    def register_tuner(
        self,
        cluster: str,
        run_id: str,
        now_s: float,
        *,
        host: str,
        pid: int,
        interval_s: float | None = None,
        run_dir: str | None = None,
    ) -> None:
        """Record that tuner run ``run_id`` of ``cluster`` is running (again, on a resumed run)."""
        row = {
            "run_id": run_id,
            "cluster": cluster,
            "started_s": now_s,
            "heartbeat_s": now_s,
            "host": host,
            "pid": pid,
            "status": "running",
            "interval_s": interval_s,
            "run_dir": run_dir,
        }

        def run(conn: sa.Connection, _retrying: bool) -> None:
            t = tuner_runs_table
            found = conn.execute(sa.select(t.c.run_id).where(t.c.run_id == run_id)).first()
            if found is None:
                conn.execute(t.insert(), row)
            else:  # the same run again: it keeps its start, the rest is now
                conn.execute(
                    t.update()
                    .where(t.c.run_id == run_id)
                    .values({k: v for k, v in row.items() if k not in ("run_id", "started_s")})
                )

        self._with_retry("register tuner", run)

    def tuner_heartbeat(self, run_id: str, now_s: float, status: str = "running") -> None:
        """The tuner is still there (``running``) or has stopped (``ended``)."""
        if status not in ("running", "ended"):
            raise ValueError(f"tuner status must be running or ended, got {status!r}")
        stmt = (
            tuner_runs_table.update()
            .where(tuner_runs_table.c.run_id == run_id)
            .values(heartbeat_s=now_s, status=status)
        )
        self._with_retry("tuner heartbeat", lambda c, _r: c.execute(stmt))

    def tuner_runs(self, cluster: str, limit: int = 20) -> list[dict[str, Any]]:
        """The cluster's tuner runs, the last heard from first."""
        q = (
            sa.select(tuner_runs_table)
            .where(tuner_runs_table.c.cluster == cluster)
            .order_by(tuner_runs_table.c.heartbeat_s.desc())
            .limit(limit)
        )
        return self._with_retry("read tuner runs", lambda c, _r: [dict(r) for r in c.execute(q).mappings()])
