"""Downstream services (payment, inventory, shipping) for demos and tests, simulated in-process.

Their latency and failure parameters are the task type's ``steps`` (:class:`core.config.StepConfig`),
the same definitions the simulator's attempt table is built from. A call goes through the circuit
breaker (:mod:`core.circuit_breaker`) and a client timeout; the caller applies the shared retry
policy (:mod:`core.retry`) to what comes back.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass

from core.circuit_breaker import Breaker, BreakerConfig, allow_call, record_result
from core.config import StepConfig
from core.retry import ErrorKind


class CallFailed(Exception):
    def __init__(self, service: str, kind: ErrorKind, message: str) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.kind = kind


@dataclass
class SimulatedService:
    """One downstream service with lognormal latency, failures and a client timeout."""

    name: str
    step: StepConfig
    rng: random.Random
    time_scale: float = 1.0  # < 1 runs the latencies faster (tests, benchmarks)

    def _latency_s(self) -> float:
        m, cv = self.step.mean_s, self.step.cv
        if cv == 0:
            return m
        sigma2 = math.log1p(cv * cv)
        return self.rng.lognormvariate(math.log(m) - sigma2 / 2, math.sqrt(sigma2))

    async def call(self) -> None:
        latency = self._latency_s()
        if latency > self.step.call_timeout_s:
            await asyncio.sleep(self.step.call_timeout_s * self.time_scale)
            raise CallFailed(self.name, ErrorKind.TIMEOUT, f"timed out after {self.step.call_timeout_s:g} s")
        await asyncio.sleep(latency * self.time_scale)
        u = self.rng.random()
        if u < self.step.permanent_failure:
            raise CallFailed(self.name, ErrorKind.PERMANENT, "rejected (permanent)")
        if u < self.step.permanent_failure + self.step.transient_failure:
            raise CallFailed(self.name, ErrorKind.TRANSIENT, "unavailable (transient)")


class GuardedClient:
    """A service behind a circuit breaker: fails fast while the breaker is open."""

    def __init__(self, service: SimulatedService, breaker: BreakerConfig | None = None) -> None:
        self.service = service
        self.cfg = breaker or BreakerConfig()
        self.breaker = Breaker()

    async def call(self) -> None:
        allowed, self.breaker = allow_call(self.breaker, time.monotonic(), self.cfg)
        if not allowed:
            raise CallFailed(self.service.name, ErrorKind.TRANSIENT, "circuit open")
        try:
            await self.service.call()
        except CallFailed:
            self.breaker = record_result(self.breaker, False, time.monotonic(), self.cfg)
            raise
        self.breaker = record_result(self.breaker, True, time.monotonic(), self.cfg)

    @property
    def state(self) -> str:
        return self.breaker.state.value
