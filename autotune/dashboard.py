"""The live terminal dashboard of ``autotune run`` (rich), built from plain values.

:func:`render` is a pure function of a :class:`DashboardState`; the run loop fills the state and
``rich.live.Live`` redraws it. Nothing here reads a clock or a metric.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 40) -> str:
    """The last ``width`` values as block characters scaled to their own maximum."""
    vals = list(values)[-width:]
    if not vals:
        return ""
    top = max(vals) or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))] for v in vals)


@dataclass
class DashboardState:
    title: str
    policy: str
    mode: str
    elapsed_s: float = 0.0
    duration_s: float = 0.0
    arrival_rate_per_s: float = 0.0
    submitted: int = 0
    target: int = 0
    serving: int = 0
    running: int = 0
    backlog: int = 0
    success_rate: float = 1.0
    mean_processing_s: float = 0.0
    p90_processing_s: float = 0.0
    p99_processing_s: float = 0.0
    slo_success: float = 0.995
    slo_mean_s: float = 5.0
    slo_backlog: float = 100
    fallback: str | None = None
    outage: str | None = None  # what the cluster is waiting out, while it does
    load_history: deque = field(default_factory=lambda: deque(maxlen=60))
    concurrency_history: deque = field(default_factory=lambda: deque(maxlen=60))
    backlog_history: deque = field(default_factory=lambda: deque(maxlen=60))
    decisions: deque = field(default_factory=lambda: deque(maxlen=6))  # (time, policy out, applied, reason)


def _ok(flag: bool) -> Text:
    return Text("ok", style="green") if flag else Text("BREACH", style="bold red")


def render(s: DashboardState) -> Group:
    head = Text.assemble(
        (f"{s.title}  ", "bold"),
        f"policy {s.policy} ({s.mode})  ",
        f"{s.elapsed_s:5.0f}/{s.duration_s:.0f} s  ",
        (f"FALLBACK: {s.fallback}" if s.fallback else "", "bold yellow"),
        (f"\nOUTAGE: {s.outage}; dispatch paused, results kept" if s.outage else "", "bold red"),
    )
    levels = Table.grid(padding=(0, 2))
    levels.add_column(style="cyan")
    levels.add_column(justify="right")
    levels.add_column()
    levels.add_row("load (tasks/s)", f"{s.arrival_rate_per_s:7.1f}", sparkline(list(s.load_history)))
    levels.add_row("concurrency", f"{s.target:4d} / {s.serving:4d}", sparkline(list(s.concurrency_history)))
    levels.add_row("running", f"{s.running:7d}", "")
    levels.add_row("backlog", f"{s.backlog:7d}", sparkline(list(s.backlog_history)))
    levels.add_row("submitted", f"{s.submitted:7d}", "")
    slis = Table(title="SLIs", expand=False)
    for col in ("indicator", "value", "objective", ""):
        slis.add_column(col)
    slis.add_row(
        "success rate (5 min)", f"{s.success_rate:.2%}", f"> {s.slo_success:.1%}", _ok(s.success_rate >= s.slo_success)
    )
    slis.add_row(
        "mean processing",
        f"{s.mean_processing_s:.2f} s",
        f"< {s.slo_mean_s:.0f} s",
        _ok(s.mean_processing_s <= s.slo_mean_s),
    )
    slis.add_row("backlog", f"{s.backlog}", f"< {s.slo_backlog}", _ok(s.backlog <= s.slo_backlog))
    slis.add_row("P90 / P99 processing", f"{s.p90_processing_s:.2f} / {s.p99_processing_s:.2f} s", "", "")
    dec = Table(title="last decisions", expand=False)
    for col in ("t (s)", "proposed", "applied", "reason"):
        dec.add_column(col)
    for t, wanted, applied, reason in reversed(s.decisions):
        dec.add_row(f"{t:.0f}", "-" if wanted is None else f"{wanted:.0f}", str(applied), reason)
    return Group(head, Panel(levels, title="cluster"), slis, dec)
