"""Claim floors: where a producer's claim starts reading the queue, so that dead row
versions behind it cost nothing.

The problem. The claim reads the claim index (`delta_job_claim_idx`: hashtext(namespace),
priority, scheduled_at, id; only `available` rows) from the oldest entry. Every claim
leaves the entries of the rows it took behind, pointing at row versions that are dead
once the claim commits. Normally the next scan that meets them marks them dead in the
index and vacuum removes them. But while any transaction holds a snapshot older than
those claims (a long report, a session left `idle in transaction`, a replication slot
catching up), PostgreSQL may neither mark nor remove them: each claim reads them all
again, one heap visit each, and the claim's cost grows with the time the snapshot has
been held (measured: 0.15 µs per dead version; 880,000 of them after ten minutes at
1,500 jobs/s made a claim take 110 ms, and the queue backed up).

The design. A producer keeps, per priority (1 to 4, the table's CHECK), a floor: a time
such that it reads only `scheduled_at >= floor` of that priority. The claim index is
ordered by (priority, scheduled_at) within a namespace, so each priority's read starts
at its floor (one index descent) and never sees the dead entries below it.

- A claim that takes rows of a priority raises that priority's floor to the oldest
  scheduled_at it took, less `margin` (1 s): the claim reads in scheduled_at order, so
  every claimable row it did not take lies at or above that point, but for rows written
  by transactions still open. Those carry the time their transaction started and appear
  when it commits; the margin lets the usual ones (an inform or enqueue and its commit
  within a second) be found by the next claim. The floor never moves down on a claim.
- What can still lie below a floor, claimable: a row committed more than `margin` after
  its transaction started; a row another producer had locked (SKIP LOCKED) whose claim
  then failed; a row a claim locked but did not take (another transaction updated it
  during the claim, job_sql._claim); a resource's queued work that was skipped while its
  previous work ran (coalescing); a row handed back or rescued, or enqueued with a
  scheduled_at in the past, which keeps its old time. So:
  - when a resource work's result is written here and its resource has a work queued
    and available (COMPLETE_WORKS says so of each row it writes), the floor of its
    priority moves down to where that work's claim read from (`rewind`): a follow-up
    queued while it ran was informed after it was claimed, so it lies above that point.
    Only then: moving back for every work made each next claim read again all that was
    claimed since, which a held snapshot keeps as dead row versions (resource works fell
    behind at the fourth minute of a held snapshot at 1,500 works/s). A follow-up whose
    inform commits after the result's statement began is not seen there; the sweep
    finds it;
  - the sweep (`Sweeper`, a component of the worker) reads, every `sweep_interval`
    (1 s) on a pooled connection, the oldest claimable row of each priority, and sets
    the floor to it (down or up), or, with none, to the sweep's time less the margin.
    So a producer that claims nothing (another took every job) still keeps its floors
    near the present. This read does cross the dead entries, but off the claim's path:
    claims keep their cost, and the sweep waits ten times as long as its last read
    took (at most 5 s), so it uses about a tenth of one connection's time. A row below
    a floor is claimed at the latest one sweep after it became claimable.
- Floors start at the beginning of time, so a new producer first reads everything.
- A claim's raise is noted (`claimed`) and made later (`settle`): the worker settles once
  the claim's runs have started, so that the raise is not on their way (after the loop
  has idled between claims, its datetime and text work took some 30 us a claim, where a
  warm loop takes 2). Every read and every other change of the floors settles first, so
  the floors are always as if each raise had been made the moment its claim returned:
  a rewind after a claim lowers what that claim raised, never the other way round.

Invariants:
- No job is skipped: every claimable row is at or above its priority's floor at the
  next claim, or is found by the next sweep (which lowers the floor to it).
- No job is claimed twice: floors only narrow what a claim reads; the claim's locking
  (FOR UPDATE SKIP LOCKED, then the state = 'available' test on the locked row) is
  unchanged.
- Priorities keep their order: a claim reads priority 1 from its floor, then 2, and so
  on, until it has the rows it wants.

Limited kinds (queue/claimer.py) keep floors of their own: one set per limited kind and
one for the other kinds together (a "shape"), since each is a claim of its own over a
part of the queue. The sweep reads each shape's part below that shape's floors, so that
a limited kind's backlog waiting for its limit never pulls the other kinds' floors down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

from psycopg_pool import AsyncConnectionPool

from delta_actors.cancellation import raise_if_cancelling
from delta_actors.db import job_sql
from delta_actors.health import Progress, log_failure

logger = logging.getLogger(__name__)

PRIORITIES = (1, 2, 3, 4)
FLOOR_MARGIN = 1.0  # seconds a transaction may take between its write and its commit
SWEEP_INTERVAL = 1.0  # seconds between sweeps at least
SWEEP_SHARE = 10.0  # a sweep waits this many times as long as the last one took...
SWEEP_MAX_WAIT = 5.0  # ...but never longer than this (seconds), so it never looks stalled

_START = datetime(1, 1, 2, tzinfo=UTC)  # before any scheduled_at (a day spare for zones)
_NEVER = float("inf")
# Where a claim's row has its priority and its scheduled_at (job_sql._claim's layout).
_PRIORITY = itemgetter(6)
_EPOCH = itemgetter(7)

# The floors of the other kinds' claim (an app without limits has only this set).
UNLIMITED = ""


def shape_of(kind: str, limited: Collection[str]) -> str:
    """The claim shape whose floors a job of `kind` is claimed from."""
    return kind if kind in limited else UNLIMITED


class Floors:
    """Per claim shape (UNLIMITED or a limited kind), a floor per priority."""

    def __init__(self, margin: float = FLOOR_MARGIN) -> None:
        self._margin = timedelta(seconds=margin)
        self._floors: dict[str, list[datetime]] = {}
        self._texts: dict[str, list[str]] = {}  # each floor's text in its shape's literal
        self._literals: dict[str, str] = {}  # of shapes whose floors have not moved since
        self._taken: list[tuple[str, Sequence[Sequence[Any]]]] = []  # claims not settled

    def of(self, shape: str = UNLIMITED) -> list[datetime]:
        """The floors of one claim shape, priority 1 first; only this class changes them."""
        if self._taken:
            self.settle()
        floors = self._floors.get(shape)
        if floors is None:
            floors = self._floors[shape] = [_START] * len(PRIORITIES)
            self._texts[shape] = [_START.isoformat()] * len(PRIORITIES)
        return floors

    def literal(self, shape: str = UNLIMITED) -> str:
        """The floors of `shape` as a PostgreSQL array literal: the claim statements'
        parameter. Kept until a floor moves, and then made of each floor's text, made
        when that floor moved: psycopg takes 16 us to dump the list of timestamps, a text
        of the four 3.4 us, the text of one 0.8 us, joining them 0.2 us."""
        if self._taken:
            self.settle()
        literal = self._literals.get(shape)
        if literal is None:
            self.of(shape)
            literal = "{" + ",".join(self._texts[shape]) + "}"
            self._literals[shape] = literal
        return literal

    def _move(self, shape: str, i: int, floor: datetime) -> None:
        """Set floor `i` of `shape` (made by of()): the one place a floor changes."""
        self._floors[shape][i] = floor
        self._texts[shape][i] = floor.isoformat()
        self._literals.pop(shape, None)

    def lowest(self) -> list[datetime]:
        """The lowest floor of each priority over every shape."""
        if self._taken:
            self.settle()
        shapes = list(self._floors.values()) or [self.of()]
        return [min(floors[i] for floors in shapes) for i in range(len(PRIORITIES))]

    def claimed(self, shape: str, rows: Sequence[Sequence[Any]]) -> None:
        """Note what a claim of `shape` took, its rows as the claim statements return
        them (job_sql._claim): the floors rise past it at the next settle()."""
        if rows:
            self._taken.append((shape, rows))

    def settle(self) -> None:
        """Raise the floors past every claim noted since the last settle, in order."""
        taken, self._taken = self._taken, []
        for shape, rows in taken:
            self._raise(shape, rows)

    def _raise(self, shape: str, rows: Sequence[Sequence[Any]]) -> None:
        """Raise the floors of `shape` past what a claim took: of its rows the floors read
        the priority and the scheduled_at in seconds since the epoch.

        Made a time again rounded to the microsecond, which gives back the stored time
        exactly for any time from 1834 to 2106 (an epoch below 2^32 seconds either way,
        which a float8 holds to within half a microsecond); a time outside may come back
        a few microseconds high, which at worst leaves a row of that very time to the
        sweep. A claim of one priority, the usual one, is read with C's loops (map,
        count, min): 6 us a claim of 100 rows, where a loop in Python took 27 us.
        """
        priorities = list(map(_PRIORITY, rows))
        first = priorities[0]
        if priorities.count(first) == len(priorities):
            oldest = {first: min(map(_EPOCH, rows))}
        else:
            oldest = {}
            for priority, scheduled_at in zip(priorities, map(_EPOCH, rows), strict=True):
                if scheduled_at < oldest.get(priority, _NEVER):
                    oldest[priority] = scheduled_at
        floors = self.of(shape)
        for priority, scheduled_at in oldest.items():
            i = priority - 1
            raised = datetime.fromtimestamp(scheduled_at, UTC) - self._margin
            if raised > floors[i]:
                self._move(shape, i, raised)

    def rewind(self, shape: str, priority: int, floor_at: datetime) -> None:
        """Lower the floor of `priority` in `shape` to `floor_at`, where a claim read from."""
        if floor_at < self.of(shape)[priority - 1]:
            self._move(shape, priority - 1, floor_at)

    def swept(self, shape: str, priority: int, oldest: datetime | None, now: datetime) -> bool:
        """Set a floor from a sweep: to the oldest claimable row, or with none to `now`
        less the margin; return whether the floor went down (a row below it)."""
        floors = self.of(shape)
        i = priority - 1
        if oldest is None:
            if now - self._margin > floors[i]:
                self._move(shape, i, now - self._margin)
            return False
        lowered = oldest < floors[i]
        if oldest != floors[i]:
            self._move(shape, i, oldest)
        return lowered


class Sweeper:
    """Sets the floors to the oldest claimable rows (see the module docstring)."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        namespace: str,
        floors: Floors,
        limited: Callable[[], list[str]],
        on_found: Callable[[], None],
        *,
        interval: float = SWEEP_INTERVAL,
        progress: Progress | None = None,
    ) -> None:
        self._pool = pool
        self._namespace = namespace
        self._floors = floors
        self._limited = limited  # the limited kinds of the app (each a shape of its own)
        self._on_found = on_found  # called after a sweep lowered a floor (wakes the producer)
        self._interval = interval
        self.progress = progress or Progress("sweep", interval)
        self.sweeps = 0
        self.failures = 0  # sweeps that failed (logged; the next one tries again)
        self.found = 0  # rows found below a floor (tests and metrics read it)

    async def run(self) -> None:
        """Sweep until cancelled; a failed sweep is logged and tried again."""
        wait = 0.0
        while True:
            raise_if_cancelling()
            await asyncio.sleep(wait)
            started = time.monotonic()
            try:
                await self.sweep()
            except Exception as exc:  # noqa: BLE001 (the next sweep tries again; logged)
                self.failures += 1
                self.progress.failed(exc)
                log_failure(
                    logger, "sweeping below the claim floors failed", exc, "worker.sweep_failed",
                    namespace=self._namespace,
                )  # fmt: skip
            else:
                self.progress.ok()
            took = time.monotonic() - started
            wait = min(max(self._interval, SWEEP_SHARE * took), max(self._interval, SWEEP_MAX_WAIT))
            wait -= took

    async def sweep(self) -> int:
        """One sweep; return how many floors it lowered to a claimable row below them."""
        limited = self._limited()
        found = 0
        async with self._pool.connection() as conn:
            for shape in [UNLIMITED, *limited]:
                params = {
                    "namespace": self._namespace,
                    "kind": shape or None, "limited": [] if shape else limited,
                }  # fmt: skip
                cur = await conn.execute(job_sql.FIND_OLDEST_CLAIMABLE_JOBS, params)
                for priority, oldest, now in await cur.fetchall():
                    found += self._floors.swept(shape, priority, oldest, now)
        self.sweeps += 1
        if found:
            self.found += found
            self._on_found()
        return found
