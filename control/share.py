"""How the cluster's concurrency is shared among tenants.

Each tenant's tasks run on executor actors in the tenant's own Ray namespace (one pool per tenant), so
the one concurrency the control plane tunes is split among the tenants' pools. A pure function of the
demand: every tenant with work gets at least ``floor_slots`` (so nobody starves behind a busy
neighbour), the rest goes in proportion to demand (backlog plus running), by largest remainder so the
shares add up to the total exactly. A tenant without demand gets nothing; its actors drain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def split_concurrency(total: int, demand: Mapping[str, int], floor_slots: int = 1) -> dict[str, int]:
    """Shares of ``total`` slots for the tenants in ``demand`` (tenant -> tasks waiting or running).

    With no demand at all, the whole total goes to the tenants named, evenly (the cluster keeps its
    capacity warm for whoever comes next). Deterministic: ties go to tenants in sorted order.
    """
    if total < 0:
        raise ValueError(f"total concurrency must be >= 0, got {total}")
    if floor_slots < 0:
        raise ValueError(f"floor_slots must be >= 0, got {floor_slots}")
    if any(d < 0 for d in demand.values()):
        raise ValueError(f"demand must be >= 0 for every tenant, got {dict(demand)}")
    tenants = sorted(demand)
    if not tenants:
        return {}
    busy = [t for t in tenants if demand[t] > 0]
    if not busy:
        weights = {t: 1.0 for t in tenants}
    else:
        weights = {t: float(demand[t]) for t in busy}
    out = {t: 0 for t in tenants}
    names = sorted(weights)
    floor = min(floor_slots, total // len(names))
    for t in names:
        out[t] = floor
    rest = total - floor * len(names)
    wsum = sum(weights.values())
    exact = {t: rest * weights[t] / wsum for t in names}
    for t in names:
        out[t] += math.floor(exact[t])
    left = total - sum(out.values())
    by_remainder = sorted(names, key=lambda t: (-(exact[t] - math.floor(exact[t])), t))
    for t in by_remainder[:left]:
        out[t] += 1
    return out
