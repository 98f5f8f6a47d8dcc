"""The cluster simulator: a thin Python face over the compiled kernel (:mod:`envs.kernel`).

It owns the kernel's arrays, turns a control interval's counters into a
:class:`~core.domain.ClusterSnapshot`, and reports conservation counts for the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.config import AutotuneConfig
from core.domain import ClusterSnapshot, TrailingWindow
from envs import kernel as K
from envs.service_model import AttemptTable, attempt_table

QUEUE_COHORTS = 4096  # per priority class; beyond this, new cohorts merge into the tail


def _pow2_above(n: int) -> int:
    return 1 << max(4, int(n).bit_length())


@dataclass(frozen=True)
class SimulatorState:
    """A copy of everything an episode has changed, to go back to (:meth:`ClusterSimulator.restore`)."""

    memory: np.ndarray
    rng: np.ndarray
    target: int
    window: TrailingWindow


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

    def __init__(self, cfg: AutotuneConfig, queue_cohorts: int = QUEUE_COHORTS) -> None:
        if queue_cohorts < 1 or queue_cohorts & (queue_cohorts - 1):
            raise ValueError(f"queue_cohorts must be a power of two, got {queue_cohorts}")
        self.cfg = cfg
        task = cfg.task
        tick_s = cfg.simulation.tick_s
        self.tick_s = tick_s
        self.table: AttemptTable = attempt_table(task.steps, tick_s)
        retry = task.retry_policy
        params = np.zeros(K.N_PARAMS)
        self.params = params
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
        # All integer state lives in one packed array and all float state in another, with named
        # views for Python: the compiled kernel then takes 4 arguments instead of 25, which is most
        # of the cost of a step.
        sizes = {
            K.L_ISTATE: K.N_ISTATE,
            K.L_QHEAD: K.N_CLASSES,
            K.L_QSIZE: K.N_CLASSES,
            K.L_QTOTAL: K.N_CLASSES,
            K.L_Q: 3 * K.N_CLASSES * queue_cohorts,
            K.L_REL: 4 * rt_len,
            K.L_RELTRANS: 2 * rt_len * K.N_CLASSES * n_att,
            K.L_RB: 2 * rb_len * K.N_CLASSES * n_att,
            K.L_WARM: wr_len,
            K.L_HIST: self.hist_len,
            K.L_RUNHIST: self.hist_len,
            K.L_CELLS: 2 * len(self.table.cell_cdf),
            K.L_RNG: 1,
        }
        offsets, pos = {}, K.N_LAYOUT
        for key, size in sizes.items():
            offsets[key] = pos
            pos += size
        self.mem = np.zeros(pos, dtype=np.int64)
        for key, off in offsets.items():
            self.mem[key] = off
        m = self.mem
        m[K.L_QCAP], m[K.L_RT], m[K.L_NATT], m[K.L_RBLEN] = queue_cohorts, rt_len, n_att, rb_len
        m[K.L_WR], m[K.L_NHIST], m[K.L_NCELLS] = wr_len, self.hist_len, len(self.table.cell_cdf)

        def view(key: int, shape: tuple[int, ...] | int) -> np.ndarray:
            n = int(np.prod(shape))
            return m[offsets[key] : offsets[key] + n].reshape(shape)

        self.istate = view(K.L_ISTATE, K.N_ISTATE)
        self.qhead = view(K.L_QHEAD, K.N_CLASSES)
        self.qsize = view(K.L_QSIZE, K.N_CLASSES)
        self.qtotal = view(K.L_QTOTAL, K.N_CLASSES)
        self.queue = view(K.L_Q, (3, K.N_CLASSES, queue_cohorts))
        self.rel = view(K.L_REL, (4, rt_len))  # releasing, succeeding, failing, failing retryably
        self.rel_trans = view(K.L_RELTRANS, (2, rt_len, K.N_CLASSES, n_att))
        self.retry_buffer = view(K.L_RB, (2, rb_len, K.N_CLASSES, n_att))
        self.warm = view(K.L_WARM, wr_len)
        self.hist = view(K.L_HIST, self.hist_len)
        self.run_hist = view(K.L_RUNHIST, self.hist_len)
        cells = view(K.L_CELLS, (2, len(self.table.cell_cdf)))
        cells[0] = self.table.cell_outcome
        cells[1] = self.table.cell_ticks
        self._rng_slot = offsets[K.L_RNG]
        self._state_start = offsets[K.L_ISTATE]
        self._state_end = offsets[K.L_CELLS]  # everything before the (constant) cells is episode state
        self.fmem = np.zeros(K.F_CDF + len(self.table.cell_cdf))
        self.fmem[K.F_PARAMS : K.F_PARAMS + K.N_PARAMS] = params
        self.fmem[K.F_CDF :] = self.table.cell_cdf
        self.params = self.fmem[K.F_PARAMS : K.F_PARAMS + K.N_PARAMS]
        self.out = self.fmem[K.F_OUT : K.F_OUT + K.N_OUT]
        self.arrivals = np.zeros((1, K.N_CLASSES), dtype=np.int64)
        self.window = TrailingWindow(cfg.slis.success_rate_window_s)
        self._target = 0

    @property
    def nominal_service_time_s(self) -> float:
        return self.table.mean_slot_s

    @property
    def now_s(self) -> float:
        return float(self.istate[K.T]) * self.tick_s

    @property
    def target_concurrency(self) -> int:
        """Provisioned slots (serving + warming); changes only through set_target."""
        return self._target

    def reset(self, arrivals: np.ndarray, rng_seed: int, concurrency: int) -> None:
        """Start an empty cluster with ``concurrency`` slots already serving."""
        self.mem[self._state_start : self._state_end] = 0
        self.arrivals = np.ascontiguousarray(arrivals, dtype=np.int64)
        seed = np.uint64(rng_seed) | np.uint64(1)  # xorshift state must not be zero
        self.mem[self._rng_slot : self._rng_slot + 1].view(np.uint64)[0] = seed
        self.istate[K.SERVING] = concurrency
        self._target = int(concurrency)
        self.window.clear()

    def save(self) -> SimulatorState:
        """The episode's state now: restoring it and repeating the same calls repeats the same
        trajectory (the random stream is part of it). For offline search (:mod:`envs.bound`)."""
        m, r = self.mem, self._rng_slot
        return SimulatorState(
            m[self._state_start : self._state_end].copy(), m[r : r + 1].copy(), self._target, self.window.copy()
        )

    def restore(self, state: SimulatorState) -> None:
        self.mem[self._state_start : self._state_end] = state.memory
        self.mem[self._rng_slot : self._rng_slot + 1] = state.rng
        self._target = state.target
        self.window = state.window.copy()

    def set_target(self, concurrency: int) -> None:
        self._target = int(concurrency)
        K.set_target(self.istate, self.warm, self._target, self.params)

    def advance(self, interval_s: float) -> ClusterSnapshot:
        """Run one control interval and describe it."""
        n_ticks = max(1, int(round(interval_s / self.tick_s)))
        K.advance_packed(n_ticks, self.mem, self.fmem, self.arrivals)
        o = self.out.tolist()
        s = self.istate.tolist()
        q = self.qtotal.tolist()
        tick_s = self.tick_s
        time_s = s[K.T] * tick_s
        interval_s = n_ticks * tick_s
        succeeded = int(o[K.O_SUCC])
        failed = int(o[K.O_FAIL])
        w_succ, w_fail = self.window.add(time_s, interval_s, succeeded, failed)
        # positional, in field order: keyword construction costs a few microseconds a step
        return ClusterSnapshot(
            time_s,
            interval_s,
            int(o[K.O_ARRIVALS]),
            (q[0], q[1], q[2]),
            s[K.RETRY_WAIT],
            s[K.RUNNING],
            s[K.SERVING] + s[K.WARMING],
            s[K.SERVING],
            s[K.WARMING],
            succeeded,
            failed,
            int(o[K.O_TIMEOUT]),
            int(o[K.O_RETRIES]),
            int(o[K.O_STARTS]),
            o[K.O_LAT_MEAN_S],
            o[K.O_P90_S],
            o[K.O_P99_S],
            o[K.O_BUSY_SLOT_S],
            o[K.O_PROV_SLOT_S],
            int(o[K.O_MAX_BACKLOG]),
            w_succ,
            w_fail,
        )

    def idle_snapshot(self) -> ClusterSnapshot:
        """The state before anything has happened (what reset observes)."""
        s = self.istate
        return ClusterSnapshot(
            time_s=self.now_s,
            interval_s=self.cfg.control.interval_s,
            arrivals=0,
            backlog_by_priority=(0, 0, 0),
            retrying=0,
            running=int(s[K.RUNNING]),
            target_concurrency=self.target_concurrency,
            serving_concurrency=int(s[K.SERVING]),
            warming_concurrency=int(s[K.WARMING]),
            succeeded=0,
            failed=0,
            timed_out=0,
            retries=0,
            attempts_started=0,
            mean_processing_time_s=0.0,
            p90_processing_time_s=0.0,
            p99_processing_time_s=0.0,
            busy_slot_s=0.0,
            provisioned_slot_s=0.0,
            max_backlog=0,
            window_succeeded=0,
            window_failed=0,
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
