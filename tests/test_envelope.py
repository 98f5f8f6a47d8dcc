"""The queue entry is a doorbell: what a claimed entry becomes is decided from the store's record."""

from __future__ import annotations

import pytest

from executors.envelope import MAX_ATTEMPT, Drop, Reject, Run, check_delivery, entry
from executors.queue import Delivery, decode_delivery
from executors.store import ClaimView

TYPES = {"order_processing", "wire_money"}


def view(status="queued", attempt=0, ttype="order_processing", payload=None):
    return ClaimView("t1", ttype, status, attempt, payload or {}, None, 1.0)


def delivery(payload=None, deliveries=1, error=None):
    return Delivery("t1", 1, entry(0) if payload is None else payload, "m-1", deliveries, error)


def test_an_entry_carries_only_the_attempt():
    assert entry(3) == {"attempt": 3}


@pytest.mark.parametrize(
    "stored_payload", [{"type": "wire_money"}, {"noop": True}, {"attempt": "abc"}, {"type": ["x"]}, {"attempt": 1e20}]
)
def test_payload_keys_are_data_not_control(stored_payload):
    # the store's record says order_processing, attempt 0: that is what runs, whatever the payload holds
    assert check_delivery(delivery(), view(payload=stored_payload), TYPES) == Run(0)


def test_redelivery_is_a_new_attempt_and_never_reuses_a_stored_number():
    assert check_delivery(delivery(deliveries=3), view(), TYPES) == Run(2)
    assert check_delivery(delivery(entry(1)), view(attempt=4), TYPES) == Run(4)  # older entry than the store


@pytest.mark.parametrize(
    "status,why",
    [
        ("succeeded", "already succeeded"),
        ("failed", "already failed"),
        ("waiting", "dependencies"),
        ("retrying", "retry is scheduled"),
    ],
)
def test_entries_of_tasks_not_due_to_run_are_dropped(status, why):
    v = check_delivery(delivery(), view(status=status), TYPES)
    assert isinstance(v, Drop) and why in v.reason


@pytest.mark.parametrize(
    "payload,why",
    [
        ({"attempt": "abc"}, "'abc'"),
        ({"attempt": 1e20}, "1e+20"),
        ({"attempt": True}, "True"),
        ({"attempt": -1}, "-1"),
        ({"attempt": MAX_ATTEMPT + 1}, str(MAX_ATTEMPT + 1)),
    ],
)
def test_a_bad_attempt_is_dead_lettered_and_fails_the_task(payload, why):
    v = check_delivery(delivery(payload), view(), TYPES)
    assert isinstance(v, Reject) and why in v.reason and v.fail_task


def test_unknown_task_unregistered_type_and_undecodable_entries_are_rejected():
    v = check_delivery(delivery(), None, TYPES)
    assert isinstance(v, Reject) and "no task 't1' in the store" in v.reason and not v.fail_task
    v = check_delivery(delivery(), view(ttype="ghost"), TYPES)
    assert isinstance(v, Reject) and "'ghost' is not registered" in v.reason and v.fail_task
    bad = decode_delivery("t1", 1, b"{not json", "m-1", 1)
    v = check_delivery(bad, view(), TYPES)
    assert isinstance(v, Reject) and "not JSON" in v.reason and v.fail_task
    # already finished: the dead letter keeps the entry, the task's terminal status stays
    assert check_delivery(bad, view(status="succeeded"), TYPES) == Reject(bad.error, False)


@pytest.mark.parametrize(
    "raw,why",
    [(b"[1, 2]", "not a JSON object"), (b"\xff\xfe", "not JSON"), (None, "not JSON"), (b"42", "not a JSON object")],
)
def test_decoding_never_raises(raw, why):
    d = decode_delivery("t1", 0, raw, "9", 2)
    assert d.payload == {} and why in d.error and d.deliveries == 2
    assert decode_delivery(None, 0, b"{}", "9", 1).error == "the entry has no task id"
    assert decode_delivery("t1", 0, b'{"attempt": 2}', "9", 1) == Delivery("t1", 0, {"attempt": 2}, "9", 1)
