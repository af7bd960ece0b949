"""Cluster-wide limits of a kind: `concurrency` (works or jobs running at once) and `rate`
(starts per sliding window), declared on a Controller or a Job type.

    class ApiController(delta.Controller[Account]):
        concurrency = 5          # at most 5 works of this kind run at once, cluster-wide
        rate = (100, 60.0)       # at most 100 started in any 60 s, cluster-wide

    class CallApi(delta.Job, kind="call-api", concurrency=5, rate=(100, 60.0)): ...

How the claim enforces them is in queue/claimer.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from delta_actors.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Limit:
    """A kind's limits; a None field does not limit."""

    concurrency: int | None = None
    rate_count: int | None = None
    rate_window: float | None = None


def check_limit(concurrency: object, rate: object, where: str) -> Limit | None:
    """Validate a declaration; None when it limits nothing. Raise naming the fix."""
    if concurrency is not None and not (
        isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1
    ):
        raise ConfigError(f"{where} concurrency must be an int >= 1 (or None), got {concurrency!r}")
    count = window = None
    if rate is not None:
        if not (isinstance(rate, tuple) and len(rate) == 2):
            raise ConfigError(
                f"{where} rate must be (count, seconds), e.g. (100, 60.0), got {rate!r}"
            )
        count, window = rate
        if not (isinstance(count, int) and not isinstance(count, bool) and count >= 1):
            raise ConfigError(f"{where} rate count must be an int >= 1, got {count!r}")
        if not (isinstance(window, int | float) and math.isfinite(window) and window > 0):
            raise ConfigError(f"{where} rate window must be > 0 seconds, got {window!r}")
        window = float(window)
    if concurrency is None and count is None:
        return None
    return Limit(concurrency, count, window)
