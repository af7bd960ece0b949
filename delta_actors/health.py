"""Health as progress: what each long-running component of an actor last got done.

A lease renewed or a heartbeat sent says a process lives, not that it works: the leader
that led this design kept renewing its lease while every duty had died. So each
component that does a unit of work again and again (a leader duty, a worker's claims,
its result writes, its LISTEN) owns a `Progress`, and says after each unit:

- `ok()`: a unit of work done (a pass of a duty, a claim, a batch written);
- `failed(exc)`: an attempt failed; the loop goes on (the error is kept for status);
- `crashed(exc)`: the component's task ended (its owner restarts it, see leader/duties.py).

A component is *idle* when it has nothing to do (a completer with no results queued, a
listener that listens): it cannot fall behind, so its time since progress is 0. Otherwise
it is *stalled* once it made no progress for `stall_after` seconds: STALL_INTERVALS of its
interval, at least STALL_MINIMUM. Nothing here acts on a stall; owners do: the supervisor
restarts a leader that holds the lease while a duty is stalled.

Snapshots (`ComponentHealth`) ride on the actor's Heartbeat frame, are stored in
`delta_actor.health` by each database heartbeat, and `delta-actors status` shows them.
Times are monotonic and relative ("seconds since"), so no clocks need to agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import msgspec
import psycopg

from delta_actors.errors import DatabaseError

STALL_INTERVALS = 5
STALL_MINIMUM = 10.0  # seconds
ERROR_LENGTH = 500  # characters of the last error kept


class ComponentHealth(msgspec.Struct, frozen=True, kw_only=True):
    """One component's progress at the moment of a heartbeat."""

    name: str
    interval: float  # seconds between its units of work (or checks for work)
    stall_after: float  # seconds without progress after which it counts as stalled
    since_progress: float  # seconds since its last progress (0 while idle)
    failures: int  # failed attempts since its last progress
    restarts: int  # times its task ended and was started again
    last_error: str = ""
    error_age: float | None = None  # seconds since last_error

    @property
    def is_stalled(self) -> bool:
        """Whether it made no progress for longer than it may."""
        return self.since_progress > self.stall_after


def describe(exc: BaseException) -> str:
    """`Type: message`, never an empty reason (a bare TimeoutError prints nothing)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Progress:
    """What one component got done, and when; see the module docstring."""

    def __init__(
        self,
        name: str,
        interval: float,
        *,
        is_idle: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.interval = interval
        self.stall_after = max(STALL_INTERVALS * interval, STALL_MINIMUM)
        self._is_idle = is_idle
        self._clock = clock
        self._since = clock()  # progress is owed from here on
        self.failures = 0
        self.restarts = 0
        self.crashes_in_a_row = 0  # crashes with no progress in between
        self.last_error = ""
        self._error_at: float | None = None

    def start(self) -> None:
        """The component (re)starts: progress is owed from now on."""
        self._since = self._clock()

    def ok(self) -> None:
        """A unit of work was done."""
        self._since = self._clock()
        self.failures = 0
        self.crashes_in_a_row = 0

    def failed(self, exc: BaseException) -> None:
        """An attempt failed; the component carries on."""
        self.failures += 1
        self.last_error = describe(exc)[:ERROR_LENGTH]
        self._error_at = self._clock()

    def crashed(self, exc: BaseException) -> None:
        """The component's task ended with `exc`; its owner restarts it."""
        self.failed(exc)
        self.restarts += 1
        self.crashes_in_a_row += 1

    def since_progress(self) -> float:
        """Seconds since the last progress; 0 while the component is idle."""
        if self._is_idle is not None and self._is_idle():
            return 0.0
        return max(0.0, self._clock() - self._since)

    @contextlib.asynccontextmanager
    async def deadline(self) -> AsyncIterator[None]:
        """Bound one pass to half the stall time: a hung statement costs a pass, not the
        component. Raises TimeoutError saying so."""
        limit = self.stall_after / 2
        try:
            async with asyncio.timeout(limit):
                yield
        except TimeoutError as exc:
            raise TimeoutError(f"{self.name}: a pass took longer than {limit:g}s") from exc

    def snapshot(self) -> ComponentHealth:
        """The component's health now."""
        now = self._clock()
        return ComponentHealth(
            name=self.name,
            interval=self.interval,
            stall_after=self.stall_after,
            since_progress=self.since_progress(),
            failures=self.failures,
            restarts=self.restarts,
            last_error=self.last_error,
            error_age=None if self._error_at is None else now - self._error_at,
        )


def log_failure(
    log: logging.Logger, what: str, exc: BaseException, event: str, **extra: object
) -> None:
    """Log a failed pass of a loop: an expected operational error in a line, else loudly.

    Connection losses and timeouts happen in normal operation (PostgreSQL restarts, a
    backend terminated) and are retried: one warning line each. Anything else is a bug or
    a surprise: logged at error with its traceback, and the loop still goes on.
    """
    if isinstance(exc, psycopg.Error | DatabaseError | OSError | TimeoutError):
        log.warning("%s: %s", what, describe(exc), extra={"event": event, **extra})
    else:
        log.error("%s: %s", what, describe(exc), exc_info=exc, extra={"event": event, **extra})
