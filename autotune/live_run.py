"""``autotune run``: a load profile replayed against the live executors while a policy tunes them.

Assembles the real parts (local or remote Ray, the store, the live queue, the exporter, a metrics
source), replays the profile's arrivals as order-processing tasks (:mod:`executors.replay`), runs the
cluster's dispatch loop, and once per control interval lets :class:`autotune.tuning_loop.TuningLoop`
decide. The run folder receives ``intervals.csv`` (one row per control interval: the snapshot and
its SLIs, appended as they happen), ``summary.json`` (the SLI and cost report), ``run.yaml``
(resolved config, command, git revision; written at the start and again at the end) and
``run_state.json`` (what a new driver needs to continue the run: :mod:`autotune.run_state`);
decisions go to the store's ``decisions`` table (``autotune decisions``).

24/7 behaviour: a Redis or database outage shorter than ``cluster.outage_budget_s`` is waited out
(the cluster pauses dispatch and keeps the running tasks' results; arrivals are held and submitted
when the store is back; the tuner holds the concurrency, as for stale metrics, and the dashboard
says so); a longer one ends the run with its report. A driver that crashed is continued by
``autotune run --resume RUN_DIR`` (:meth:`LiveRun.resuming`): same run id, store and queue, every
unfinished task picked up, the replay continued where it stopped, one report for the whole run,
counting only the run's own tasks.
"""

from __future__ import annotations

import csv
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotune.dashboard import DashboardState
from autotune.run_state import (
    RunState,
    append_interval,
    check_resumable,
    interval_row,
    intervals_header,
    read_intervals,
    read_state,
    this_driver,
    write_state,
)
from autotune.runtime import EndpointError, Endpoints, start_ray
from control.policies import Policy
from control.tuner import DecisionRecord
from core.config import AutotuneConfig, with_overrides
from core.domain import ClusterSnapshot, sli_status

log = logging.getLogger(__name__)

TRACE_DAY_S = 86_400.0


@dataclass(frozen=True)
class RunOptions:
    """What to replay and who tunes. ``duration_s`` of wall time replays one day of the scenario."""

    policy: str = "ppo"
    mode: str = "active"
    scenario: str = "worldcup"
    duration_s: float = 300.0
    peak_rate_per_s: float = 60.0
    interval_s: float = 15.0
    initial_concurrency: int | None = None
    slots_per_actor: int = 25
    time_scale: float = 1.0  # service times x this (smaller: faster tasks, for tests)
    tenant: str = "default"
    seed: int = 0
    drain_s: float = 60.0  # after the replay, wait at most this long for the last tasks
    cluster_name: str = "autotune"
    user: str = "operator"  # who started the run: audited with the mode it started in
    execution_log: str | None = None  # executors log each execution here (the chaos benchmark counts them)
    outage_budget_s: float | None = None  # default: cluster.outage_budget_s
    operators_file: str | None = None  # who may steer it (autotune.operator_auth); None: the run makes one

    def apply_to(self, cfg: AutotuneConfig) -> AutotuneConfig:
        """The config the run uses: the replay's profile and the control interval."""
        compression = TRACE_DAY_S / self.duration_s
        overrides: dict[str, Any] = {
            "simulation.scenario": self.scenario,
            "simulation.duration_s": float(self.duration_s),
            "simulation.peak_rate_per_s": float(self.peak_rate_per_s),
            "simulation.time_compression": compression,
            "control.interval_s": float(self.interval_s),
        }
        if self.tenant not in cfg.intake.tenants:
            overrides["intake.tenants"] = [*cfg.intake.tenants, self.tenant]
        return with_overrides(cfg, overrides, source="autotune run options")


@dataclass
class RunReport:
    policy: str
    mode: str
    intervals: int = 0
    sli_attainment: float = 0.0  # share of control intervals meeting all three SLIs
    success_rate_ok_share: float = 0.0
    processing_time_ok_share: float = 0.0
    backlog_ok_share: float = 0.0
    tasks_submitted: int = 0
    tasks_succeeded: int = 0
    tasks_failed: int = 0
    tasks_unfinished: int = 0
    mean_processing_time_s: float = 0.0
    worst_p99_processing_time_s: float = 0.0
    max_backlog: int = 0
    slot_seconds: float = 0.0  # cost: provisioned executor slot-seconds
    mean_concurrency: float = 0.0
    fallback_decisions: int = 0
    decisions: int = 0
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def summarise(
    policy: str,
    mode: str,
    snaps: list[ClusterSnapshot],
    cfg: AutotuneConfig,
    counts: dict[str, int],
    submitted: int,
    decisions: list[Any],
    wall_s: float,
) -> RunReport:
    """The SLI and cost report of a run (pure)."""
    r = RunReport(policy, mode, intervals=len(snaps), tasks_submitted=submitted, wall_s=wall_s)
    r.tasks_succeeded = counts.get("succeeded", 0)
    r.tasks_failed = counts.get("failed", 0)
    r.tasks_unfinished = sum(v for k, v in counts.items() if k not in ("succeeded", "failed"))
    r.decisions = len(decisions)
    r.fallback_decisions = sum(1 for d in decisions if getattr(d, "fallback", False))
    if not snaps:
        return r
    status = [sli_status(s, cfg.slis) for s in snaps]
    n = len(snaps)
    r.sli_attainment = sum(s.all_ok for s in status) / n
    r.success_rate_ok_share = sum(s.success_rate_ok for s in status) / n
    r.processing_time_ok_share = sum(s.processing_time_ok for s in status) / n
    r.backlog_ok_share = sum(s.backlog_ok for s in status) / n
    ended = sum(s.succeeded + s.failed for s in snaps)
    r.mean_processing_time_s = (
        sum(s.mean_processing_time_s * (s.succeeded + s.failed) for s in snaps) / ended if ended else 0.0
    )
    r.worst_p99_processing_time_s = max(s.p99_processing_time_s for s in snaps)
    r.max_backlog = max(s.max_backlog for s in snaps)
    r.slot_seconds = sum(s.provisioned_slot_s for s in snaps)
    span = sum(s.interval_s for s in snaps)
    r.mean_concurrency = r.slot_seconds / span if span else 0.0
    return r


class LiveRun:
    """One run of the live system; :meth:`open`, :meth:`run`, :meth:`close` (or use ``with``)."""

    MAX_HELD_ARRIVALS = 200_000  # arrivals held while the store is down; beyond, they are refused (counted)

    def __init__(
        self,
        cfg: AutotuneConfig,
        opts: RunOptions,
        endpoints: Endpoints,
        run_dir: Path,
        clock: Callable[[], float] = time.time,
        resume: RunState | None = None,
    ) -> None:
        self.opts = opts
        self.cfg = opts.apply_to(cfg)
        self.endpoints = endpoints
        self.run_dir = Path(run_dir)
        self.clock = clock
        self.resume_state = resume
        self.run_id = resume.run_id if resume is not None else uuid.uuid4().hex[:16]
        self.snapshots: list[ClusterSnapshot] = []
        self.decisions: list[Any] = []
        self.earlier_decisions = (resume.decisions, resume.fallback_decisions) if resume is not None else (0, 0)
        self._held_arrivals: list[dict] = []  # replayed arrivals the store could not take yet
        self._maybe_stored = False  # a submission of the held arrivals failed: some may be stored already
        self.arrivals_refused = 0
        self._unrecorded: list[Any] = []  # decisions the store could not take yet
        self.ended_by: str | None = None
        self.recovered: dict[str, Any] = {}
        self.dashboard = DashboardState(
            "autotune run",
            opts.policy,
            opts.mode,
            duration_s=opts.duration_s,
            slo_success=self.cfg.slis.success_rate_min,
            slo_mean_s=self.cfg.slis.mean_processing_time_s_max,
            slo_backlog=self.cfg.slis.backlog_max,
        )
        self._opened: list[Callable[[], None]] = []

    @classmethod
    def resuming(cls, run_dir: Path, endpoints: Endpoints, clock: Callable[[], float] = time.time) -> LiveRun:
        """The run in ``run_dir`` whose driver died, continued by this process: its options and
        resolved config (``run.yaml``), run id and replay. Raises
        :class:`~autotune.run_state.ResumeError` if it finished, its driver still runs, or the
        endpoints differ from the run's."""
        import yaml

        from autotune.run_state import ResumeError
        from core.config import ConfigError, config_from_dict

        state = read_state(run_dir)
        check_resumable(run_dir, state, endpoints.describe())
        try:
            meta = yaml.safe_load((Path(run_dir) / "run.yaml").read_text(encoding="utf-8"))
            cfg = config_from_dict(meta["config"], source=f"{run_dir}/run.yaml")
            opts = RunOptions(**state.options)
        except (OSError, KeyError, TypeError, yaml.YAMLError, ConfigError) as err:
            raise ResumeError(f"--resume {run_dir}: run.yaml or the recorded options are unusable ({err})") from None
        return cls(cfg, opts, endpoints, run_dir, clock=clock, resume=state)

    # -- assembly ----------------------------------------------------------------------------
    def open(self) -> LiveRun:
        from autotune.tuning_loop import TuningLoop, load_policy
        from executors.cluster import TaskCluster
        from executors.metrics import ClusterMetrics
        from executors.metrics_source import MetricsSource, PrometheusSource, RegistrySource
        from executors.pool import ExecutorPool
        from executors.queue import QueueError, open_queue
        from executors.replay import Replay, plan_replay
        from executors.store import StoreError, TaskStore

        opts, cfg, ep = self.opts, self.cfg, self.endpoints
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._open_operators()  # a bad operators file stops the run before anything is started
        self.policy, self.policy_problem = load_policy(opts.policy, cfg, opts.seed)
        self.plan = plan_replay(cfg, seed=opts.seed)
        try:
            self.store = TaskStore(ep.database_url, connect_retries=2)
            self.store.create_schema()
        except StoreError as err:
            raise EndpointError(
                f"database {err}; check --database-url / AUTOTUNE_DATABASE_URL, or leave it "
                "unset for the embedded SQLite"
            ) from None
        self._opened.append(self.store.close)
        try:
            queue = open_queue(ep.queue_url, opts.tenant)
        except QueueError as err:
            raise EndpointError(f"live queue: {err}") from None
        self.metrics = ClusterMetrics()
        self.metrics_server = None
        if ep.metrics_port:
            self.restart_exporter()
            self._opened.append(lambda: self.metrics_server and self.metrics_server.shutdown())
        if ep.prometheus_url:
            self.source: MetricsSource = PrometheusSource(ep.prometheus_url, staleness_s=max(30.0, 2 * opts.interval_s))
            try:
                reachable = self.source._prom.check_prometheus_connection()
            except Exception as err:
                reachable, why = False, str(err)
            else:
                why = "no answer to /"
            if not reachable:
                raise EndpointError(
                    f"Prometheus at {ep.prometheus_url} unreachable: {why}; check "
                    "--prometheus-url / AUTOTUNE_PROMETHEUS_URL, or leave it unset to read the "
                    "in-process exporter"
                )
        else:
            self.source = RegistrySource(self.metrics, clock=self.clock)
        self.ray_used = start_ray(ep.ray_address, namespace=f"autotune-{opts.cluster_name}")
        if self.ray_used == "local":  # started for this run: it ends with the run, no process left behind
            from autotune.local_ray import stop_local_ray

            self._opened.append(stop_local_ray)
        initial = opts.initial_concurrency or cfg.task.concurrency
        queues = {opts.tenant: queue}

        def pool_for(tenant: str) -> ExecutorPool:
            return ExecutorPool(
                cfg,
                namespace=tenant,
                slots_per_actor=opts.slots_per_actor,
                time_scale=opts.time_scale,
                seed=opts.seed,
                execution_log=opts.execution_log,
            )

        self.cluster = TaskCluster(
            cfg,
            self.store,
            lambda t: queues.get(t) or open_queue(ep.queue_url, t),
            pool_for,
            concurrency=initial,
            metrics=self.metrics,
            clock=self.clock,
            seed=opts.seed,
            run_id=self.run_id,
            outage_budget_s=opts.outage_budget_s,
        )
        self._opened.append(self.cluster.close)
        prefix = (
            self.resume_state.id_prefix
            if self.resume_state is not None
            else f"{opts.cluster_name}-{int(self.clock())}-"
        )
        self.replay = Replay(self.plan, clock=self.clock, id_prefix=prefix)
        self.tuner = TuningLoop(
            cfg,
            source=self.source,
            current=lambda: self.cluster.target,
            apply=self.cluster.set_concurrency,
            policy=self.policy,
            policy_problem=self.policy_problem,
            mode=opts.mode,
            record=self._record,
            clock=self.clock,
        )
        return self

    def _open_operators(self) -> None:
        """Who may steer this run: ``opts.operators_file``, else an ``operators.yaml`` made in the run
        folder naming the user who started the run (role operator) with a new key beside it."""
        from autotune.operator_auth import add_operator, load_operators
        from control.tuner import OPERATOR_ROLE

        self._seen_nonces: set[str] = set()
        if self.opts.operators_file:
            self.operators = load_operators(self.opts.operators_file)
            self.operators_note = (
                f"operators: {', '.join(sorted(self.operators)) or 'none'} from {self.opts.operators_file}"
            )
            return
        path = self.run_dir / "operators.yaml"
        key_path, _ = add_operator(
            path, self.opts.user, [OPERATOR_ROLE], self.run_dir / f"operator-{self.opts.user}.key"
        )
        self.operators = load_operators(path)
        self.operators_note = (
            f"operators: {self.opts.user} ({OPERATOR_ROLE}) in {path}, key {key_path} (mode "
            f"0600); `autotune control --user {self.opts.user}` signs with it"
        )

    def restart_exporter(self) -> None:
        """Serve ``/metrics`` on the configured port (again, after it was shut down)."""
        port, host = self.endpoints.metrics_port, self.endpoints.metrics_host
        assert port is not None, "restart_exporter without a metrics port"
        try:
            self.metrics_server, _ = self.metrics.serve(port, addr=host)
        except OSError as err:
            raise EndpointError(f"metrics port {port}: cannot listen on {host}:{port}: {err}") from None

    def _record(self, rec: Any) -> None:
        from executors.store import AuditEvent, StoreError

        self.decisions.append(rec)
        self._unrecorded.append(rec)
        try:  # the store may be down (an outage): the records wait and go with the next one
            self.store.record_decisions(self._unrecorded, cluster=self.opts.cluster_name)
            self._unrecorded = []
        except StoreError as err:
            log.warning("recording %d decision(s) failed, kept for the next interval: %s", len(self._unrecorded), err)
        if rec.controller == "operator":  # mode changes and overrides also go to the append-only audit log
            event = AuditEvent(
                rec.time_s,
                self.opts.tenant,
                rec.who,
                rec.reason.split(":")[0],
                self.opts.cluster_name,
                {"reason": rec.reason, "applied": rec.applied, "previous": rec.previous, "mode": rec.mode},
            )
            try:
                self.store.append_audit([event])
            except StoreError:  # written by the batch writer once the store is back
                self.cluster.writer.add_audit([event])
        wanted = rec.guard_applied if rec.policy_output is None else round(rec.policy_output)
        self.metrics.observe_decision(
            rec.policy, str(rec.mode), rec.reason, rec.applied if wanted is None else wanted, rec.applied, rec.fallback
        )

    # -- the loop ----------------------------------------------------------------------------
    def start(self) -> None:
        """Open the tenant's queue and executors, pick up what the store holds unfinished (all of a
        resumed run's work; a crashed earlier driver's leftovers otherwise), audit who started the
        run, record its state, take the first reading."""
        from executors.intake import Submitter
        from executors.store import AuditEvent

        opts, cfg = self.opts, self.cfg
        roles = frozenset(r for t in cfg.tasks.values() for r in t.required_roles)
        self.submitter = Submitter("replay", opts.tenant, roles)
        self.started_s = self.clock()
        self.cluster.open_tenant(opts.tenant)  # its queue and executors exist before the first decision
        prior = self.resume_state
        if prior is not None:
            self.recovered = self.cluster.resume([opts.tenant])[opts.tenant]
            stored = sum(self.store.status_counts(opts.tenant, run_id=self.run_id).values())
            self.replay.resume_after(stored, self.started_s)
            self.snapshots = read_intervals(self.run_dir)
            self.started_s = prior.started_s  # elapsed time and the report span the whole run
            action, detail = (
                "tuner_resume",
                {
                    "policy": opts.policy,
                    "mode": opts.mode,
                    "run_id": self.run_id,
                    "replay_submitted": stored,
                    **self.recovered,
                },
            )
        else:
            self.recovered = self.cluster.recover(opts.tenant)
            action, detail = (
                "tuner_start",
                {
                    "policy": opts.policy,
                    "mode": opts.mode,
                    "policy_problem": self.policy_problem,
                    "run_id": self.run_id,
                },
            )
        self.cluster.writer.add_audit(
            [AuditEvent(self.clock(), opts.tenant, opts.user, action, opts.cluster_name, detail)]
        )
        self._save_state()
        self._last_gauges = self.clock()
        self._register_tuner()
        self.cluster.observe(0.0)
        self.tuner.prime()

    def _save_state(self, status: str = "running") -> None:
        from core.provenance import write_run_metadata

        pid, ticks, host, boot = this_driver()
        prior = self.resume_state
        state = RunState(
            run_id=self.run_id,
            cluster_name=self.opts.cluster_name,
            id_prefix=self.replay.id_prefix,
            tenant=self.opts.tenant,
            started_s=self.started_s,
            options=asdict(self.opts),
            endpoints=self.endpoints.describe(),
            driver_pid=pid,
            driver_start_ticks=ticks,
            host=host,
            boot_id=boot,
            status=status,
            decisions=self.earlier_decisions[0] + len(self.decisions),
            fallback_decisions=self.earlier_decisions[1] + sum(1 for d in self.decisions if d.fallback),
            resumed=(prior.resumed + 1) if prior is not None else 0,
            ended_by=self.ended_by,
        )
        if not getattr(self, "_metadata_written", False):  # provenance from the start, not only at the end
            write_run_metadata(
                self.run_dir / "run.yaml",
                self.cfg,
                options=asdict(self.opts),
                endpoints=self.endpoints.describe(),
                run_id=self.run_id,
            )
            self._metadata_written = True
        write_state(self.run_dir, state)

    def _register_tuner(self) -> None:
        """Say in the store that this run tunes the cluster (``autotune control`` binds requests to its
        run id); :meth:`decide` beats, closing marks it ended."""
        import os
        import socket

        from autotune.operator_auth import tuner_alive

        opts = self.opts
        others = [
            r["run_id"]
            for r in self.store.tuner_runs(opts.cluster_name)
            if r["run_id"] != self.run_id and tuner_alive(r, self.started_s)
        ]
        if others:
            log.warning(
                "cluster %r has another running tuner (run %s): control requests go to the newest",
                opts.cluster_name,
                ", ".join(others),
            )
        self.store.register_tuner(
            opts.cluster_name,
            self.run_id,
            self.started_s,
            host=socket.gethostname(),
            pid=os.getpid(),
            interval_s=opts.interval_s,
            run_dir=str(self.run_dir.resolve()),
        )
        self._opened.append(lambda: self.store.tuner_heartbeat(self.run_id, self.clock(), "ended"))

    def pump(self, until_s: float, on_update: Callable[[DashboardState], None] | None = None) -> None:
        """Run the cluster until wall time ``until_s``: replay arrivals, dispatch, settle; refresh the
        exporter's levels every second and once more at the end (so a reading at ``until_s`` is fresh).
        Arrivals the store cannot take (an outage) are held and submitted when it is back."""
        while True:
            tasks = self.replay.due()
            if tasks:
                self._held_arrivals.extend(tasks)
                over = len(self._held_arrivals) - self.MAX_HELD_ARRIVALS
                if over > 0:  # a bound, like any buffer: the oldest are refused, and counted
                    del self._held_arrivals[:over]
                    self.arrivals_refused += over
            if self._held_arrivals and self.cluster.outage is None:
                self._submit_held()
            self.cluster.run_once(collect_timeout_s=0.02)
            now = self.clock()
            if now - self._last_gauges >= 1.0 or now >= until_s:
                self.cluster.observe(now - self._last_gauges)
                self._last_gauges = now
                if on_update is not None:
                    self._update_dashboard(now - self.started_s, None)
                    on_update(self.dashboard)
            if now >= until_s or (self.replay.done and self._idle()):
                return

    def _submit_held(self) -> None:
        from executors.store import StoreUnavailable

        held = self._held_arrivals
        try:
            if self._maybe_stored:  # the last try may have committed before the connection dropped
                known = self.store.statuses(self.opts.tenant, [t["id"] for t in held])
                held = [t for t in held if t["id"] not in known]
            for start in range(0, len(held), 1000):
                self.cluster.submit(held[start : start + 1000], self.submitter)
                self._held_arrivals = held = held[start + 1000 :] if start + 1000 < len(held) else []
                if not held:
                    break
            self._held_arrivals, self._maybe_stored = [], False
        except StoreUnavailable as err:
            self._maybe_stored = True
            self.cluster.note_outage(err)

    def apply_control_requests(self) -> int:
        """Operator requests queued in the store (``autotune control``), oldest first. Each is verified
        (:func:`autotune.operator_auth.verify`: signed with a key of the operators file, bound to this
        run, not expired, not replayed) and then applied through the tuner with the roles the
        operators file gives, which checks the operator role. A refusal is recorded on the request
        and in the audit log (``control_refused``) with its reason. Requests bound to another tuner
        that is running now are left to it. Returns how many were applied or refused."""
        from autotune.operator_auth import Refusal, authentic_nonces, tuner_alive, verify
        from control.tuner import PermissionDenied
        from executors.store import StoreError

        cluster, now = self.opts.cluster_name, self.clock()
        try:
            pending = self.store.pending_control(cluster)
            if not pending:
                return 0
            others = {
                r["run_id"]
                for r in self.store.tuner_runs(cluster)
                if r["run_id"] != self.run_id and tuner_alive(r, now)
            }
            pending = [r for r in pending if r.get("run_id") is None or r["run_id"] not in others]
            # a row copied from one already applied or refused carries its nonce: the table remembers
            # what this tuner's memory may not (a resumed run)
            earlier = self.store.finished_control_with_nonces(cluster, [r["nonce"] for r in pending if r["nonce"]])
        except StoreError as err:
            log.error("reading operator requests failed: %s", err)
            return 0
        seen = self._seen_nonces | authentic_nonces(earlier, self.operators)
        for req in pending:
            outcome = verify(req, self.operators, self.run_id, now, seen)
            if isinstance(outcome, Refusal):
                self._refuse_control(req, outcome.kind, outcome.reason)
                continue
            seen.add(req["nonce"])
            self._seen_nonces.add(req["nonce"])
            try:
                if req["action"] == "mode":
                    self.tuner.set_mode(req["value"], outcome.user, outcome.roles)
                else:
                    self.tuner.override(int(req["value"]), outcome.user, outcome.roles)
            except PermissionDenied as err:
                self._refuse_control(req, "permission", str(err))
            except ValueError as err:
                self._refuse_control(req, "invalid", str(err))
            else:
                self.store.finish_control(req["id"], "applied")
        self.dashboard.mode = str(self.tuner.state.mode)
        return len(pending)

    def _refuse_control(self, req: dict[str, Any], kind: str, reason: str) -> None:
        from executors.store import AuditEvent

        self.store.finish_control(req["id"], "refused", reason)
        self.store.append_audit(
            [
                AuditEvent(
                    self.clock(),
                    self.opts.tenant,
                    str(req["user"]),
                    "control_refused",
                    self.opts.cluster_name,
                    {
                        "kind": kind,
                        "reason": reason,
                        "user": req["user"],
                        "action": req["action"],
                        "value": req["value"],
                        "request": req["id"],
                        "run_id": req.get("run_id"),
                        "nonce": req.get("nonce"),
                    },
                )
            ]
        )

    def decide(self) -> Any:
        """One control interval's decision (the tuning loop reads the exporter or Prometheus), after
        the tuner's heartbeat and any operator requests. During an outage the interval is observed but
        the concurrency held (and the store is not asked for anything)."""
        rec = self.tuner.step(problem=self._before_decision())
        self.note(rec)
        return rec

    def _before_decision(self) -> str | None:
        """The tuner's heartbeat and the operators' requests, then the executors observed; returns
        the outage that makes this interval's reading untrustworthy, if any."""
        from executors.store import StoreError

        outage = self.cluster.outage
        if outage is None:
            try:
                self.store.tuner_heartbeat(self.run_id, self.clock())
            except StoreError as err:
                log.error("tuner heartbeat failed: %s", err)
            self.apply_control_requests()
        self.cluster.observe_executors()
        return None if outage is None else f"outage: {outage.describe(self.clock())}"

    # -- the live environment's session (envs.live_env.LiveSession) ---------------------------
    def observe(self) -> tuple[ClusterSnapshot | None, np.ndarray | None, str | None]:
        """Read the metrics: the interval just ended, its observation, or what was wrong."""
        return self.tuner.observe()

    def decide_on(
        self, snap: ClusterSnapshot | None, obs: np.ndarray | None, problem: str | None, policy: Policy
    ) -> DecisionRecord:
        """Decide with ``policy`` on an interval already observed, as :meth:`decide` does with the
        run's own policy: heartbeat, operators' requests, outage hold, record."""
        outage = self._before_decision()
        rec = self.tuner.decide(None if outage else snap, None if outage else obs, outage or problem, policy=policy)
        self.note(rec)
        return rec

    @property
    def current_concurrency(self) -> int:
        return self.cluster.target

    @property
    def previous_snapshot(self) -> ClusterSnapshot | None:
        return self.tuner.previous

    @property
    def finished(self) -> bool:
        """The replay has submitted everything and the run's duration has passed."""
        return self.replay.done and self.clock() >= self.started_s + self.opts.duration_s

    def note(self, rec: DecisionRecord) -> None:
        """Keep a decision's interval (intervals.csv), the run's state and the dashboard up to date."""
        snap = self.tuner.snapshot
        if snap is not None and (not self.snapshots or self.snapshots[-1] is not snap):
            self.snapshots.append(snap)
            try:
                append_interval(self.run_dir, snap, sli_status(snap, self.cfg.slis).all_ok)
            except OSError as err:
                log.warning("appending to intervals.csv failed: %s", err)
        self._save_state()
        self._update_dashboard(self.clock() - self.started_s, rec)

    def run(self, on_update: Callable[[DashboardState], None] | None = None) -> RunReport:
        """The whole replay under the tuner, then the report (also written to the run folder). An
        outage longer than the budget ends it early, with the report (``ended_by`` says why)."""
        from executors.cluster import OutageError

        opts = self.opts
        self.start()
        now = self.clock()
        next_decision = now + opts.interval_s
        end_by = now + max(0.0, opts.duration_s - self.replay.elapsed_s()) + opts.drain_s
        try:
            while True:
                self.pump(min(next_decision, end_by), on_update)
                now = self.clock()
                if self.replay.done and (now >= end_by or self._idle()):
                    break
                if now >= next_decision:
                    self.decide()
                    next_decision += opts.interval_s
                    if on_update is not None:
                        on_update(self.dashboard)
        except OutageError as err:
            self.ended_by = str(err)
            log.error("run ended: %s", err)
        return self.finish()

    def finish(self) -> RunReport:
        from executors.store import StoreError

        opts = self.opts
        started = getattr(self, "started_s", self.clock())  # interrupted before the start: nothing ran
        counts: dict[str, int] = {}
        problems = []
        try:
            self.cluster.writer.flush()
        except StoreError as err:
            problems.append(f"audit events not written: {err}")
        try:
            counts = self.store.status_counts(opts.tenant, run_id=self.run_id)
        except StoreError as err:
            problems.append(f"task counts unavailable: {err}")
        submitted = (counts and sum(counts.values())) or self.replay.submitted
        report = summarise(
            opts.policy, opts.mode, self.snapshots, self.cfg, counts, submitted, self.decisions, self.clock() - started
        )
        report.decisions += self.earlier_decisions[0]
        report.fallback_decisions += self.earlier_decisions[1]
        c = self.cluster
        report.extra = {
            "endpoints": self.endpoints.describe(),
            "ray": self.ray_used,
            "run_id": self.run_id,
            "policy_problem": self.policy_problem,
            "replay_tasks": self.plan.total,
            "loop_failures": self.tuner.failed_steps,
            "ended_by": self.ended_by,
            "resumed": self.resume_state is not None,
            "recovered_at_start": self.recovered,
            "outages": c.counts["outages"],
            "dead_letters": c.counts["dead_letters"],
            "dropped_duplicates": c.counts["dropped"],
            "arrivals_refused": self.arrivals_refused,
            "arrivals_held_at_end": len(self._held_arrivals),
            "problems": problems,
        }
        self._write(report)
        try:
            self._save_state("ended" if self.ended_by else "finished")
        except OSError as err:
            log.warning("writing the run state failed: %s", err)
        return report

    def _idle(self) -> bool:
        return not self._held_arrivals and not self.cluster.busy()

    def _update_dashboard(self, elapsed_s: float, rec: Any) -> None:
        d, c = self.dashboard, self.cluster
        d.elapsed_s = elapsed_s
        d.arrival_rate_per_s = self.plan.rate_at(min(elapsed_s, self.opts.duration_s))
        d.submitted = self.replay.submitted
        d.target, d.serving, d.running = c.target, c.actual_concurrency, c.in_flight
        d.outage = None if c.outage is None else c.outage.describe(self.clock())
        snap = self.tuner.snapshot
        if snap is not None:
            d.backlog = snap.backlog
            d.success_rate = snap.success_rate
            d.mean_processing_s = snap.mean_processing_time_s
            d.p90_processing_s, d.p99_processing_s = snap.p90_processing_time_s, snap.p99_processing_time_s
        if rec is not None:
            d.fallback = rec.reason if rec.fallback else None
            d.decisions.append((elapsed_s, rec.policy_output, rec.applied, rec.reason))
            d.load_history.append(d.arrival_rate_per_s)
            d.concurrency_history.append(c.target)
            d.backlog_history.append(d.backlog)

    # -- results -----------------------------------------------------------------------------
    def _write(self, report: RunReport) -> None:
        from core.provenance import write_run_metadata

        with open(self.run_dir / "intervals.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(intervals_header())
            for s in self.snapshots:
                w.writerow(interval_row(s, sli_status(s, self.cfg.slis).all_ok))
        (self.run_dir / "summary.json").write_text(json.dumps(asdict(report), indent=2, default=str))
        write_run_metadata(
            self.run_dir / "run.yaml",
            self.cfg,
            options=asdict(self.opts),
            endpoints=self.endpoints.describe(),
            run_id=self.run_id,
        )

    def close(self) -> None:
        errors = []
        for fn in reversed(self._opened):
            try:
                fn()
            except Exception as err:
                errors.append(err)
        self._opened.clear()
        if errors:
            log.warning("closing the run: %s", errors[0])

    def __enter__(self) -> LiveRun:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
