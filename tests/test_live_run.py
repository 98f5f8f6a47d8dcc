"""The online control plane end to end: a short replay on local Ray, with the real Redis queue and
the real MariaDB store, tuned by the shipped PPO model (active and shadow), by the HPA, with metrics
read back from a real Prometheus whose exporter goes away mid-run (fallback and return)."""

from __future__ import annotations

import json
import threading
import time
import uuid

import numpy as np
import pytest
import yaml

from autotune.live_run import LiveRun, RunOptions
from autotune.runtime import EndpointError, resolve_endpoints
from control.tuner import Mode, PermissionDenied
from core.observation import ENV_ID
from tests.conftest import small_config
from tests.prometheus_server import free_port, prometheus_server  # noqa: F401 - a fixture
from tests.test_cluster import mysql_url, redis_client  # noqa: F401 - fixtures

# a short, quick replay: ~25 s of wall time, tasks 20x faster than the reference's
SHORT = dict(
    scenario="worldcup",
    duration_s=24.0,
    peak_rate_per_s=40.0,
    interval_s=2.0,
    time_scale=0.05,
    slots_per_actor=10,
    drain_s=10.0,
)


def _cfg():
    return small_config(intake={"tenants": ["default"]})


def _tenant() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def _live(tmp_path, mysql_url, policy="ppo", mode="active", **kw):
    redis_url = "redis://127.0.0.1:6379/0"
    endpoints = resolve_endpoints(
        tmp_path,
        database_url=mysql_url,
        redis_url=redis_url,
        environ={},
        **{k: kw.pop(k) for k in ("prometheus_url", "metrics_port", "metrics_host") if k in kw},
    )
    opts = RunOptions(
        policy=policy, mode=mode, tenant=_tenant(), cluster_name=f"c{uuid.uuid4().hex[:6]}", **{**SHORT, **kw}
    )
    return LiveRun(_cfg(), opts, endpoints, tmp_path / "run")


def _assert_audit_complete(live, report):
    recorded = live.store.last_decisions(1000, cluster=live.opts.cluster_name)
    assert len(recorded) == len(live.decisions) == report.decisions >= 8
    bounds = live.cfg.cluster
    for r in recorded:
        assert bounds.min_concurrency <= r.applied <= bounds.max_concurrency
        assert r.mode and r.reason and r.who
    assert any(e.action == "tuner_start" for e in live.store.audit(live.opts.tenant, limit=10_000))
    assert (live.run_dir / "summary.json").exists() and (live.run_dir / "intervals.csv").exists()
    assert (live.run_dir / "run.yaml").exists()


def test_active_ppo_replay_tunes_the_live_cluster(ray_local, tmp_path, mysql_url, redis_client):
    with _live(tmp_path, mysql_url) as live:
        assert live.policy is not None and live.policy_problem is None
        report = live.run()
        _assert_audit_complete(live, report)
        assert report.tasks_submitted == live.plan.total > 100
        assert report.tasks_succeeded + report.tasks_failed == report.tasks_submitted  # nothing lost
        assert report.intervals >= 8 and 0.0 <= report.sli_attainment <= 1.0
        assert report.slot_seconds > 0
        policy_decisions = [d for d in live.decisions if d.reason == "policy" or d.controller == "ppo"]
        assert policy_decisions, [d.reason for d in live.decisions]
        # the observation the policy saw is the simulator's feature vector, in its bounds
        obs = np.array(policy_decisions[-1].observation)
        assert obs.shape == (15,) and np.all(np.isfinite(obs))


def test_shadow_mode_applies_the_hpa_and_records_ppo(ray_local, tmp_path, mysql_url, redis_client):
    with _live(tmp_path, mysql_url, mode="shadow") as live:
        report = live.run()
        _assert_audit_complete(live, report)
        decided = [d for d in live.decisions if d.mode == Mode.SHADOW or str(d.mode) == "shadow"]
        assert decided
        assert all(d.controller != "ppo" for d in decided), "shadow applied the candidate's value"
        assert any(d.policy == "ppo" and d.policy_output is not None for d in decided)


def test_stale_prometheus_metrics_fall_back_to_hpa_and_return(
    ray_local,
    tmp_path,
    mysql_url,
    redis_client,
    prometheus_server,
):
    port = free_port()
    prom = prometheus_server([f"127.0.0.1:{port}"])
    # listening on every interface, as a production exporter scraped from another host would
    live = _live(
        tmp_path, mysql_url, prometheus_url=prom.url, metrics_port=port, metrics_host="0.0.0.0", duration_s=40.0
    )
    with live:
        server = live.metrics_server
        stopped = threading.Event()

        def outage():  # the exporter disappears for ~8 s mid-run, then comes back
            time.sleep(14.0)
            server.shutdown()
            server.server_close()
            stopped.set()
            time.sleep(8.0)
            live.restart_exporter()

        t = threading.Thread(target=outage, daemon=True)
        t.start()
        report = live.run()
        t.join()
        _assert_audit_complete(live, report)
    reasons = [d.reason for d in live.decisions]
    fell_back = [i for i, d in enumerate(live.decisions) if d.reason.startswith("fallback:metrics")]
    assert fell_back, reasons
    assert any(d.reason == "policy" for d in live.decisions[fell_back[-1] + 1 :]), reasons  # returned


def test_operator_role_needed_to_change_mode_or_override(ray_local, tmp_path, mysql_url, redis_client):
    with _live(tmp_path, mysql_url, policy="hpa", duration_s=6.0) as live:
        live.start()
        with pytest.raises(PermissionDenied, match="operator"):
            live.tuner.set_mode("off", "mallory", {"submitter"})
        with pytest.raises(PermissionDenied, match="operator"):
            live.tuner.override(50, "mallory", set())
        rec = live.tuner.set_mode("shadow", "olga", {"operator"})
        assert rec.who == "olga"
        rec = live.tuner.override(12, "olga", {"operator"})
        assert live.cluster.target == 12 and rec.applied == 12
        recorded = live.store.last_decisions(10, cluster=live.opts.cluster_name)
        assert {r.who for r in recorded} >= {"olga"}
        audit = [e for e in live.store.audit(live.opts.tenant, limit=100) if e.actor == "olga"]
        assert {e.action for e in audit} == {"mode", "override"}


def test_unreachable_servers_are_one_clear_error(ray_local, tmp_path):
    cfg = _cfg()
    bad = [
        (dict(redis_url="redis://127.0.0.1:1/0"), "127.0.0.1:1"),
        (dict(database_url="mysql+pymysql://root@127.0.0.1:1/x"), "127.0.0.1:1"),
        (dict(prometheus_url="http://127.0.0.1:1"), "127.0.0.1:1"),
    ]
    for kw, where in bad:
        endpoints = resolve_endpoints(tmp_path, environ={}, **kw)
        live = LiveRun(cfg, RunOptions(tenant=_tenant(), **SHORT), endpoints, tmp_path / "run")
        with pytest.raises(EndpointError, match=where):
            live.open()
        live.close()


def test_live_env_steps_through_the_tuner_with_the_simulators_spaces(ray_local, tmp_path, prometheus_server):
    """The embedded store and queue, observations read back from a real Prometheus."""
    from envs.live_env import LiveScalingEnv
    from envs.scaling_env import ConcurrencyScalingEnv
    from models import DEFAULT_MODEL_DIR, greedy_action, load_model

    port = free_port()
    prom = prometheus_server([f"127.0.0.1:{port}"])
    endpoints = resolve_endpoints(tmp_path, environ={}, prometheus_url=prom.url, metrics_port=port)
    opts = RunOptions(
        policy="ppo", tenant=_tenant(), cluster_name=f"c{uuid.uuid4().hex[:6]}", **{**SHORT, "duration_s": 10.0}
    )
    sim_env = ConcurrencyScalingEnv(_cfg())
    model, _ = load_model(DEFAULT_MODEL_DIR, ENV_ID, tuple(_cfg().control.factors))
    with LiveRun(_cfg(), opts, endpoints, tmp_path / "run") as live:
        env = LiveScalingEnv(live)
        assert env.action_space == sim_env.action_space and env.observation_space == sim_env.observation_space
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        read_back = []
        for _ in range(4):
            obs, reward, terminated, truncated, info = env.step(greedy_action(model, obs))
            assert env.observation_space.contains(obs) and np.isfinite(reward)
            rec = info["decision"]
            assert rec.policy == "agent" and rec.applied == live.cluster.target
            read_back.append(info["metrics_problem"] is None and info["snapshot"] is not None)
        assert any(read_back), "no observation came back through Prometheus"
        assert type(live.source).__name__ == "PrometheusSource"
        assert len(live.store.last_decisions(100, cluster=opts.cluster_name)) == 4
        with pytest.raises(Exception, match="runs once"):
            env.reset()


def _embedded_live(tmp_path, name="run", cluster=None, **kw):
    endpoints = resolve_endpoints(tmp_path, environ={})  # the embedded default: SQLite in tmp_path
    opts = RunOptions(
        policy="hpa",
        tenant=kw.pop("tenant", _tenant()),
        cluster_name=cluster or f"c{uuid.uuid4().hex[:6]}",
        **{**SHORT, "duration_s": 6.0, **kw},
    )
    return LiveRun(_cfg(), opts, endpoints, tmp_path / name)


def _control(capsys, live, *args):
    """``autotune control`` in-process against the run's database; (exit status, stdout, stderr)."""
    from autotune.cli import main

    db = ["--database-url", live.endpoints.database_url, "--cluster", live.opts.cluster_name]
    code = main(["control", *args, *db])
    out, err = capsys.readouterr()
    return code, out, err


def _request_id(out: str) -> int:
    import re

    return int(re.search(r"request (\d+) ", out).group(1))


def _refusals(live):
    return {
        e.detail["request"]: e for e in live.store.audit(live.opts.tenant, limit=1000) if e.action == "control_refused"
    }


def test_a_signed_request_from_autotune_control_reaches_the_running_tuner(ray_local, tmp_path, monkeypatch):
    """The tuner runs (``LiveRun.run``); ``autotune control``, another process, signs with the key the
    run made for the user who started it, binds the request to the running tuner and waits for it."""
    import subprocess
    import sys
    from pathlib import Path

    monkeypatch.delenv("AUTOTUNE_OPERATOR_KEY_FILE", raising=False)
    live = _embedded_live(tmp_path, user="olga", duration_s=24.0)
    results: list[subprocess.CompletedProcess] = []

    def operator() -> None:
        from executors.store import TaskStore

        watcher = TaskStore(live.endpoints.database_url)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not any(
                r["status"] == "running" for r in watcher.tuner_runs(live.opts.cluster_name)
            ):
                time.sleep(0.2)
        finally:
            watcher.close()
        db = ["--database-url", live.endpoints.database_url, "--cluster", live.opts.cluster_name, "--wait-s", "30"]
        for args in (
            ["--override", "12", "--user", "olga"],
            ["--mode", "shadow", "--user", "olga", "--role", "operator"],
        ):
            results.append(
                subprocess.run(
                    [sys.executable, "-m", "autotune.cli", "control", *args, *db],
                    cwd=Path(__file__).resolve().parents[1],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
            )

    with live:
        assert (live.run_dir / "operators.yaml").exists() and "operator-olga.key" in live.operators_note
        t = threading.Thread(target=operator, daemon=True)
        t.start()
        live.run()
        t.join()
        runs = live.store.tuner_runs(live.opts.cluster_name)
    assert len(results) == 2, results
    for proc in results:
        assert proc.returncode == 0, proc.stderr
        assert "applied by the running tuner" in proc.stdout and f"for run {live.run_id}" in proc.stdout
    assert "--role is ignored" in results[1].stderr
    overrides = [d for d in live.decisions if d.reason == "override"]
    assert [(d.who, d.applied) for d in overrides] == [("olga", 12)]
    assert any(d.reason == "mode:active->shadow" and d.who == "olga" for d in live.decisions)
    assert str(live.tuner.state.mode) == "shadow"
    assert [(r["run_id"], r["status"]) for r in runs] == [(live.run_id, "running")]  # read before it closed
    from executors.store import TaskStore

    after = TaskStore(live.endpoints.database_url)
    try:
        assert after.tuner_runs(live.opts.cluster_name)[0]["status"] == "ended"  # closing marked it
    finally:
        after.close()


def test_forged_replayed_expired_and_unsigned_requests_are_refused_and_audited(
    ray_local, tmp_path, capsys, monkeypatch
):
    from autotune.cli import main
    from autotune.operator_auth import load_operators, new_nonce, signed_request

    monkeypatch.delenv("AUTOTUNE_OPERATOR_KEY_FILE", raising=False)
    ops = tmp_path / "etc" / "operators.yaml"
    assert main(["operator-key", "--user", "olga", "--role", "operator", "--operators-file", str(ops)]) == 0
    assert main(["operator-key", "--user", "eve", "--role", "submitter", "--operators-file", str(ops)]) == 0
    keys = {u: op.key for u, op in load_operators(ops).items()}
    capsys.readouterr()
    with _embedded_live(tmp_path, operators_file=str(ops)) as live:
        live.start()
        cluster, store = live.opts.cluster_name, live.store

        def insert(req):
            fields = {k: req[k] for k in ("run_id", "nonce", "issued_s", "expires_s", "signature")}
            return store.request_control(
                cluster, req["user"], ["operator"], req["action"], req["value"], time.time(), **fields
            )

        def sign(user="olga", **kw):
            base = dict(
                cluster=cluster,
                run_id=live.run_id,
                user=user,
                action="mode",
                value="off",
                key=keys[user],
                now_s=time.time(),
                nonce=new_nonce(),
            )
            return signed_request(**{**base, **kw})

        code, out, err = _control(
            capsys,
            live,
            "--mode",
            "shadow",
            "--user",
            "olga",
            "--key-file",
            str(ops.parent / "operator-olga.key"),
            "--wait-s",
            "0",
        )
        assert code == 0 and "queued" in out, err
        genuine = _request_id(out)
        code, out, err = _control(
            capsys,
            live,
            "--mode",
            "off",
            "--user",
            "eve",
            "--key-file",
            str(ops.parent / "operator-eve.key"),
            "--wait-s",
            "0",
        )
        assert code == 0, err
        no_role = _request_id(out)
        forged = insert({**sign(), "value": "active"})  # altered after signing
        mallory = insert(sign(key=b"m" * 32))  # olga's name, a key the tuner does not know
        expired = insert(sign(now_s=time.time() - 300, ttl_s=120))
        unsigned = store.request_control(cluster, "olga", ["operator"], "mode", "off", time.time())  # the old way
        assert live.apply_control_requests() == 6
        assert str(live.tuner.state.mode) == "shadow"  # only the genuine request acted
        assert store.control_request(genuine)["status"] == "applied"
        refused = _refusals(live)
        assert {rid: e.detail["kind"] for rid, e in refused.items()} == {
            no_role: "permission",
            forged: "bad_signature",
            mallory: "bad_signature",
            expired: "expired",
            unsigned: "unsigned",
        }
        assert "needs the 'operator' role" in refused[no_role].detail["reason"]
        for rid, e in refused.items():
            row = store.control_request(rid)
            assert row["status"] == "refused" and row["detail"] == e.detail["reason"]
            assert e.detail["action"] == "mode" and e.detail["user"] == row["user"] and e.subject == cluster

        # a copy of the applied row: caught by the tuner's memory, and by the table after a restart
        row = store.control_request(genuine)
        copy = insert(row)
        assert live.apply_control_requests() == 1
        live._seen_nonces.clear()  # as a resumed tuner would start
        second = insert(row)
        assert live.apply_control_requests() == 1
        refused = _refusals(live)
        assert refused[copy].detail["kind"] == refused[second].detail["kind"] == "replayed"
        assert store.pending_control(cluster) == []
        olga = [d for d in live.decisions if d.who == "olga"]
        assert [d.reason for d in olga] == ["mode:active->shadow"]  # applied once


def test_no_running_tuner_refuses_up_front_and_a_new_run_refuses_an_earlier_runs_request(
    ray_local, tmp_path, capsys, monkeypatch
):
    from autotune.cli import main

    monkeypatch.delenv("AUTOTUNE_OPERATOR_KEY_FILE", raising=False)
    ops = tmp_path / "operators.yaml"
    assert main(["operator-key", "--user", "olga", "--role", "operator", "--operators-file", str(ops)]) == 0
    key = ["--user", "olga", "--key-file", str(tmp_path / "operator-olga.key")]
    cluster, tenant = f"c{uuid.uuid4().hex[:6]}", _tenant()
    first = _embedded_live(tmp_path, "run1", cluster=cluster, tenant=tenant, operators_file=str(ops))
    with first:
        code, out, err = _control(capsys, first, "--mode", "off", *key)
        assert code == 2 and f"no tuner of cluster {cluster!r} is running (none was ever registered" in err, err
        assert "nothing was queued" in err and first.store.control_request(1) is None
        first.start()
        first.store.tuner_heartbeat(first.run_id, time.time() - 1000)  # it stopped beating: as good as gone
        code, out, err = _control(capsys, first, "--mode", "off", *key)
        import re

        seen = re.search(r"last seen (\d+) s ago, run (\w+) on .*, stopped beating", err)
        assert code == 2 and seen and int(seen.group(1)) >= 1000 and seen.group(2) == first.run_id, err
        assert first.store.control_request(1) is None
        first.store.tuner_heartbeat(first.run_id, time.time())
        code, out, err = _control(capsys, first, "--mode", "off", *key, "--wait-s", "0")
        assert code == 0 and f"for run {first.run_id}" in out and "queued" in out, err
        earlier = _request_id(out)
    # the tuner has gone with the request still queued; asking again is refused, nothing queued
    code, out, err = _control(capsys, first, "--mode", "off", *key)
    assert code == 2 and f"run {first.run_id}" in err and ", ended" in err, err
    second = _embedded_live(tmp_path, "run2", cluster=cluster, tenant=tenant, operators_file=str(ops))
    with second:
        assert second.store.control_request(earlier + 1) is None
        second.start()
        assert second.apply_control_requests() == 1
        assert str(second.tuner.state.mode) == "active"
        refusal = _refusals(second)[earlier]
        assert refusal.detail["kind"] == "other_run" and first.run_id in refusal.detail["reason"]
        assert second.store.control_request(earlier)["status"] == "refused"


def test_fine_tune_the_shipped_policy_online(ray_local, tmp_path):
    """A few PPO updates from live intervals, through the guard; the result loads like any model."""
    import torch

    from models import DEFAULT_MODEL_DIR, load_model
    from training.online import fine_tune_online

    endpoints = resolve_endpoints(tmp_path, environ={})  # the embedded default
    opts = RunOptions(
        policy="ppo", tenant=_tenant(), cluster_name=f"c{uuid.uuid4().hex[:6]}", **{**SHORT, "duration_s": 12.0}
    )
    factors = tuple(_cfg().control.factors)
    before, _ = load_model(DEFAULT_MODEL_DIR, ENV_ID, factors)
    with LiveRun(_cfg(), opts, endpoints, tmp_path / "run") as live:
        with pytest.raises(ValueError, match="exceed the replay's 6 control intervals"):
            fine_tune_online(live, DEFAULT_MODEL_DIR, tmp_path / "ft", steps=50)
        out = fine_tune_online(live, DEFAULT_MODEL_DIR, tmp_path / "ft", steps=4, n_steps=4, learning_rate=1e-3)
        decisions = live.store.last_decisions(100, cluster=opts.cluster_name)
    after, _ = load_model(out, ENV_ID, factors)
    changed = [
        not torch.equal(a, b) for a, b in zip(before.policy.state_dict().values(), after.policy.state_dict().values())
    ]
    assert any(changed), "no parameter moved"
    assert len(decisions) >= 4 and all(d.policy == "agent" for d in decisions[:4])  # every step audited
    meta = yaml.safe_load((out / "run.yaml").read_text())
    assert meta["steps"] == 4 and meta["started_from"].endswith(".zip") and meta["git_revision"]


def test_a_request_submitted_from_another_process_runs_on_the_live_cluster(ray_local, tmp_path, capsys, monkeypatch):
    """``autotune submit --text`` writes into the running cluster's database and queue; the running
    driver claims, runs and settles it like a replayed task."""
    from autotune.cli import main

    for var in ("AUTOTUNE_LLM_BASE_URL", "AUTOTUNE_LLM_MODEL", "DEEPSEEK_API_KEY", "AUTOTUNE_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    endpoints = resolve_endpoints(tmp_path, environ={})  # the embedded default
    opts = RunOptions(
        policy="hpa",
        tenant="default",
        cluster_name=f"c{uuid.uuid4().hex[:6]}",
        **{**SHORT, "duration_s": 6.0, "peak_rate_per_s": 5.0},
    )
    with LiveRun(_cfg(), opts, endpoints, tmp_path / "run") as live:
        live.start()
        code = main(
            [
                "submit",
                "--text",
                "Please process order ORD-1029384 urgently",
                "--yes",
                "--json",
                "--backend",
                "offline",
                "--database-url",
                endpoints.database_url,
            ]
        )
        out = capsys.readouterr().out
        assert code == 0, out
        task_id = json.loads(out.splitlines()[-1])["submitted"]["task_id"]
        deadline = time.monotonic() + 30
        rec = None
        while time.monotonic() < deadline:
            live.pump(time.time() + 0.5)
            rec = live.store.get_task("default", task_id)
            if rec.status in ("succeeded", "failed"):
                break
        assert rec is not None and rec.status in ("succeeded", "failed"), rec
        assert rec.payload["order_id"] == "ORD-1029384" and live.store.attempts_for("default", task_id)
