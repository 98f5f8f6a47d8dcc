"""How the cluster's concurrency is shared among tenants.

Each tenant's tasks run on executor actors in the tenant's own Ray namespace (one pool per tenant), so
the one concurrency the control plane tunes is split among the tenants' pools. A pure function of the
demand (tasks queued, retrying or running), weighted max-min fair:

- every tenant with work first gets its fair share or its demand, whichever is smaller: a tenant
  asking for little gets all it asks for, and what it leaves goes to the others in proportion to
  their weights (water filling). A tenant cannot take more than its share *by queueing more*: the
  share of a busy neighbour does not shrink when another tenant's backlog grows;
- capacity left over once every demand is met first keeps ``floor_slots`` warm for each tenant
  without work right now (so its next task does not wait for an executor to start: demand comes and
  goes between tasks), then stays with the busy tenants (by weight), so a new burst finds warm slots;
- a tenant's ``cap`` (its quota's ``max_slots``) is never exceeded, even if slots stay unassigned;
- every tenant with work gets at least ``floor_slots`` (within its cap and the total);
- a tenant without demand gets at most those warm ``floor_slots``, and only from capacity nobody
  with work needs; with no demand anywhere, the total goes to all tenants evenly, within their caps.

Integer shares by largest remainder; ties go to tenants in sorted order, so the split is
deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def split_concurrency(
    total: int,
    demand: Mapping[str, int],
    floor_slots: int = 1,
    weights: Mapping[str, float] | None = None,
    caps: Mapping[str, int | None] | None = None,
) -> dict[str, int]:
    """Shares of ``total`` slots for the tenants in ``demand`` (tenant -> tasks waiting or running).

    ``weights`` (default 1 each) weigh the fair shares; ``caps`` bound a tenant's slots (None: no
    cap). The shares add up to ``total`` unless every tenant that could take more is at its cap.
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
    weight = {t: float((weights or {}).get(t, 1.0)) for t in tenants}
    bad = {t: w for t, w in weight.items() if not (math.isfinite(w) and w > 0)}
    if bad:
        raise ValueError(f"weights must be finite and > 0, got {bad}")
    cap: dict[str, float] = {}
    for t in tenants:
        c = (caps or {}).get(t)
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 0):
            raise ValueError(f"cap of tenant {t!r} must be a whole number >= 0 or None, got {c!r}")
        cap[t] = math.inf if c is None else c
    busy = [t for t in tenants if demand[t] > 0]
    out = dict.fromkeys(tenants, 0)
    if not busy:
        out.update(_fill(total, tenants, weight, cap, out))
        return out
    floor = min(floor_slots, total // len(busy))
    start = {t: int(min(floor, cap[t])) for t in busy}
    wanted = {t: max(start[t], min(demand[t], cap[t])) for t in busy}
    first = _fill(total, busy, weight, wanted, start)  # fair shares up to each demand
    idle = [t for t in tenants if demand[t] == 0]
    if idle:  # warm slots for the idle ones, from what the busy ones leave
        left = total - sum(first.values())
        warm = _fill(left, idle, weight, {t: min(floor_slots, cap[t]) for t in idle}, dict.fromkeys(idle, 0))
        out.update(warm)
        total -= sum(warm.values())
    out.update(_fill(total, busy, weight, cap, first))  # what is left, up to each cap
    return out


def _fill(
    total: int, names: list[str], weight: Mapping[str, float], limit: Mapping[str, float], start: Mapping[str, int]
) -> dict[str, int]:
    """Water filling: raise every tenant's allocation in proportion to its weight, from ``start``,
    none beyond its ``limit``, until ``total`` is handed out or every tenant is at its limit."""
    alloc = {t: int(start[t]) for t in names}
    left = total - sum(alloc.values())
    active = [t for t in names if alloc[t] < limit[t]]
    while left > 0 and active:
        wsum = sum(weight[t] for t in active)
        exact = {t: left * weight[t] / wsum for t in active}
        full = [t for t in active if limit[t] - alloc[t] <= exact[t]]
        if full:  # these reach their limit with room to spare: give them that, share the rest again
            for t in full:
                room = int(limit[t] - alloc[t])
                alloc[t] += room
                left -= room
            active = [t for t in active if t not in full]
            continue
        whole = {t: math.floor(exact[t]) for t in active}
        for t in active:
            alloc[t] += whole[t]
        rest = left - sum(whole.values())
        for t in sorted(active, key=lambda t: (-(exact[t] - whole[t]), t))[:rest]:
            alloc[t] += 1
        left = 0
    return alloc
