"""Task intake: a malformed or unauthorised submission is refused whole, with one clear error."""

from __future__ import annotations

import pytest

from core.config import config_from_dict
from executors.intake import SubmissionError, Submitter, validate_submission

CFG = config_from_dict(
    {
        "intake": {"tenants": ["shop-eu", "shop-us"], "max_payload_bytes": 200, "max_batch": 5},
        "tasks": {"order_processing": {}, "refund": {"required_roles": ["finance"]}},
    }
)
ALICE = Submitter("alice", "shop-eu", frozenset({"operator"}))


def order(tid: str, **kw):
    return {"id": tid, "type": "order_processing", "payload": {"order": tid}, **kw}


def test_valid_set_comes_back_in_dependency_order():
    tasks = validate_submission([order("ship", dependencies=["pay"]), order("pay")], ALICE, CFG)
    assert [t.id for t in tasks] == ["pay", "ship"]
    assert all(t.tenant == "shop-eu" for t in tasks)
    # a dependency on an already accepted task is fine
    assert [t.id for t in validate_submission([order("mail", dependencies=["pay"])], ALICE, CFG, {"pay"})] == ["mail"]


@pytest.mark.parametrize(
    ("tasks", "submitter", "message"),
    [
        ([order("a")], Submitter("eve", "shop-xx"), "unknown tenant 'shop-xx'"),
        ([], ALICE, "at least one task"),
        ("order", ALICE, "a submission is a list of tasks"),
        ([order(str(i)) for i in range(6)], ALICE, "6 tasks in one submission; the limit is 5"),
        ([order("a"), "junk"], ALICE, "task 1: a task is a mapping"),
        ([{"type": "order_processing"}], ALICE, "task 0: id: Field required"),
        ([order("a", cpu="lots")], ALICE, "task 0 ('a'): cpu:"),
        ([order("a", colour="red")], ALICE, "task 0 ('a'): colour: Extra inputs are not permitted"),
        ([{**order("a"), "type": "teleport"}], ALICE, "task 0 ('a'): unknown task type 'teleport'"),
        ([{**order("a"), "type": "refund"}], ALICE, "user 'alice' lacks role(s) ['finance'] for 'refund'"),
        ([order("a", tenant="shop-us")], ALICE, "tenant 'shop-us' is not the submitter's tenant 'shop-eu'"),
        ([order("a", payload={"blob": "x" * 500})], ALICE, "payload is 511 bytes; the limit is 200"),
        ([order("a"), order("a")], ALICE, "task 1 ('a'): id 'a' already used by task 0"),
        ([order("a", dependencies=["ghost"])], ALICE, "ghost"),
        (
            [order("a", dependencies=["c"]), order("b", dependencies=["a"]), order("c", dependencies=["b"])],
            ALICE,
            "dependency cycle",
        ),
    ],
)
def test_bad_submissions_are_refused_with_one_clear_error(tasks, submitter, message):
    with pytest.raises(SubmissionError) as exc:
        validate_submission(tasks, submitter, CFG)
    assert message in str(exc.value)


def test_cycle_error_names_the_cycle_members():
    with pytest.raises(SubmissionError) as exc:
        validate_submission(
            [
                order("a", dependencies=["c"]),
                order("b", dependencies=["a"]),
                order("c", dependencies=["b"]),
                order("d"),
            ],
            ALICE,
            CFG,
        )
    msg = str(exc.value)
    assert all(x in msg for x in ("a", "b", "c")) and "'d'" not in msg and " d " not in msg


def test_role_holder_may_submit_the_restricted_type():
    bob = Submitter("bob", "shop-eu", frozenset({"finance"}))
    assert validate_submission([{**order("r"), "type": "refund"}], bob, CFG)[0].type == "refund"


def test_tenant_names_are_validated_in_config():
    from core.config import ConfigError

    with pytest.raises(ConfigError, match="intake.tenants"):
        config_from_dict({"intake": {"tenants": ["a:b"]}})
