import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.share import split_concurrency


def test_max_min_fair_then_spare_capacity_evenly():
    # both demands fit: each gets its demand, the 60 left go evenly
    assert split_concurrency(100, {"a": 30, "b": 10}) == {"a": 60, "b": 40}
    # b's demand is tiny, but it still gets its floor
    assert split_concurrency(10, {"a": 1000, "b": 1}, floor_slots=2) == {"a": 8, "b": 2}


def test_a_noisy_tenant_cannot_take_a_neighbours_fair_share_by_queueing_more():
    # proportional-to-demand would give b 10 of 100 here; max-min fair gives it half
    assert split_concurrency(100, {"a": 900, "b": 100}) == {"a": 50, "b": 50}
    assert split_concurrency(100, {"a": 90_000, "b": 100}) == {"a": 50, "b": 50}
    # a tenant asking for less than its share gets all it asks for, the rest goes to the other
    assert split_concurrency(100, {"a": 900, "b": 20}) == {"a": 80, "b": 20}


def test_weights_and_caps():
    assert split_concurrency(90, {"a": 500, "b": 500}, weights={"a": 2.0}) == {"a": 60, "b": 30}
    # a's cap binds: the slots it cannot take go to b
    assert split_concurrency(100, {"a": 500, "b": 500}, caps={"a": 20}) == {"a": 20, "b": 80}
    # every tenant capped: slots stay unassigned rather than break a cap
    assert split_concurrency(100, {"a": 500, "b": 500}, caps={"a": 20, "b": 30}) == {"a": 20, "b": 30}
    assert split_concurrency(10, {"a": 0, "b": 0}, caps={"a": 2}) == {"a": 2, "b": 8}


def test_an_idle_tenant_keeps_only_a_warm_floor_and_all_idle_share_evenly():
    assert split_concurrency(40, {"a": 5, "b": 0}) == {"a": 39, "b": 1}
    assert split_concurrency(40, {"a": 5, "b": 0}, floor_slots=10) == {"a": 30, "b": 10}
    assert split_concurrency(40, {"a": 5, "b": 0}, floor_slots=0) == {"a": 40, "b": 0}
    # the warm floor comes only from what the busy tenants leave
    assert split_concurrency(40, {"a": 500, "b": 0}, floor_slots=10) == {"a": 40, "b": 0}
    assert split_concurrency(41, {"a": 0, "b": 0}) == {"a": 21, "b": 20}


def test_largest_remainder_adds_up_and_breaks_ties_by_name():
    assert split_concurrency(10, {"a": 1, "b": 1, "c": 1}, floor_slots=0) == {"a": 4, "b": 3, "c": 3}


def test_bad_input_names_what_is_wrong():
    with pytest.raises(ValueError, match="total concurrency"):
        split_concurrency(-1, {"a": 1})
    with pytest.raises(ValueError, match="demand"):
        split_concurrency(5, {"a": -3})
    with pytest.raises(ValueError, match="weights"):
        split_concurrency(5, {"a": 3}, weights={"a": 0.0})
    with pytest.raises(ValueError, match="cap of tenant 'a'"):
        split_concurrency(5, {"a": 3}, caps={"a": -1})


demands = st.dictionaries(st.sampled_from("abcdefg"), st.integers(0, 10_000), min_size=1)


@given(st.integers(0, 2000), demands, st.integers(0, 20))
def test_shares_add_up_and_respect_floor(total, demand, floor):
    out = split_concurrency(total, demand, floor)
    assert sum(out.values()) == total
    assert set(out) == set(demand)
    busy = [t for t in demand if demand[t] > 0]
    if busy:
        assert all(out[t] <= floor for t in demand if demand[t] == 0)
        if floor * len(busy) <= total:
            assert all(out[t] >= floor for t in busy)


@given(st.integers(0, 2000), demands, st.dictionaries(st.sampled_from("abcdefg"), st.integers(0, 500)))
def test_caps_are_never_exceeded_and_nothing_is_left_while_someone_could_take_it(total, demand, caps):
    out = split_concurrency(total, demand, 0, caps=caps)
    assert all(out[t] <= caps[t] for t in out if t in caps)
    if sum(out.values()) < total:  # only when every tenant that may get slots is at its cap
        takers = [t for t in demand if demand[t] > 0] or list(demand)
        assert all(t in caps and out[t] == caps[t] for t in takers)


@given(st.integers(1, 2000), st.integers(1, 5000), st.integers(0, 5000), st.integers(0, 5000))
def test_more_demand_from_a_never_shrinks_bs_share(total, b, a, extra):
    before = split_concurrency(total, {"a": a, "b": b}, 0)["b"]
    after = split_concurrency(total, {"a": a + extra, "b": b}, 0)["b"]
    assert after >= before or after >= min(b, total // 2)
