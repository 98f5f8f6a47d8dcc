"""The batch writer: a buffer in front of the store that writes in a few large transactions."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from core.retry import RetryPolicy, retry_delay_s
from executors.store.audit import AuditEvent
from executors.store.base import StoreError
from executors.store.tasks import AttemptRecord, IllegalTransition, StatusUpdate, check_status

log = logging.getLogger(__name__)


class BatchTarget(Protocol):
    """What :class:`BatchWriter` writes to: :class:`executors.store.TaskStore`."""

    @property
    def url_masked(self) -> str: ...

    def record_attempts(self, attempts: Sequence[AttemptRecord]) -> int: ...

    def update_statuses(
        self, updates: Sequence[StatusUpdate], *, skip_illegal: bool = False
    ) -> list[IllegalTransition]: ...

    def append_audit(self, events: Sequence[AuditEvent]) -> None: ...


class BatchWriter:
    """A thread-safe buffer in front of a :class:`TaskStore` that writes in batches.

    ``add_attempts``, ``add_status`` and ``add_audit`` only append to memory. A background thread
    writes what is pending when ``max_batch`` items are waiting or the oldest has waited
    ``max_delay_s``: attempts first, then status updates in the order they were added, then audit
    events, each kind in transactions of at most ``max_batch`` rows. Every store write is
    idempotent, so a batch whose write failed goes back to the front of the buffer and is tried
    again after the shared backoff; nothing is dropped. :meth:`flush` writes everything now (raising
    :class:`StoreError` if that fails, the items staying buffered); :meth:`close` flushes, retrying
    up to ``retry.max_retries`` times, and stops the thread.

    Buffered status updates do not report whether they took effect (see
    :meth:`TaskStore.update_statuses`); one the task lifecycle refuses is logged, counted in
    :attr:`refused` and dropped, the rest of its batch written. While the database is down the buffer grows up to about
    ``max_pending`` items, those being written included; then producers wait for room (backpressure:
    the cluster loop stops settling, so it stops claiming) and, after ``full_timeout_s``, get a
    :class:`StoreError` for what they tried to add. What was accepted is never dropped.
    """

    def __init__(
        self,
        store: BatchTarget,
        *,
        max_batch: int = 1000,
        max_delay_s: float = 0.05,
        max_pending: int = 200_000,
        full_timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not (isinstance(max_batch, int) and max_batch >= 1):
            raise ValueError(f"BatchWriter.max_batch must be an int >= 1, got {max_batch!r}")
        if not max_delay_s > 0:
            raise ValueError(f"BatchWriter.max_delay_s must be > 0, got {max_delay_s!r}")
        if not (isinstance(max_pending, int) and max_pending >= max_batch):
            raise ValueError(f"BatchWriter.max_pending must be an int >= max_batch ({max_batch}), got {max_pending!r}")
        if not full_timeout_s >= 0:
            raise ValueError(f"BatchWriter.full_timeout_s must be >= 0, got {full_timeout_s!r}")
        self.store = store
        self.max_pending = max_pending
        self.full_timeout_s = float(full_timeout_s)
        self.max_batch = max_batch
        self.max_delay_s = float(max_delay_s)
        self.retry = retry if retry is not None else RetryPolicy(max_retries=5, base_s=0.05, jitter_s=0.05, cap_s=2.0)
        self._sleep = sleep
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._cond = threading.Condition()
        self._flush_lock = threading.Lock()  # one writer at a time keeps the order of status updates
        self._attempts: list[AttemptRecord] = []
        self._statuses: list[StatusUpdate] = []
        self._audit: list[AuditEvent] = []
        self._oldest_s: float | None = None
        self._writing = 0  # items a flush has taken out of the buffer and is writing
        self._retry_at: float | None = None  # clock time before which the thread does not retry
        self._closing = False
        self._closed = False
        self.failures = 0  # consecutive failed background flushes
        self.last_error: BaseException | None = None
        self.written: Counter[str] = Counter()  # items handed to the store, by kind
        self.refused = 0  # status updates the task lifecycle refused (logged, not written)
        self._thread = threading.Thread(target=self._run, name="store-batch-writer", daemon=True)
        self._thread.start()

    # -- producers ---------------------------------------------------------------------------
    def add_attempts(self, attempts: Iterable[AttemptRecord]) -> None:
        self._add("_attempts", list(attempts))

    def add_status(
        self,
        tenant: str,
        task_id: str,
        status: str,
        now_s: float,
        *,
        result: str | None = None,
        error: str | None = None,
    ) -> None:
        check_status(status)
        self._add("_statuses", [StatusUpdate(tenant, task_id, status, now_s, result, error)])

    def add_audit(self, events: Iterable[AuditEvent]) -> None:
        self._add("_audit", list(events))

    def _add(self, buffer_name: str, items: list) -> None:
        if not items:
            return
        with self._cond:
            # looked up under the lock: flush() swaps in new lists, and a list fetched before the
            # lock could be one flush() already took, whose late additions would never be written
            buffer = getattr(self, buffer_name)
            if self._closing:
                raise StoreError(f"{self.store.url_masked}: BatchWriter is closed; {len(items)} items refused")
            if self._held_locked() and self._held_locked() + len(items) > self.max_pending:
                self._wait_for_room(len(items))
                buffer = getattr(self, buffer_name)  # flush() may have swapped the lists meanwhile
            was_empty = self._pending_locked() == 0
            buffer.extend(items)
            if was_empty:
                self._oldest_s = self._clock()
            if was_empty or self._pending_locked() >= self.max_batch:
                self._cond.notify_all()

    def _wait_for_room(self, n: int) -> None:
        """Under the lock: wait until ``n`` more items fit (or the buffer is empty); StoreError after
        ``full_timeout_s``."""
        deadline = time.monotonic() + self.full_timeout_s
        while self._held_locked() and self._held_locked() + n > self.max_pending:
            self._cond.notify_all()  # the writer thread may be waiting for its delay
            left = deadline - time.monotonic()
            if left <= 0:
                why = f" (last error: {self.last_error})" if self.last_error is not None else ""
                raise StoreError(
                    f"{self.store.url_masked}: BatchWriter full: {self._held_locked()} items "
                    f"waiting to be written for over {self.full_timeout_s:g} s{why}; "
                    f"{n} more refused"
                )
            self._cond.wait(min(left, 0.5))

    @property
    def pending(self) -> int:
        with self._cond:
            return self._pending_locked()

    def _pending_locked(self) -> int:
        return len(self._attempts) + len(self._statuses) + len(self._audit)

    def _held_locked(self) -> int:
        """Items buffered or being written: what the ``max_pending`` bound counts."""
        return self._pending_locked() + self._writing

    # -- writing -----------------------------------------------------------------------------
    def flush(self) -> None:
        """Write everything buffered now; on failure raise :class:`StoreError`, items kept."""
        with self._flush_lock:
            with self._cond:
                attempts, statuses, audit = self._attempts, self._statuses, self._audit
                self._attempts, self._statuses, self._audit = [], [], []
                self._oldest_s = None
                self._writing = len(attempts) + len(statuses) + len(audit)
            if attempts or statuses or audit:
                try:
                    self._write(attempts, statuses, audit)
                finally:
                    with self._cond:
                        self._writing = 0  # written, or put back into the buffer by _write
                        self._cond.notify_all()  # producers waiting for room

    def _write(self, attempts: list, statuses: list, audit: list) -> None:
        """Write the three lists in chunks; on failure put back what was not written, in order."""
        done = {"attempts": 0, "statuses": 0, "audit": 0}
        try:
            for kind, items, write in (
                ("attempts", attempts, self.store.record_attempts),
                ("statuses", statuses, self._write_statuses),
                ("audit", audit, self.store.append_audit),
            ):
                for i in range(0, len(items), self.max_batch):
                    write(items[i : i + self.max_batch])
                    done[kind] = min(len(items), i + self.max_batch)
                    self.written[kind] += done[kind] - i
        except BaseException:
            with self._cond:
                self._attempts[:0] = attempts[done["attempts"] :]
                self._statuses[:0] = statuses[done["statuses"] :]
                self._audit[:0] = audit[done["audit"] :]
                if self._pending_locked():
                    self._oldest_s = self._clock() if self._oldest_s is None else self._oldest_s
            raise

    def _write_statuses(self, updates: Sequence[StatusUpdate]) -> None:
        # a step the task lifecycle refuses is a caller's mistake: logged and counted, never
        # retried (it would block every update behind it)
        for err in self.store.update_statuses(updates, skip_illegal=True):
            self.refused += 1
            log.warning("BatchWriter: status update refused: %s", err)

    def _due_in_s(self) -> float | None:
        """Seconds until a flush is due (0: now); None when nothing is pending. Under the lock."""
        pending = self._pending_locked()
        if pending == 0:
            return None
        now = self._clock()
        if self._retry_at is not None and now < self._retry_at:
            return self._retry_at - now  # backing off after a failed flush, however full the buffer
        if pending >= self.max_batch or self._oldest_s is None:
            return 0.0
        return max(0.0, self._oldest_s + self.max_delay_s - now)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closing:
                    due = self._due_in_s()
                    if due == 0.0:
                        break
                    self._cond.wait(due)
                if self._closing:
                    return  # close() does the last flush in the caller's thread, so it can raise
            try:
                self.flush()
                self.failures = 0
                self._retry_at = None
            except Exception as err:
                self.last_error = err
                delay_s = retry_delay_s(min(self.failures, 30), self._rng.random(), self.retry)
                self.failures += 1
                log.warning(
                    "BatchWriter: flush failed (%s); %d items kept, retry in %.2f s",
                    err,
                    self.pending,
                    delay_s,
                )
                with self._cond:
                    self._retry_at = self._clock() + delay_s

    def close(self) -> None:
        """Stop the background thread and write everything still buffered.

        Retries a failing flush up to ``retry.max_retries`` times with the shared backoff; if it
        still fails, raises :class:`StoreError` saying how many items were not written (they stay in
        :attr:`pending`, so a caller can try :meth:`flush` again). Does not close the store.
        """
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        for attempt in range(self.retry.max_retries + 1):
            try:
                self.flush()
                break
            except Exception as err:
                self.last_error = err
                if attempt == self.retry.max_retries:
                    raise StoreError(
                        f"{self.store.url_masked}: BatchWriter.close: {self.pending} items not "
                        f"written after {attempt + 1} tries: {err}"
                    ) from err
                self._sleep(retry_delay_s(attempt, self._rng.random(), self.retry))
        self._closed = True

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
