"""The simulator's inner loop, compiled with numba.

The cluster is simulated in ticks of ``tick_s`` seconds, in counts of tasks rather than task objects,
which is what makes tens of thousands of control intervals per second possible:

- queues: one FIFO of cohorts (count, arrival tick, attempt) per priority class; arrivals join the
  back, retries (older by construction) the front; classes are served strictly by priority;
- attempts: a cohort that starts draws its outcome and duration from the attempt table with one
  uniform number (systematic sampling: exact in the mean, integer counts, conserved totals);
- retries: an attempt that fails retryably waits ``core.retry.backoff_delay_s`` (the same function
  the live executors call, compiled here) and re-enters its queue; after ``max_retries`` it fails;
- timeouts: a task whose age passes the task timeout while queued fails as timed out;
- capacity: ``serving`` slots run tasks; new slots serve only after ``warmup_ticks``; a scale-down
  cancels warming slots first and lets running tasks finish (drain), never cancelling them.

All randomness comes from the arrival counts drawn at reset and a per-simulator xorshift64* stream,
so the same seed gives the same trajectory whatever else runs in the process.
"""

from __future__ import annotations

import numba
import numpy as np

from core.retry import backoff_delay_s

_backoff = numba.njit(cache=True)(backoff_delay_s)

# istate indices
T, SERVING, WARMING, RUNNING, RETRY_WAIT = 0, 1, 2, 3, 4
SUCC_TOTAL, FAIL_TOTAL, TIMEOUT_TOTAL, ARRIVED_TOTAL, RETRIES_TOTAL = 5, 6, 7, 8, 9
N_ISTATE = 10

# out indices (per step)
O_ARRIVALS, O_SUCC, O_FAIL, O_TIMEOUT, O_RETRIES, O_STARTS = 0, 1, 2, 3, 4, 5
O_BUSY_SLOT_S, O_PROV_SLOT_S, O_MAX_BACKLOG, O_LAT_N, O_LAT_MEAN_S, O_P90_S, O_P99_S = 6, 7, 8, 9, 10, 11, 12
N_OUT = 13

# layout header of the packed int64 memory (see ClusterSimulator): offsets and lengths
L_ISTATE, L_QHEAD, L_QSIZE, L_QTOTAL, L_Q, L_QCAP = 0, 1, 2, 3, 4, 5
L_REL, L_RT, L_RELTRANS, L_NATT, L_RB, L_RBLEN = 6, 7, 8, 9, 10, 11
L_WARM, L_WR, L_HIST, L_NHIST, L_CELLS, L_NCELLS, L_RNG, L_RUNHIST = 12, 13, 14, 15, 16, 17, 18, 19
N_LAYOUT = 20
# float memory: params, then per-step outputs, then the attempt table's CDF
F_PARAMS = 0

# params indices (float64)
P_TICK_S, P_TIMEOUT_S, P_WARMUP_TICKS, P_MAX_RETRIES = 0, 1, 2, 3
P_RETRY_BASE_S, P_RETRY_JITTER_S, P_RETRY_CAP_S, P_RETRY_EXPONENTIAL = 4, 5, 6, 7
N_PARAMS = 8
F_OUT = N_PARAMS
F_CDF = F_OUT + N_OUT

N_CLASSES = 3
SUCCESS, TRANSIENT, PERMANENT = 0, 1, 2


@numba.njit(cache=True, inline="always")
def _uniform(rng: np.ndarray) -> float:
    x = rng[0]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    rng[0] = x
    return float((x * np.uint64(0x2545F4914F6CDD1D)) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(cache=True, inline="always")
def _enqueue(qcnt, qarr, qatt, qhead, qsize, qtotal, c, n, arr, att, front):
    """Add a cohort of ``n`` tasks to class ``c``'s queue, at the back or the front.

    A full ring merges the cohort into its neighbour at that end (arrival tick averaged) rather
    than losing it; capacities are powers of two, so indices wrap by mask, not division.
    """
    cap = qcnt.shape[1]
    mask = cap - 1
    end = qhead[c] if front else (qhead[c] + qsize[c] - 1) & mask
    if qsize[c] == cap:
        qarr[c, end] = (qarr[c, end] * qcnt[c, end] + arr * n) // (qcnt[c, end] + n)
        qcnt[c, end] += n
    else:
        i = (qhead[c] - 1) & mask if front else (end + 1) & mask
        if front:
            qhead[c] = i
        qcnt[c, i] = n
        qarr[c, i] = arr
        qatt[c, i] = att
        qsize[c] += 1
    qtotal[c] += n


@numba.njit(cache=True)
def set_target(istate, warm, target, params):
    """Change the provisioned concurrency to ``target``: new slots warm up, removed ones drain."""
    total = istate[SERVING] + istate[WARMING]
    wr = warm.shape[0]
    t = istate[T]
    warmup_ticks = int(params[P_WARMUP_TICKS])
    if target > total:
        add = target - total
        if warmup_ticks == 0:
            istate[SERVING] += add
        else:
            warm[(t + warmup_ticks) % wr] += add
            istate[WARMING] += add
    elif target < total:
        remove = total - target
        k = warmup_ticks
        while remove > 0 and k >= 1 and istate[WARMING] > 0:  # cancel the latest-ready slots first
            i = (t + k) % wr
            take = min(remove, warm[i])
            warm[i] -= take
            istate[WARMING] -= take
            remove -= take
            k -= 1
        istate[SERVING] -= remove


@numba.njit(cache=True)
def advance(
    n_ticks,
    istate,
    params,
    arrivals,
    qcnt,
    qarr,
    qatt,
    qhead,
    qsize,
    qtotal,
    rel_run,
    rel_succ,
    rel_fail,
    rel_trans_total,
    rel_trans_cnt,
    rel_trans_arr,
    rb_cnt,
    rb_arr,
    warm,
    cell_outcome,
    cell_ticks,
    cell_cdf,
    hist,
    run_hist,
    rng,
    out,
):
    """Simulate ``n_ticks`` ticks; per-interval statistics go to ``out``.

    ``hist`` (processing times of the interval, in ticks) is left zeroed; ``run_hist`` accumulates it.
    """
    tick_s = params[P_TICK_S]
    timeout_ticks = params[P_TIMEOUT_S] / tick_s
    max_retries = int(params[P_MAX_RETRIES])
    exponential = params[P_RETRY_EXPONENTIAL] > 0.5
    rt_mask = rel_run.shape[0] - 1  # ring lengths are powers of two
    rb_mask = rb_cnt.shape[0] - 1
    w_mask = warm.shape[0] - 1
    n_hist = hist.shape[0]
    n_cells = cell_cdf.shape[0]
    n_att = rel_trans_cnt.shape[2]
    horizon = arrivals.shape[0]
    # counters live in locals for the loop (the arrays may alias, so the compiler cannot keep them
    # in registers) and go back to their arrays at the end
    t = istate[T]
    serving = istate[SERVING]
    warming = istate[WARMING]
    running = istate[RUNNING]
    retry_wait = istate[RETRY_WAIT]
    n_arrived = 0
    n_succ = 0
    n_fail = 0
    n_timeout = 0
    n_retries = 0
    n_starts = 0
    busy_ticks = 0
    prov_ticks = 0
    max_backlog = 0
    hmax = 0
    q_mask = qcnt.shape[1] - 1
    retry_base_s = params[P_RETRY_BASE_S]
    retry_jitter_s = params[P_RETRY_JITTER_S]
    retry_cap_s = params[P_RETRY_CAP_S]
    for _ in range(n_ticks):
        t += 1
        # 1. warmed-up slots start serving
        w = t & w_mask
        if warm[w] > 0:
            serving += warm[w]
            warming -= warm[w]
            warm[w] = 0
        # 2. attempts ending now release their slots
        r = t & rt_mask
        if rel_run[r] > 0:
            running -= rel_run[r]
            n_succ += rel_succ[r]
            n_fail += rel_fail[r]
            rel_run[r] = 0
            rel_succ[r] = 0
            rel_fail[r] = 0
        if rel_trans_total[r] > 0:  # rare: most attempts do not fail retryably
            rel_trans_total[r] = 0
            for c in range(N_CLASSES):
                for j in range(n_att):
                    n = rel_trans_cnt[r, c, j]
                    if n > 0:
                        delay_s = _backoff(j, _uniform(rng), retry_base_s, retry_jitter_s, retry_cap_s, exponential)
                        ready = t + max(1, int(delay_s / tick_s + 0.5))
                        b = ready & rb_mask
                        rb_cnt[b, c, j + 1] += n
                        rb_arr[b, c, j + 1] += rel_trans_arr[r, c, j]
                        retry_wait += n
                        n_retries += n
                        rel_trans_cnt[r, c, j] = 0
                        rel_trans_arr[r, c, j] = 0
        # 3. retries whose backoff is over rejoin the front of their queue
        if retry_wait > 0:
            b = t & rb_mask
            for c in range(N_CLASSES):
                for j in range(1, n_att):
                    n = rb_cnt[b, c, j]
                    if n > 0:
                        _enqueue(qcnt, qarr, qatt, qhead, qsize, qtotal, c, n, rb_arr[b, c, j] // n, j, True)
                        retry_wait -= n
                        rb_cnt[b, c, j] = 0
                        rb_arr[b, c, j] = 0
        # 4. arrivals join the back
        if t < horizon:
            for c in range(N_CLASSES):
                n = arrivals[t, c]
                if n > 0:
                    _enqueue(qcnt, qarr, qatt, qhead, qsize, qtotal, c, n, t, 0, False)
                    n_arrived += n
        # 5. tasks past the task timeout while queued fail
        for c in range(N_CLASSES):
            while qsize[c] > 0:
                h = qhead[c]
                if t - qarr[c, h] <= timeout_ticks:
                    break
                n = qcnt[c, h]
                n_fail += n
                n_timeout += n
                qtotal[c] -= n
                qcnt[c, h] = 0
                qhead[c] = (h + 1) & q_mask
                qsize[c] -= 1
        # 6. free slots take work, highest priority class first, oldest first
        free = serving - running
        for c in range(N_CLASSES):
            while free > 0 and qsize[c] > 0:
                h = qhead[c]
                m = min(free, qcnt[c, h])
                arr = qarr[c, h]
                att = qatt[c, h]
                wait = t - arr
                qcnt[c, h] -= m
                qtotal[c] -= m
                if qcnt[c, h] == 0:
                    qhead[c] = (h + 1) & q_mask
                    qsize[c] -= 1
                free -= m
                running += m
                n_starts += m
                # one uniform number spreads the m attempts over (outcome, duration) cells
                u = _uniform(rng)
                prev = 0
                for i in range(n_cells):
                    cum = int(m * cell_cdf[i] + u)
                    if cum > m:
                        cum = m
                    k_n = cum - prev
                    prev = cum
                    if k_n > 0:
                        k = cell_ticks[i]
                        o = cell_outcome[i]
                        rr = (t + k) & rt_mask
                        rel_run[rr] += k_n
                        terminal = True
                        if o == SUCCESS:
                            rel_succ[rr] += k_n
                        elif o == TRANSIENT and att < max_retries:
                            rel_trans_cnt[rr, c, att] += k_n
                            rel_trans_arr[rr, c, att] += k_n * arr
                            rel_trans_total[rr] += k_n
                            terminal = False
                        else:
                            rel_fail[rr] += k_n
                        if terminal:
                            s = wait + k
                            if s >= n_hist:
                                s = n_hist - 1
                            hist[s] += k_n
                            if s > hmax:
                                hmax = s
                    if prev >= m:
                        break
        # 7. slot accounting and backlog
        busy_ticks += running
        prov = serving + warming
        prov_ticks += prov if prov > running else running
        backlog = qtotal[0] + qtotal[1] + qtotal[2] + retry_wait
        if backlog > max_backlog:
            max_backlog = backlog
    istate[T] = t
    istate[SERVING] = serving
    istate[WARMING] = warming
    istate[RUNNING] = running
    istate[RETRY_WAIT] = retry_wait
    istate[ARRIVED_TOTAL] += n_arrived
    istate[SUCC_TOTAL] += n_succ
    istate[FAIL_TOTAL] += n_fail
    istate[TIMEOUT_TOTAL] += n_timeout
    istate[RETRIES_TOTAL] += n_retries
    out[:] = 0.0
    out[O_ARRIVALS] = n_arrived
    out[O_SUCC] = n_succ
    out[O_FAIL] = n_fail
    out[O_TIMEOUT] = n_timeout
    out[O_RETRIES] = n_retries
    out[O_STARTS] = n_starts
    out[O_BUSY_SLOT_S] = busy_ticks * tick_s
    out[O_PROV_SLOT_S] = prov_ticks * tick_s
    out[O_MAX_BACKLOG] = max_backlog
    used = hist[: hmax + 1]
    _latency_stats(used, tick_s, out)
    run_hist[: hmax + 1] += used
    used[:] = 0


@numba.njit(cache=True)
def _latency_stats(hist, tick_s, out):
    """Mean, P90 and P99 of processing time from the per-interval histogram (in ticks)."""
    n = 0
    total = 0.0
    for i in range(hist.shape[0]):
        if hist[i] > 0:
            n += hist[i]
            total += hist[i] * i
    out[O_LAT_N] = n
    if n == 0:
        return
    out[O_LAT_MEAN_S] = total / n * tick_s
    out[O_P90_S] = _quantile(hist, n, 0.90) * tick_s
    out[O_P99_S] = _quantile(hist, n, 0.99) * tick_s


@numba.njit(cache=True)
def _quantile(hist, n, q):
    # each bin i holds times stochastically rounded to i ticks, i.e. spread over (i-1, i+1): the
    # quantile interpolates linearly inside [i - 0.5, i + 0.5]
    target = q * n
    cum = 0.0
    for i in range(hist.shape[0]):
        h = hist[i]
        if h > 0:
            if cum + h >= target:
                return max(0.0, i - 0.5 + (target - cum) / h)
            cum += h
    return float(hist.shape[0] - 1)


@numba.njit(cache=True)
def unpack(mem, fmem):
    """Views of the packed memory; one array argument is far cheaper to pass than twenty."""
    cap = mem[L_QCAP]
    rt = mem[L_RT]
    natt = mem[L_NATT]
    rb = mem[L_RBLEN]
    q = mem[mem[L_Q] : mem[L_Q] + 3 * N_CLASSES * cap].reshape((3, N_CLASSES, cap))
    rel = mem[mem[L_REL] : mem[L_REL] + 4 * rt].reshape((4, rt))
    reltrans = mem[mem[L_RELTRANS] : mem[L_RELTRANS] + 2 * rt * N_CLASSES * natt].reshape((2, rt, N_CLASSES, natt))
    rbuf = mem[mem[L_RB] : mem[L_RB] + 2 * rb * N_CLASSES * natt].reshape((2, rb, N_CLASSES, natt))
    return q, rel, reltrans, rbuf


@numba.njit(cache=True)
def advance_packed(n_ticks, mem, fmem, arrivals):
    q, rel, reltrans, rbuf = unpack(mem, fmem)
    ncells = mem[L_NCELLS]
    cells = mem[mem[L_CELLS] : mem[L_CELLS] + 2 * ncells].reshape((2, ncells))
    advance(
        n_ticks,
        mem[mem[L_ISTATE] : mem[L_ISTATE] + N_ISTATE],
        fmem[F_PARAMS : F_PARAMS + N_PARAMS],
        arrivals,
        q[0],
        q[1],
        q[2],
        mem[mem[L_QHEAD] : mem[L_QHEAD] + N_CLASSES],
        mem[mem[L_QSIZE] : mem[L_QSIZE] + N_CLASSES],
        mem[mem[L_QTOTAL] : mem[L_QTOTAL] + N_CLASSES],
        rel[0],
        rel[1],
        rel[2],
        rel[3],
        reltrans[0],
        reltrans[1],
        rbuf[0],
        rbuf[1],
        mem[mem[L_WARM] : mem[L_WARM] + mem[L_WR]],
        cells[0],
        cells[1],
        fmem[F_CDF : F_CDF + ncells],
        mem[mem[L_HIST] : mem[L_HIST] + mem[L_NHIST]],
        mem[mem[L_RUNHIST] : mem[L_RUNHIST] + mem[L_NHIST]],
        mem[mem[L_RNG] : mem[L_RNG] + 1].view(np.uint64),
        fmem[F_OUT : F_OUT + N_OUT],
    )


@numba.njit(cache=True)
def split_systematic(total, u, cum_share):
    """Split each ``total[i]`` over shares (given cumulatively) with one uniform ``u[i]``."""
    n = total.shape[0]
    k = cum_share.shape[0]
    out = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        prev = 0
        for j in range(k):
            cum = int(total[i] * cum_share[j] + u[i])
            if cum > total[i]:
                cum = total[i]
            out[i, j] = cum - prev
            prev = cum
    return out
