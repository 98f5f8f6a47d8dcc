"""Dependency cycle and unknown-dependency checks before a task set is accepted."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.deadlock import DependencyCycleError, UnknownDependencyError, check_dependencies


def assert_respects(order: list[str], deps: dict[str, list[str]]) -> None:
    """Every dependency inside the set comes before its dependent; each id exactly once."""
    assert sorted(order) == sorted(deps)
    pos = {task_id: i for i, task_id in enumerate(order)}
    for task_id, task_deps in deps.items():
        for dep in task_deps:
            if dep in pos:
                assert pos[dep] < pos[task_id], f"{dep} must run before {task_id}"


def test_acyclic_order_respects_dependencies() -> None:
    deps = {
        "ship": ["pay", "pick"],
        "pay": ["validate"],
        "pick": ["validate", "reserve"],
        "reserve": [],
        "validate": [],
        "notify": ["ship"],
    }
    order = check_dependencies(deps)
    assert_respects(order, deps)


def test_empty_set() -> None:
    assert check_dependencies({}) == []


def test_independent_tasks() -> None:
    assert sorted(check_dependencies({"a": [], "b": (), "c": set()})) == ["a", "b", "c"]


def test_two_cycle() -> None:
    with pytest.raises(DependencyCycleError) as info:
        check_dependencies({"a": ["b"], "b": ["a"]})
    assert info.value.cycle == ["a", "b", "a"]
    assert str(info.value) == "dependency cycle: a -> b -> a"


def test_three_cycle_inside_larger_graph_named_exactly() -> None:
    # a depends on b, b on c, c on a; x, y, z hang off the cycle or sit beside it
    deps = {
        "x": ["a"],
        "a": ["b"],
        "b": ["c", "z"],
        "c": ["a"],
        "y": ["x", "z"],
        "z": [],
    }
    with pytest.raises(DependencyCycleError) as info:
        check_dependencies(deps)
    err = info.value
    assert err.cycle == ["a", "b", "c", "a"]
    assert str(err) == "dependency cycle: a -> b -> c -> a"
    for innocent in ("x", "y", "z"):
        assert innocent not in err.cycle


def test_cycle_direction_is_dependency_order() -> None:
    # "p depends on q": the cycle reads p -> q -> r -> p, whichever node the report starts from
    deps = {"p": ["q"], "q": ["r"], "r": ["p"]}
    with pytest.raises(DependencyCycleError) as info:
        check_dependencies(deps)
    cycle = info.value.cycle
    for a, b in zip(cycle, cycle[1:]):
        assert b in deps[a]
    assert cycle == ["p", "q", "r", "p"]  # starts at the first member in submission order


def test_self_dependency_is_a_cycle() -> None:
    with pytest.raises(DependencyCycleError) as info:
        check_dependencies({"ok": [], "a": ["ok", "a"]})
    assert info.value.cycle == ["a", "a"]
    assert str(info.value) == "dependency cycle: a -> a"


def test_cycle_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="dependency cycle"):
        check_dependencies({"a": ["a"]})


def test_unknown_dependency() -> None:
    with pytest.raises(UnknownDependencyError) as info:
        check_dependencies({"a": [], "b": ["a", "ghost"]})
    assert info.value.task_id == "b"
    assert info.value.missing == "ghost"
    assert "'b'" in str(info.value) and "'ghost'" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unknown_dependency_reported_before_cycle() -> None:
    with pytest.raises(UnknownDependencyError):
        check_dependencies({"a": ["b"], "b": ["a", "ghost"]})


def test_dependencies_on_known_ids_accepted() -> None:
    deps = {"refund": ["order-17"], "email": ["refund", "order-17"]}
    order = check_dependencies(deps, known=["order-17", "order-18"])
    assert order == ["refund", "email"]  # known ids are not part of the returned order


def test_known_accepts_any_iterable() -> None:
    assert check_dependencies({"a": ["k"]}, known=iter({"k"})) == ["a"]


def test_string_instead_of_list_rejected() -> None:
    with pytest.raises(TypeError, match="task 'a'"):
        check_dependencies({"a": "bc", "b": [], "c": []})  # type: ignore[dict-item]


def test_inputs_not_mutated() -> None:
    deps = {"a": ["b"], "b": [], "c": ["a", "k"]}
    known = ["k"]
    before = copy.deepcopy((deps, known))
    check_dependencies(deps, known)
    assert (deps, known) == before


# --- properties ---------------------------------------------------------------------------------


@st.composite
def dags(draw: st.DrawFn, min_nodes: int = 1) -> dict[str, list[str]]:
    """Random DAGs: node i may depend only on nodes with a lower index, so no cycle is possible.

    Ids are shuffled relative to index so the order is not just the insertion order."""
    n = draw(st.integers(min_value=min_nodes, max_value=12))
    names = draw(st.permutations([f"t{i}" for i in range(n)]))
    deps: dict[str, list[str]] = {}
    for i in range(n):
        lower = draw(st.sets(st.integers(min_value=0, max_value=i - 1), max_size=i)) if i else set()
        deps[names[i]] = [names[j] for j in sorted(lower)]
    order = draw(st.permutations(list(deps)))  # submission order independent of the edges
    return {k: deps[k] for k in order}


@settings(max_examples=150, deadline=None)
@given(dags())
def test_random_dags_pass_and_order_respects_every_edge(deps: dict[str, list[str]]) -> None:
    order = check_dependencies(deps)
    assert_respects(order, deps)


@settings(max_examples=150, deadline=None)
@given(dags(min_nodes=2), st.data())
def test_back_edge_always_raises_a_real_cycle(deps: dict[str, list[str]], data: st.DataObject) -> None:
    # Walk a random dependency path start -> ... -> end, then let end depend on start.
    with_deps = sorted(k for k, v in deps.items() if v)
    if not with_deps:  # no edge to close a cycle over: make one
        a, b = sorted(deps)[:2]
        deps = {**deps, a: [b]}
        with_deps = [a]
    start = data.draw(st.sampled_from(with_deps))
    node = start
    while True:
        node = data.draw(st.sampled_from(deps[node]))
        if not deps[node] or data.draw(st.booleans()):
            break
    end = node
    cyclic = {k: list(v) for k, v in deps.items()}
    cyclic[end] = cyclic[end] + [start]

    with pytest.raises(DependencyCycleError) as info:
        check_dependencies(cyclic)
    cycle = info.value.cycle
    assert len(cycle) >= 3 and cycle[0] == cycle[-1]
    assert len(set(cycle[:-1])) == len(cycle) - 1  # a simple cycle
    pairs = list(zip(cycle, cycle[1:]))
    for a, b in pairs:
        assert b in cyclic[a], f"{a} -> {b} is not a dependency"
    assert (end, start) in pairs  # the original graph is acyclic, so every cycle uses the new edge
    assert str(info.value) == "dependency cycle: " + " -> ".join(cycle)
