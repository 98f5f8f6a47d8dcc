"""The live executor cluster (Ray actors, Redis queue, MySQL results, Prometheus metrics).

Not built yet (issue 4). It will reuse the domain model in :mod:`core.domain`, the retry policy
in :mod:`core.retry`, the circuit breaker and the priority score, exactly as the simulator does.
"""
