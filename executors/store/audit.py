"""The append-only audit log: who did what to which task, when.

Audit events have no natural key, so a retry after an ambiguous commit first looks for the whole
batch (same timestamps, tenant, actor, action, subject and detail) and writes it only if it is not
there.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from executors.sql import prepared_insert
from executors.store.base import StoreBase, metadata, sorted_json

audit_table = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts_s", sa.Double, nullable=False),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("subject", sa.String(128), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),  # JSON object
    sa.Index("ix_audit_tenant", "tenant", "id"),
)


@dataclass(frozen=True)
class AuditEvent:
    ts_s: float
    tenant: str
    actor: str
    action: str
    subject: str
    detail: dict[str, Any]


class AuditLog(StoreBase):
    """The audit log (a part of :class:`executors.store.TaskStore`)."""

    def append_audit(self, events: Sequence[AuditEvent]) -> None:
        """Append events in one transaction. The log is append-only: there is no update or delete.

        On a retry the batch is first looked for (see the module docstring): an identical batch
        already in the log within the same time span counts as written.
        """
        if not events:
            return
        rows = [_audit_values(e) for e in events]

        def run(conn: sa.Connection, retrying: bool) -> None:
            if retrying and _audit_batch_present(conn, rows):
                return
            _INSERT_AUDIT.many(conn, rows)

        self._with_retry("append audit", run)

    def audit(self, tenant: str, limit: int = 100) -> list[AuditEvent]:
        """A tenant's audit events, newest first."""
        q = sa.select(audit_table).where(audit_table.c.tenant == tenant).order_by(audit_table.c.id.desc()).limit(limit)
        return self._with_retry(
            "read audit",
            lambda c, _r: [
                AuditEvent(
                    r["ts_s"],
                    r["tenant"],
                    r["actor"],
                    r["action"],
                    r["subject"],
                    json.loads(r["detail"]),
                )
                for r in c.execute(q).mappings()
            ],
        )


def _audit_batch_present(conn: sa.Connection, rows: list[tuple]) -> bool:
    """Whether every row of an audit batch (tuples in ``_AUDIT_FIELDS`` order) is in the log
    already (an earlier try committed)."""
    wanted = Counter(rows)
    c = audit_table.c
    found: Counter = Counter()
    for tenant in {r[1] for r in rows}:
        ts = [r[0] for r in rows if r[1] == tenant]
        q = sa.select(*(c[f] for f in _AUDIT_FIELDS)).where(c.tenant == tenant, c.ts_s >= min(ts), c.ts_s <= max(ts))
        found.update(tuple(r) for r in conn.execute(q))
    return all(found[k] >= n for k, n in wanted.items())


def _audit_values(e: AuditEvent) -> tuple:
    """An audit event's row in ``_AUDIT_FIELDS`` order."""
    return (
        float(e.ts_s),
        e.tenant,
        e.actor,
        e.action,
        e.subject,
        sorted_json(e.detail),
    )


_AUDIT_FIELDS = ("ts_s", "tenant", "actor", "action", "subject", "detail")
_INSERT_AUDIT = prepared_insert(audit_table, _AUDIT_FIELDS)
