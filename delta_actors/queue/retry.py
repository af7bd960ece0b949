"""Retry backoff: exponential in the attempt number, with jitter."""

from __future__ import annotations

import random

MAX_RETRY_DELAY = 24 * 3600.0  # seconds


def retry_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt `attempt + 1`: attempt**4, capped, +-10% jitter.

    Jitter spreads the retries of jobs that failed together (an outage) so that they do
    not all come back in the same second.
    """
    base = min(float(attempt) ** 4, MAX_RETRY_DELAY)
    jitter = (rng or random).uniform(-0.1, 0.1)
    return max(0.5, base * (1.0 + jitter))
