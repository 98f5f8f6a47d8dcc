"""Operator identity for control requests: signing and verifying (pure), the operators file, the
signed request through the store on both backends, and ``autotune operator-key``."""

from __future__ import annotations

import stat
import uuid

import pymysql
import pytest
import yaml

from autotune.operator_auth import (
    MAX_CLOCK_SKEW_S,
    Operator,
    OperatorsError,
    Refusal,
    Verified,
    add_operator,
    authentic_nonces,
    canonical,
    liveness_window_s,
    load_operators,
    new_key,
    new_nonce,
    parse_operators,
    sign,
    signed_request,
    tuner_alive,
    verify,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
NOW = 1_700_000_000.0
OPS = {
    "olga": Operator("olga", frozenset({"operator"}), KEY),
    "eve": Operator("eve", frozenset({"submitter"}), OTHER_KEY),
}


def _req(**kw):
    base = dict(
        cluster="c1",
        run_id="run-a",
        user="olga",
        action="mode",
        value="shadow",
        key=KEY,
        now_s=NOW,
        ttl_s=120.0,
        nonce="ab" * 16,
    )
    base.update(kw)
    return signed_request(**base)


def _refused(outcome, kind):
    assert isinstance(outcome, Refusal), outcome
    assert outcome.kind == kind, outcome
    return outcome.reason


# -- signing and verifying -------------------------------------------------------------------
def test_a_valid_request_verifies_with_the_roles_of_the_operators_file():
    assert verify(_req(), OPS, "run-a", NOW + 5, set()) == Verified("olga", frozenset({"operator"}))


def test_canonical_form_is_exactly_the_signed_fields_sorted_and_compact():
    req = {**_req(), "roles": '["operator"]', "id": 7, "status": "pending"}
    text = canonical(req).decode()
    assert text == (
        '{"action":"mode","cluster":"c1","expires_s":1700000120.0,"issued_s":1700000000.0,'
        '"nonce":"' + "ab" * 16 + '","run_id":"run-a","user":"olga","value":"shadow"}'
    )
    # the row's other columns are not signed: the stored roles cannot change the outcome
    assert sign(req, KEY) == req["signature"]


def test_times_read_back_with_rounding_noise_still_verify():
    req = _req(now_s=NOW + 0.123456)
    noisy = {**req, "issued_s": req["issued_s"] + 1e-7, "expires_s": req["expires_s"] - 1e-7}
    assert isinstance(verify(noisy, OPS, "run-a", NOW + 1, set()), Verified)


def test_a_forged_signature_is_refused():
    req = {**_req(), "signature": "00" * 32}
    assert "forged" in _refused(verify(req, OPS, "run-a", NOW, set()), "bad_signature")


@pytest.mark.parametrize(
    "field,value",
    [
        ("value", "off"),
        ("action", "override"),
        ("run_id", "run-b"),
        ("expires_s", NOW + 10_000),
        ("nonce", "cd" * 16),
        ("cluster", "c2"),
        ("user", "eve"),
    ],
)
def test_any_altered_field_is_refused_as_forgery(field, value):
    req = {**_req(), field: value}
    _refused(verify(req, OPS, "run-a" if field != "run_id" else "run-b", NOW, set()), "bad_signature")


def test_a_request_signed_with_another_key_is_refused():
    req = _req(key=OTHER_KEY)  # olga's name, eve's key
    _refused(verify(req, OPS, "run-a", NOW, set()), "bad_signature")


def test_an_unknown_user_is_refused():
    req = _req(user="mallory")
    assert "'mallory' is not in the tuner's operators file" in _refused(
        verify(req, OPS, "run-a", NOW, set()), "unknown_user"
    )


def test_roles_come_from_the_operators_file_not_the_request():
    req = {**_req(user="eve", key=OTHER_KEY), "roles": ["operator"]}
    assert verify(req, OPS, "run-a", NOW, set()) == Verified("eve", frozenset({"submitter"}))


def test_an_unsigned_row_is_refused():
    req = {k: v for k, v in _req().items() if k != "signature"}
    _refused(verify({**req, "signature": None}, OPS, "run-a", NOW, set()), "unsigned")
    old_style = {
        "cluster": "c1",
        "user": "olga",
        "action": "mode",
        "value": "off",
        "roles": ["operator"],
        "run_id": None,
        "nonce": None,
        "issued_s": None,
        "expires_s": None,
        "signature": None,
    }
    assert "must be signed" in _refused(verify(old_style, OPS, "run-a", NOW, set()), "unsigned")


def test_a_request_for_another_run_is_refused():
    reason = _refused(verify(_req(run_id="run-a"), OPS, "run-b", NOW, set()), "other_run")
    assert "run-a" in reason and "run-b" in reason


def test_an_expired_request_is_refused():
    req = _req(ttl_s=60)
    assert isinstance(verify(req, OPS, "run-a", NOW + 60, set()), Verified)
    assert "expired 0.1 s ago" in _refused(verify(req, OPS, "run-a", NOW + 60.1, set()), "expired")
    # the fifty-minute-old request of the incident
    _refused(verify(_req(), OPS, "run-a", NOW + 3000, set()), "expired")


def test_a_request_issued_in_the_future_beyond_the_clock_skew_is_refused():
    assert isinstance(verify(_req(now_s=NOW + MAX_CLOCK_SKEW_S), OPS, "run-a", NOW, set()), Verified)
    assert "clock" in _refused(verify(_req(now_s=NOW + MAX_CLOCK_SKEW_S + 1), OPS, "run-a", NOW, set()), "future")


def test_a_replayed_nonce_is_refused():
    req = _req()
    _refused(verify(req, OPS, "run-a", NOW, {req["nonce"]}), "replayed")
    assert isinstance(verify(_req(nonce=new_nonce()), OPS, "run-a", NOW, {req["nonce"]}), Verified)


def test_only_authentic_rows_mark_a_nonce_as_used():
    genuine = _req()
    forged = {**genuine, "value": "off", "signature": "00" * 32}  # someone copying the nonce first
    assert authentic_nonces([forged], OPS) == set()
    assert authentic_nonces([genuine, forged], OPS) == {genuine["nonce"]}


def test_new_nonces_and_keys_are_128_and_256_random_bits():
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100 and all(len(n) == 32 for n in nonces)
    assert len(bytes.fromhex(new_key())) == 32 and new_key() != new_key()


def test_ttl_must_be_positive():
    with pytest.raises(ValueError, match="ttl_s must be > 0"):
        _req(ttl_s=0)


def test_a_tuner_is_alive_while_it_beats():
    run = {"status": "running", "heartbeat_s": NOW, "interval_s": 30.0}
    assert liveness_window_s(30.0) == 90.0 and liveness_window_s(2.0) == 60.0 and liveness_window_s(None) == 60.0
    assert tuner_alive(run, NOW + 90) and not tuner_alive(run, NOW + 91)
    assert not tuner_alive({**run, "status": "ended"}, NOW)


# -- the operators file ----------------------------------------------------------------------
def _parse(doc, keys=None):
    keys = keys or {}

    def read_key(path):
        if path not in keys:
            raise OperatorsError(f"ops.yaml: cannot read key file {path}")
        return keys[path]

    return parse_operators(doc, "ops.yaml", read_key)


def test_operators_file_entries_with_key_files_and_inline_keys():
    ops = _parse(
        {"olga": {"roles": ["operator", "viewer"], "key_file": "olga.key"}, "eve": {"roles": [], "key": KEY.hex()}},
        {"olga.key": OTHER_KEY.hex() + "\n"},
    )
    assert ops["olga"].roles == {"operator", "viewer"} and ops["olga"].key == OTHER_KEY
    assert ops["eve"].roles == frozenset() and ops["eve"].key == KEY
    assert KEY.hex() not in repr(ops["eve"]) and "key=" not in repr(ops["eve"])
    assert _parse(None) == {}


@pytest.mark.parametrize(
    "doc,needle",
    [
        (["olga"], "expected a mapping of user name"),
        ({"olga": "operator"}, "operator 'olga': expected {roles"),
        ({"olga": {"roles": "operator", "key": KEY.hex()}}, "operator 'olga': roles must be a list"),
        ({"olga": {"roles": ["operator"]}}, "operator 'olga': give exactly one of key_file"),
        ({"olga": {"roles": ["operator"], "key": KEY.hex(), "key_file": "k"}}, "give exactly one of key_file"),
        ({"olga": {"roles": ["operator"], "key": "xyz"}}, "operator 'olga': key: the key is not hex"),
        ({"olga": {"roles": ["operator"], "key": "ab" * 8 + "ab"[:0]}}, None),  # 8 bytes: too short
        ({"olga": {"roles": ["operator"], "key": KEY.hex(), "role": "x"}}, "unknown field(s) role"),
        ({"olga": {"roles": ["operator"], "key_file": "missing.key"}}, "cannot read key file missing.key"),
        ({"bad name": {"roles": [], "key": KEY.hex()}}, "user name 'bad name'"),
    ],
)
def test_operators_file_errors_name_the_file_and_the_entry(doc, needle):
    with pytest.raises(OperatorsError) as err:
        _parse(doc)
    assert str(err.value).startswith("ops.yaml")
    assert (needle or "has 8 bytes, at least 16") in str(err.value)


def test_load_operators_resolves_key_files_relative_to_the_file(tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "olga.key").write_text(KEY.hex())
    (tmp_path / "ops.yaml").write_text("olga: {roles: [operator], key_file: keys/olga.key}\n")
    assert load_operators(tmp_path / "ops.yaml")["olga"].key == KEY
    (tmp_path / "bad.yaml").write_text("olga: [unclosed\n")
    with pytest.raises(OperatorsError, match=r"bad.yaml: not valid YAML"):
        load_operators(tmp_path / "bad.yaml")
    with pytest.raises(OperatorsError, match=r"nope.yaml: cannot read it"):
        load_operators(tmp_path / "nope.yaml")


def test_add_operator_creates_a_private_key_and_keeps_it_when_roles_change(tmp_path):
    path = tmp_path / "etc" / "operators.yaml"
    key_path, created = add_operator(path, "olga", ["operator"])
    assert created and key_path == tmp_path / "etc" / "operator-olga.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert yaml.safe_load(path.read_text()) == {"olga": {"roles": ["operator"], "key_file": "operator-olga.key"}}
    key = load_operators(path)["olga"].key
    _, created = add_operator(path, "olga", ["operator", "viewer"])
    assert not created and load_operators(path)["olga"] == Operator("olga", frozenset({"operator", "viewer"}), key)
    _, created = add_operator(path, "olga", ["operator"], rotate=True)
    assert created and load_operators(path)["olga"].key != key
    add_operator(path, "eve", ["submitter"], key_file=tmp_path / "elsewhere" / "eve.key")
    assert set(load_operators(path)) == {"olga", "eve"}
    assert yaml.safe_load(path.read_text())["eve"]["key_file"] == str((tmp_path / "elsewhere" / "eve.key").resolve())
    with pytest.raises(OperatorsError, match="give at least one role"):
        add_operator(path, "olga", [])


# -- the signed request through the store, on both backends ----------------------------------
@pytest.fixture(params=["sqlite", "mariadb"])
def store(request, tmp_path):
    from executors.store import TaskStore
    from tests.test_cluster import MARIADB, START_MARIADB

    if request.param == "sqlite":
        s = TaskStore(f"sqlite:///{tmp_path / 'store.db'}")
        s.create_schema()
        yield s
        s.close()
        return
    name = f"autotune_opauth_{uuid.uuid4().hex[:10]}"
    try:
        admin = pymysql.connect(**MARIADB, connect_timeout=5, autocommit=True)
    except pymysql.err.OperationalError as err:
        pytest.fail(f"MariaDB at 127.0.0.1:3306 unreachable ({err}); start it with: {START_MARIADB}")
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    s = TaskStore(f"mysql+pymysql://root@127.0.0.1:3306/{name}")
    try:
        s.create_schema()
        yield s
    finally:
        s.close()
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def test_a_signed_request_read_back_from_the_store_verifies(store):
    now = 1_761_234_567.891_234  # more digits than a millisecond: the store may not keep them all
    req = _req(cluster="c1", now_s=now, nonce=new_nonce())
    rid = store.request_control(
        "c1",
        "olga",
        [],
        req["action"],
        req["value"],
        now,
        run_id=req["run_id"],
        nonce=req["nonce"],
        issued_s=req["issued_s"],
        expires_s=req["expires_s"],
        signature=req["signature"],
    )
    (row,) = store.pending_control("c1")
    assert row["id"] == rid and row["roles"] == []
    assert verify(row, OPS, "run-a", now + 1, set()) == Verified("olga", frozenset({"operator"}))
    assert store.finished_control_with_nonces("c1", [req["nonce"]]) == []
    store.finish_control(rid, "applied")
    (done,) = store.finished_control_with_nonces("c1", [req["nonce"], "ff" * 16])
    assert done["id"] == rid and authentic_nonces([done], OPS) == {req["nonce"]}
    assert store.finished_control_with_nonces("c2", [req["nonce"]]) == []


def test_tuner_runs_register_beat_and_end(store):
    store.register_tuner("c1", "run-a", NOW, host="h1", pid=11, interval_s=15.0, run_dir="/runs/a")
    store.register_tuner("c1", "run-b", NOW + 100, host="h2", pid=22, interval_s=2.0)
    store.register_tuner("c2", "run-c", NOW + 200, host="h3", pid=33)
    store.tuner_heartbeat("run-a", NOW + 150)
    runs = store.tuner_runs("c1")
    assert [r["run_id"] for r in runs] == ["run-a", "run-b"]  # the last heard from first
    assert runs[0]["started_s"] == NOW and runs[0]["run_dir"] == "/runs/a" and runs[0]["status"] == "running"
    store.tuner_heartbeat("run-a", NOW + 160, "ended")
    assert [(r["run_id"], r["status"], r["heartbeat_s"]) for r in store.tuner_runs("c1")][0] == (
        "run-a",
        "ended",
        NOW + 160,
    )
    store.register_tuner("c1", "run-a", NOW + 300, host="h1", pid=12)  # resumed: it keeps its start
    again = store.tuner_runs("c1")[0]
    assert (again["run_id"], again["status"], again["started_s"], again["pid"]) == ("run-a", "running", NOW, 12)
    with pytest.raises(ValueError, match="running or ended"):
        store.tuner_heartbeat("run-a", NOW, "paused")


# -- autotune operator-key -------------------------------------------------------------------
def test_operator_key_command_creates_the_key_and_the_entry(capsys, tmp_path):
    from autotune.cli import main

    ops = tmp_path / "operators.yaml"
    assert (
        main(["operator-key", "--user", "olga", "--role", "operator", "--role", "viewer", "--operators-file", str(ops)])
        == 0
    )
    out = capsys.readouterr().out
    assert "olga: roles operator, viewer" in out and "new, mode 0600" in out
    assert load_operators(ops)["olga"].roles == {"operator", "viewer"}
    assert main(["operator-key", "--user", "bad name", "--role", "operator", "--operators-file", str(ops)]) == 2
    assert "error: operators file" in capsys.readouterr().err
    ops.write_text("olga: {roles: operator}\n")
    assert main(["operator-key", "--user", "eve", "--role", "x", "--operators-file", str(ops)]) == 2
    err = capsys.readouterr().err
    assert "operator 'olga': roles must be a list" in err and "Traceback" not in err
