import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.share import split_concurrency


def test_proportional_to_demand_with_a_floor():
    assert split_concurrency(100, {"a": 30, "b": 10}) == {"a": 75, "b": 25}
    # b's demand is tiny, but it still gets its floor
    assert split_concurrency(10, {"a": 1000, "b": 1}, floor_slots=2) == {"a": 8, "b": 2}


def test_idle_tenant_gets_nothing_and_all_idle_share_evenly():
    assert split_concurrency(40, {"a": 5, "b": 0}) == {"a": 40, "b": 0}
    assert split_concurrency(41, {"a": 0, "b": 0}) == {"a": 21, "b": 20}


def test_largest_remainder_adds_up_and_breaks_ties_by_name():
    assert split_concurrency(10, {"a": 1, "b": 1, "c": 1}, floor_slots=0) == {"a": 4, "b": 3, "c": 3}


def test_bad_input_names_what_is_wrong():
    with pytest.raises(ValueError, match="total concurrency"):
        split_concurrency(-1, {"a": 1})
    with pytest.raises(ValueError, match="demand"):
        split_concurrency(5, {"a": -3})


@given(st.integers(0, 2000), st.dictionaries(st.sampled_from("abcdefg"), st.integers(0, 10_000), min_size=1),
       st.integers(0, 20))
def test_shares_add_up_and_respect_floor(total, demand, floor):
    out = split_concurrency(total, demand, floor)
    assert sum(out.values()) == total
    assert set(out) == set(demand)
    busy = [t for t in demand if demand[t] > 0]
    if busy:
        assert all(out[t] == 0 for t in demand if demand[t] == 0)
        if floor * len(busy) <= total:
            assert all(out[t] >= floor for t in busy)
