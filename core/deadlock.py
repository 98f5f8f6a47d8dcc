"""Dependency-graph checks run before a task set is accepted.

A task set whose dependencies form a cycle would never start: every task in the cycle waits for
another, forever, while holding its queue slot. Rejecting the set at submission (with the cycle
named) is far cheaper than detecting a stuck cluster later. A dependency on an id nobody knows is
rejected for the same reason: it would wait forever too.

Direction convention used throughout: an edge ``x -> y`` means **x depends on y** (y must finish
before x starts). A reported cycle ``a -> b -> c -> a`` therefore reads "a depends on b, b depends
on c, c depends on a".

Cycle detection is delegated to the stdlib :mod:`graphlib`. Its ``CycleError.args[1]`` lists the
cycle in the opposite direction (each node followed by one that depends on it, e.g.
``['a', 'c', 'b', 'a']`` for the cycle above); :func:`check_dependencies` reverses it into the
convention above.
"""

from __future__ import annotations

import graphlib
from collections.abc import Iterable, Mapping


class DependencyCycleError(ValueError):
    """The task set contains a dependency cycle.

    ``cycle`` lists the ids in dependency order with the first id repeated at the end, e.g.
    ``["a", "b", "c", "a"]`` (a depends on b, b on c, c on a); a self-dependency is ``["a", "a"]``.
    """

    def __init__(self, cycle: list[str]) -> None:
        self.cycle = list(cycle)
        super().__init__(f"dependency cycle: {' -> '.join(self.cycle)}")


class UnknownDependencyError(ValueError):
    """A task depends on an id that is neither in the submitted set nor already accepted."""

    def __init__(self, task_id: str, missing: str) -> None:
        self.task_id = task_id
        self.missing = missing
        super().__init__(f"task {task_id!r} depends on unknown task {missing!r}")


def _canonical_cycle(graphlib_cycle: list[str], order: Mapping[str, int]) -> list[str]:
    """graphlib's cycle (dependent direction) -> dependency direction, starting at the cycle member
    that comes first in the submitted ``deps``, so the same task set always names the same cycle
    the same way."""
    nodes = list(reversed(graphlib_cycle[:-1]))  # drop the repeated closing node, flip direction
    start = min(range(len(nodes)), key=lambda i: order[nodes[i]])
    rotated = nodes[start:] + nodes[:start]
    return rotated + [rotated[0]]


def check_dependencies(deps: Mapping[str, Iterable[str]], known: Iterable[str] = ()) -> list[str]:
    """Validate a task set's dependencies and return an execution order for it.

    ``deps`` maps task id -> ids it depends on. Every dependency must be an id in ``deps`` or in
    ``known`` (tasks accepted earlier, which are not part of this set and cannot close a cycle
    through it), else :class:`UnknownDependencyError` (the first offender in ``deps`` order).
    A cycle, including a task depending on itself, raises :class:`DependencyCycleError` naming it.

    Returns the ids of ``deps`` (not of ``known``) in a topological order: every task comes after
    all the tasks of the set it depends on. Neither argument is modified.
    """
    known_ids = frozenset(known)
    graph: dict[str, list[str]] = {}
    for task_id, task_deps in deps.items():
        if isinstance(task_deps, (str, bytes)):
            # A bare string is iterable, and would silently become one dependency per character.
            raise TypeError(
                f"dependencies of task {task_id!r} must be a collection of ids, got the string {task_deps!r}"
            )
        in_set: list[str] = []
        for dep in task_deps:
            if dep in deps:
                in_set.append(dep)
            elif dep not in known_ids:
                raise UnknownDependencyError(task_id, dep)
            # a dependency on an already accepted task is satisfied outside this set: no edge
        graph[task_id] = in_set

    sorter = graphlib.TopologicalSorter(graph)
    try:
        return list(sorter.static_order())
    except graphlib.CycleError as err:
        order = {task_id: i for i, task_id in enumerate(deps)}
        raise DependencyCycleError(_canonical_cycle(list(err.args[1]), order)) from None
