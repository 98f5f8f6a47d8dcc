import numpy as np
import pytest

from core.domain import Task, task_priority
from core.priority import priority_class
from executors.replay import Replay, plan_replay, task_fields
from tests.conftest import small_config


def test_plan_is_the_simulators_arrivals_fixed_by_seed():
    cfg = small_config(
        simulation={"scenario": "worldcup", "duration_s": 120.0, "peak_rate_per_s": 20.0, "time_compression": 720.0}
    )
    a, b, c = (plan_replay(cfg, seed=s) for s in (1, 1, 2))
    assert np.array_equal(a.arrivals, b.arrivals) and not np.array_equal(a.arrivals, c.arrivals)
    assert a.arrivals.shape == (240, 3)
    # Poisson counts around the profile's rate: the mean over the run is within 5 sigma
    expected = a.rates_per_s.sum() * a.tick_s
    assert abs(a.total - expected) < 5 * np.sqrt(expected)


@pytest.mark.parametrize("cls_", [0, 1, 2])
def test_drawn_class_becomes_fields_that_score_into_it(cls_):
    now = 1_000_000.0
    task = Task(id="t", type="order_processing", **task_fields(cls_, now))
    assert priority_class(task_priority(task, now, cpu_free=4.0, memory_mb_free=4096.0)) == cls_


def test_replay_submits_each_tick_once_as_time_passes():
    cfg = small_config(simulation={"scenario": "constant", "duration_s": 10.0, "peak_rate_per_s": 8.0})
    plan = plan_replay(cfg, seed=0)
    t = [100.0]
    replay = Replay(plan, clock=lambda: t[0])
    got = replay.due()  # tick 0
    assert len(got) == int(plan.arrivals[0].sum())
    t[0] += 2.2  # ticks 1..4 due
    got += replay.due()
    assert len(got) == int(plan.arrivals[:5].sum())
    t[0] += 100.0
    got += replay.due()
    assert replay.done and len(got) == plan.total
    assert len({g["id"] for g in got}) == plan.total
    assert replay.due() == []


def test_unknown_task_type_is_refused():
    with pytest.raises(ValueError, match="not registered"):
        plan_replay(small_config(), task_type="nope")
