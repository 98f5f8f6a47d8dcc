"""The tuner's decisions as a table (``autotune decisions``): formatting only."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Literal

from rich.table import Table

from control.tuner import DecisionRecord


def format_decisions(records: Sequence[DecisionRecord]) -> Table:
    """Newest first, as given: time, mode, who, the policy's output and the guard's answer, what was
    applied (from what), why, and the observation (rounded)."""
    t = Table(title=f"last {len(records)} decisions", show_lines=False)
    columns: tuple[tuple[str, Literal["left", "right"]], ...] = (
        ("time (UTC)", "left"),
        ("mode", "left"),
        ("who", "left"),
        ("policy", "left"),
        ("proposed", "right"),
        ("guard", "right"),
        ("applied", "right"),
        ("reason", "left"),
        ("guard reasons", "left"),
        ("observation", "left"),
    )
    for col, just in columns:
        t.add_column(col, justify=just, overflow="fold")
    for r in records:
        when = dt.datetime.fromtimestamp(r.time_s, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        proposed = "-" if r.policy_output is None else f"{r.policy_output:.1f}"
        guarded = "-" if r.guard_applied is None else str(r.guard_applied)
        obs = "-" if r.observation is None else " ".join(f"{x:.2f}" for x in r.observation)
        reason = r.reason + (" [fallback]" if r.fallback else "") + (" [emergency]" if r.emergency else "")
        t.add_row(
            when,
            r.mode,
            r.who,
            r.policy or "-",
            proposed,
            guarded,
            f"{r.previous} -> {r.applied}",
            reason,
            ", ".join(r.guard_reasons) or "-",
            obs,
        )
    return t
