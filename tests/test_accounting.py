"""The fault ledger on hand-built stores and execution logs."""

from __future__ import annotations

from executors.accounting import Execution, account, read_execution_log
from executors.store import AttemptRecord, TaskRecord, TaskStore


def _store(tmp_path):
    s = TaskStore(f"sqlite:///{tmp_path / 'a.db'}")
    s.create_schema()
    s.insert_tasks(
        [
            TaskRecord("t", k, "order_processing", "queued", 0.5, None, {}, (), "u", 0.0, 0.0)
            for k in ("a", "b", "c", "d")
        ]
    )
    return s


def ex(task, attempt, start, executor="x1", outcome="succeeded"):
    return Execution("t", task, attempt, "order_processing", executor, start, start + 1, outcome)


def test_ledger_counts_lost_duplicates_and_reruns(tmp_path):
    s = _store(tmp_path)
    s.settle(
        "t",
        [
            AttemptRecord("t", "a", 0, "x1", 1, 2, "succeeded"),
            AttemptRecord("t", "b", 0, "x1", 1, 2, "lost"),
            AttemptRecord("t", "b", 1, "x2", 3, 4, "succeeded"),
            AttemptRecord("t", "c", 0, "x1", 1, 2, "succeeded"),
            AttemptRecord("t", "c", 1, "x2", 3, 4, "succeeded"),
        ],
        [("a", "succeeded", None), ("b", "succeeded", None), ("c", "succeeded", None)],
        [],
        5.0,
    )
    runs = [
        ex("a", 0, 1),
        ex("b", 0, 1),
        ex("b", 1, 3, "x2"),
        ex("c", 0, 1),
        ex("c", 1, 3, "x2"),
        ex("a", 0, 9, "x2"),
    ]  # a ran again under its own attempt number, after every fault: unexplained
    led = account(s, "t", ["a", "b", "c", "d"], runs, fault_times_s=[2.5])
    assert (led.submitted, led.terminal, led.lost) == (4, 3, 1)  # d never ran
    assert led.duplicated_terminal == 1  # c ended twice
    assert led.reran == 2 and led.unexplained_reruns == 1  # b's lost attempt is explained, a's repeat is not
    # an executor orphaned by the fault (a dead driver's actor) explains what it ran after it
    orphan = account(
        s, "t", ["b"], [ex("b", 0, 1, "old"), ex("b", 7, 4, "old"), ex("b", 1, 3, "x2")], fault_times_s=[2.5]
    )
    assert orphan.reran == 1 and orphan.unexplained_reruns == 0
    s.close()


def test_the_log_pairs_starts_with_ends_and_skips_torn_lines(tmp_path):
    log = tmp_path / "x.log"
    log.write_text(
        "start 1.0 t a 0 order_processing x1\nstart 1.5 t b 0 order_processing x1\n"
        "end 2.0 t a 0 succeeded\nstart 3.0 t a 1 order"
    )
    got = sorted(read_execution_log(log), key=lambda e: e.task_id)
    assert [(e.task_id, e.ended_s, e.outcome) for e in got] == [("a", 2.0, "succeeded"), ("b", None, None)]
