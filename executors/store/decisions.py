"""The tuner's decisions (:class:`control.tuner.DecisionRecord`), one row each, per cluster."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from executors.store.base import StoreBase, metadata

decisions_table = sa.Table(
    "decisions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("cluster", sa.String(64), nullable=False),
    sa.Column("time_s", sa.Double, nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("policy", sa.String(255), nullable=False),
    sa.Column("controller", sa.String(255), nullable=False),
    sa.Column("observation", sa.Text, nullable=True),  # JSON list of floats
    sa.Column("policy_output", sa.Double, nullable=True),
    sa.Column("guard_applied", sa.Integer, nullable=True),
    sa.Column("guard_reasons", sa.Text, nullable=False),  # JSON list
    sa.Column("applied", sa.Integer, nullable=False),
    sa.Column("previous", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("fallback", sa.Boolean, nullable=False),
    sa.Column("who", sa.String(64), nullable=False),
    sa.Column("emergency", sa.Boolean, nullable=False),
    sa.Column("extra", sa.Text, nullable=False),  # JSON object
    sa.Index("ix_decisions_cluster", "cluster", "id"),
)


class DecisionLog(StoreBase):
    """The tuner's decisions (a part of :class:`executors.store.TaskStore`)."""

    def record_decisions(self, records: Sequence[Any], cluster: str = "autotune") -> None:
        """Append the tuner's decisions (control.tuner.DecisionRecord) in one transaction; like the
        audit log, a retried batch already present counts as written."""
        if not records:
            return
        rows = [_decision_row(r, cluster) for r in records]

        def run(conn: sa.Connection, retrying: bool) -> None:
            if retrying:
                first, last = rows[0], rows[-1]
                present = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(decisions_table)
                    .where(
                        decisions_table.c.cluster == cluster,
                        decisions_table.c.time_s.between(first["time_s"], last["time_s"]),
                        decisions_table.c.reason.in_({r["reason"] for r in rows}),
                    )
                ).scalar_one()
                if present >= len(rows):
                    return
            conn.execute(decisions_table.insert(), rows)

        self._with_retry("record decisions", run)

    def last_decisions(self, n: int, cluster: str = "autotune") -> list[Any]:
        """The newest ``n`` decisions of ``cluster``, newest first."""
        from control.tuner import DecisionRecord

        q = (
            sa.select(decisions_table)
            .where(decisions_table.c.cluster == cluster)
            .order_by(decisions_table.c.id.desc())
            .limit(n)
        )

        def run(conn: sa.Connection, _retrying: bool) -> list[Any]:
            out = []
            for r in conn.execute(q).mappings():
                out.append(
                    DecisionRecord(
                        time_s=r["time_s"],
                        mode=r["mode"],
                        policy=r["policy"],
                        controller=r["controller"],
                        observation=None if r["observation"] is None else json.loads(r["observation"]),
                        policy_output=r["policy_output"],
                        guard_applied=r["guard_applied"],
                        guard_reasons=tuple(json.loads(r["guard_reasons"])),
                        applied=r["applied"],
                        previous=r["previous"],
                        reason=r["reason"],
                        fallback=bool(r["fallback"]),
                        who=r["who"],
                        emergency=bool(r["emergency"]),
                        extra=json.loads(r["extra"]),
                    )
                )
            return out

        return self._with_retry("read decisions", run)


def _decision_row(r: Any, cluster: str) -> dict[str, Any]:
    out = r.policy_output
    return {
        "cluster": cluster,
        "time_s": float(r.time_s),
        "mode": str(r.mode),
        "policy": r.policy,
        "controller": r.controller,
        "observation": None if r.observation is None else json.dumps([float(x) for x in r.observation]),
        # NaN is not storable (nor JSON): a NaN proposal is kept as NULL, its guard reason says why
        "policy_output": None if out is None or not math.isfinite(out) else float(out),
        "guard_applied": r.guard_applied,
        "guard_reasons": json.dumps(list(r.guard_reasons)),
        "applied": int(r.applied),
        "previous": int(r.previous),
        "reason": r.reason,
        "fallback": bool(r.fallback),
        "who": r.who,
        "emergency": bool(r.emergency),
        "extra": json.dumps(r.extra, default=str, sort_keys=True),
    }
