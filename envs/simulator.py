"""The cluster simulator: a thin Python face over the compiled kernel (:mod:`envs.kernel`).

It owns the kernel's arrays, turns a control interval's counters into a
:class:`~autotune.domain.ClusterSnapshot`, and reports conservation counts for the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from autotune.config import AutotuneConfig
from autotune.domain import ClusterSnapshot
from envs import kernel as K
from envs.service_model import AttemptTable, attempt_table

QUEUE_COHORTS = 4096  # per priority class; beyond this, new cohorts merge into the tail


def _pow2_above(n: int) -> int:
    return 1 << max(4, int(n).bit_length())


@dataclass(frozen=True)
class Conservation:
    arrived: int
    queued: int
    running: int
    retrying: int
    succeeded: int
    failed: int

    @property
    def balanced(self) -> bool:
        return self.arrived == self.queued + self.running + self.retrying + self.succeeded + self.failed


class ClusterSimulator:
    """Queueing simulation of the task cluster, advanced one control interval at a time."""

    def __init__(self, cfg: AutotuneConfig) -> None:
        self.cfg = cfg
        task = cfg.task
        tick_s = cfg.simulation.tick_s
        self.tick_s = tick_s
        self.table: AttemptTable = attempt_table(task.steps, tick_s)
        retry = task.retry_policy
        self.params = np.zeros(K.N_PARAMS)
        self.params[K.P_TICK_S] = tick_s
        self.params[K.P_TIMEOUT_S] = task.timeout
        self.params[K.P_WARMUP_TICKS] = math.ceil(cfg.cluster.warmup_s / tick_s - 1e-9)
        self.params[K.P_MAX_RETRIES] = retry.max_retries
        self.params[K.P_RETRY_BASE_S] = retry.base_s
        self.params[K.P_RETRY_JITTER_S] = retry.jitter_s
        self.params[K.P_RETRY_CAP_S] = retry.cap_s
        self.params[K.P_RETRY_EXPONENTIAL] = 1.0 if retry.backoff == "exponential" else 0.0
        n_att = retry.max_retries + 1
        rt_len = _pow2_above(self.table.max_ticks + 1)
        rb_len = _pow2_above(int(math.ceil((retry.cap_s + retry.jitter_s) / tick_s)) + 2)
        wr_len = _pow2_above(int(self.params[K.P_WARMUP_TICKS]) + 1)
        self.hist_len = int(math.ceil(task.timeout / tick_s)) + rt_len + rb_len * n_att + 2
        self.istate = np.zeros(K.N_ISTATE, dtype=np.int64)
        self.qcnt = np.zeros((K.N_CLASSES, QUEUE_COHORTS), dtype=np.int64)
        self.qarr = np.zeros_like(self.qcnt)
        self.qatt = np.zeros_like(self.qcnt)
        self.qhead = np.zeros(K.N_CLASSES, dtype=np.int64)
        self.qsize = np.zeros(K.N_CLASSES, dtype=np.int64)
        self.qtotal = np.zeros(K.N_CLASSES, dtype=np.int64)
        self.rel_run = np.zeros(rt_len, dtype=np.int64)
        self.rel_succ = np.zeros(rt_len, dtype=np.int64)
        self.rel_fail = np.zeros(rt_len, dtype=np.int64)
        self.rel_trans_cnt = np.zeros((rt_len, K.N_CLASSES, n_att), dtype=np.int64)
        self.rel_trans_arr = np.zeros_like(self.rel_trans_cnt)
        self.rb_cnt = np.zeros((rb_len, K.N_CLASSES, n_att), dtype=np.int64)
        self.rb_arr = np.zeros_like(self.rb_cnt)
        self.warm = np.zeros(wr_len, dtype=np.int64)
        self.hist = np.zeros(self.hist_len, dtype=np.int64)
        self.run_hist = np.zeros(self.hist_len, dtype=np.int64)
        self.rng = np.ones(1, dtype=np.uint64)
        self.out = np.zeros(K.N_OUT)
        self.arrivals = np.zeros((1, K.N_CLASSES), dtype=np.int64)
        self._arrays = (
            self.qcnt, self.qarr, self.qatt, self.qhead, self.qsize, self.qtotal,
            self.rel_run, self.rel_succ, self.rel_fail, self.rel_trans_cnt, self.rel_trans_arr,
            self.rb_cnt, self.rb_arr, self.warm,
        )

    @property
    def nominal_service_time_s(self) -> float:
        return self.table.mean_slot_s

    @property
    def now_s(self) -> float:
        return float(self.istate[K.T]) * self.tick_s

    @property
    def target_concurrency(self) -> int:
        return int(self.istate[K.SERVING] + self.istate[K.WARMING])

    def reset(self, arrivals: np.ndarray, rng_seed: int, concurrency: int) -> None:
        """Start an empty cluster with ``concurrency`` slots already serving."""
        for a in self._arrays:
            a.fill(0)
        self.istate.fill(0)
        self.run_hist.fill(0)
        self.arrivals = np.ascontiguousarray(arrivals, dtype=np.int64)
        self.rng[0] = np.uint64(rng_seed) | np.uint64(1)  # xorshift state must not be zero
        self.istate[K.SERVING] = concurrency

    def set_target(self, concurrency: int) -> None:
        K.set_target(self.istate, self.warm, int(concurrency), self.params)

    def advance(self, interval_s: float) -> ClusterSnapshot:
        """Run one control interval and describe it."""
        n_ticks = max(1, int(round(interval_s / self.tick_s)))
        K.advance(
            n_ticks, self.istate, self.params, self.arrivals, *self._arrays[:13], self.warm,
            self.table.cell_outcome, self.table.cell_ticks, self.table.cell_cdf,
            self.hist, self.rng, self.out,
        )
        self.run_hist += self.hist
        o = self.out
        s = self.istate
        q = self.qtotal
        return ClusterSnapshot(
            time_s=float(s[K.T]) * self.tick_s,
            interval_s=n_ticks * self.tick_s,
            arrivals=int(o[K.O_ARRIVALS]),
            backlog_by_priority=(int(q[0]), int(q[1]), int(q[2])),
            retrying=int(s[K.RETRY_WAIT]),
            running=int(s[K.RUNNING]),
            target_concurrency=int(s[K.SERVING] + s[K.WARMING]),
            serving_concurrency=int(s[K.SERVING]),
            warming_concurrency=int(s[K.WARMING]),
            succeeded=int(o[K.O_SUCC]),
            failed=int(o[K.O_FAIL]),
            timed_out=int(o[K.O_TIMEOUT]),
            retries=int(o[K.O_RETRIES]),
            attempts_started=int(o[K.O_STARTS]),
            mean_processing_time_s=float(o[K.O_LAT_MEAN_S]),
            p90_processing_time_s=float(o[K.O_P90_S]),
            p99_processing_time_s=float(o[K.O_P99_S]),
            busy_slot_s=float(o[K.O_BUSY_SLOT_S]),
            provisioned_slot_s=float(o[K.O_PROV_SLOT_S]),
            max_backlog=int(o[K.O_MAX_BACKLOG]),
        )

    def idle_snapshot(self) -> ClusterSnapshot:
        """The state before anything has happened (what reset observes)."""
        s = self.istate
        return ClusterSnapshot(
            time_s=self.now_s, interval_s=self.cfg.control.interval_s, arrivals=0,
            backlog_by_priority=(0, 0, 0), retrying=0, running=int(s[K.RUNNING]),
            target_concurrency=self.target_concurrency, serving_concurrency=int(s[K.SERVING]),
            warming_concurrency=int(s[K.WARMING]), succeeded=0, failed=0, timed_out=0, retries=0,
            attempts_started=0, mean_processing_time_s=0.0, p90_processing_time_s=0.0,
            p99_processing_time_s=0.0, busy_slot_s=0.0, provisioned_slot_s=0.0, max_backlog=0,
        )

    def run_latency(self) -> tuple[float, float, float]:
        """Mean, P90 and P99 processing time over the whole run so far (seconds)."""
        out = np.zeros(K.N_OUT)
        K._latency_stats(self.run_hist, self.tick_s, out)
        return float(out[K.O_LAT_MEAN_S]), float(out[K.O_P90_S]), float(out[K.O_P99_S])

    def conservation(self) -> Conservation:
        s = self.istate
        return Conservation(
            arrived=int(s[K.ARRIVED_TOTAL]),
            queued=int(self.qtotal.sum()),
            running=int(s[K.RUNNING]),
            retrying=int(s[K.RETRY_WAIT]),
            succeeded=int(s[K.SUCC_TOTAL]),
            failed=int(s[K.FAIL_TOTAL]),
        )
