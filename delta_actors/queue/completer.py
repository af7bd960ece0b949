"""Batched, fenced completion of jobs.

Results queue up in memory and are written by one task with one `UPDATE ... FROM unnest`
per batch. Only one write is in flight at a time, so batches grow by themselves under load
(group commit) while a lone result is written at once. The UPDATE is fenced on (state,
attempt, actor): a claim that was rescued or handed back meanwhile matches no row, and is
reported as stale rather than overwriting a newer result.

A failed write keeps its batch and is retried with backoff; a result is only dropped when
the owner gives up at its stop deadline, and then rescue runs the job again (at least once).

A batch in which some work result carries effects (`delta.work_context()`) is written in
one transaction: the fenced statements first, then the effects of the results they
wrote, in batch order. A stale result's effects are not written; a batch that fails is
rolled back whole and retried, so a written result's effects are written exactly once.
Effects lock the resources they inform after the results' resources: two such batches
can deadlock, which PostgreSQL breaks by failing one, retried like any failed write.
An effect the database refuses (an error that is not a lost connection, a deadlock or
a serialization failure: a trigger, a constraint) would fail its batch forever: the
batch is then written result by result, and a result whose effects are refused again
is written as a failure of its work instead (`results.effects_refused`), without them.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from delta_actors.cancellation import raise_if_cancelling
from delta_actors.db import job_sql, resource_sql
from delta_actors.health import Progress, describe, log_failure
from delta_actors.queue import results
from delta_actors.queue.results import JobResult, Result, WorkResult
from delta_actors.queue.runner import error_entry

logger = logging.getLogger(__name__)


class Completer:
    """Writes job results in batches for one actor."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        actor_id: int,
        *,
        max_pending: int,
        on_written: Callable[[list[Result], set[int], set[int]], None],
        progress: Progress | None = None,
    ) -> None:
        self._pool = pool
        self._actor_id = actor_id
        self._max_pending = max_pending
        self._on_written = on_written
        self._progress = progress or Progress("results", 1.0)
        self._pending: list[Result] = []
        self._has_pending = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._writing = 0
        self._batch: list[Result] = []  # the batch being written
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def backlog(self) -> int:
        """Results not yet written."""
        return len(self._pending) + self._writing

    @property
    def unwritten(self) -> set[int]:
        """Job ids whose results are queued or being written."""
        return {r.id for r in self._pending} | {r.id for r in self._batch}

    async def add(self, result: Result) -> None:
        """Queue `result`; waits while the backlog is full (backpressure on claiming)."""
        self._pending.append(result)
        self._has_pending.set()
        self._idle.clear()
        if len(self._pending) >= self._max_pending:
            self._room.clear()
            await self._room.wait()

    async def run(self) -> None:
        """Write results until cancelled (after flush() has emptied the backlog)."""
        while True:
            raise_if_cancelling()
            await self._has_pending.wait()
            await self._write_pending()

    async def flush(self, timeout: float) -> bool:
        """Wait until every queued result is written, at most `timeout` seconds.

        run() does the writing; a write is never interrupted halfway, so a result is
        either written or still pending, never lost in between.
        """
        try:
            await asyncio.wait_for(self._idle.wait(), max(timeout, 0.0))
        except TimeoutError:
            return False
        return True

    async def write(self, batch: list[Result]) -> set[int]:
        """Write `batch` now, on the caller's task; return the ids found stale.

        The test Runner's path (delta_actors.testing): the same statements, effects and
        fallbacks as run(), with no queue, no retry and no callback; errors raise.
        """
        stale, _follow_ups = await self._write(batch)  # the Runner reads from no floor
        return stale

    async def _write_pending(self) -> None:
        delay = 0.05
        while self._pending:
            batch, self._pending = self._pending, []
            self._has_pending.clear()
            self._writing = len(batch)
            self._batch = batch
            try:
                stale, follow_ups = await self._write(batch)
            except Exception as exc:  # noqa: BLE001 (results are never dropped here)
                # Keep the batch, in front of what came since, and try again.
                self._pending = batch + self._pending
                self._has_pending.set()
                self._progress.failed(exc)
                log_failure(
                    logger, f"writing {len(batch)} job results failed, retrying in {delay:.2f}s",
                    exc, "completer.retry",
                )  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            finally:
                self._writing = 0
                self._batch = []
            self._progress.ok()
            if len(self._pending) < self._max_pending:
                self._room.set()
            self._on_written(batch, stale, follow_ups)
        self._idle.set()

    async def _write(self, batch: list[Result]) -> tuple[set[int], set[int]]:
        """Write `batch`; return the ids of its stale results, and of its written works
        whose resource has a work queued and available (COMPLETE_WORKS says)."""
        follow_ups: set[int] = set()
        try:
            return await self._write_batch(batch, follow_ups), follow_ups
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) or not _has_effects(batch):
                raise
            log_failure(
                logger, f"writing {len(batch)} job results with effects failed; writing "
                "them one by one", exc, "completer.effects_refused",
            )  # fmt: skip
        stale = set()
        with_effects = [r for r in batch if _has_effects([r])]
        others = [r for r in batch if not _has_effects([r])]
        if others:
            stale |= await self._write_batch(others, follow_ups)
        for result in with_effects:
            assert isinstance(result, WorkResult)
            try:
                stale |= await self._write_batch([result], follow_ups)
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.OperationalError):
                    raise
                logger.error(
                    "the effects of work %d were refused, so the work fails: %s",
                    result.id, describe(exc),
                    extra={"event": "completer.effects_refused", "job_id": result.id},
                )  # fmt: skip
                message = f"its effects were refused by the database: {describe(exc)}"
                error = error_entry(result.attempt, exc, message)
                refused = results.effects_refused(result, error)
                stale |= await self._write_batch([refused], follow_ups)
        return stale, follow_ups

    async def _write_batch(self, batch: list[Result], follow_ups: set[int]) -> set[int]:
        """Write `batch` (one transaction if it has effects); return its stale ids, and add
        to `follow_ups` those of its written works with a work queued for their resource
        (an over-count if the transaction then fails: a floor moved back costs a read)."""
        jobs = [r for r in batch if isinstance(r, JobResult)]
        works = [r for r in batch if isinstance(r, WorkResult)]
        stale: set[int] = set()
        effects = _has_effects(works)
        async with self._pool.connection() as conn, _transaction_if(conn, effects):
            if jobs:
                # Prepared, so the server parses it once, but planned on every execution
                # (the pool's force_custom_plan): a generic plan of these unnest joins
                # ran 2.5x slower.
                cur = await conn.execute(
                    job_sql.COMPLETE_JOBS, job_params(jobs, self._actor_id), prepare=True
                )
                stale |= await _not_written(cur, jobs)
            if works:
                cur = await conn.execute(
                    resource_sql.COMPLETE_WORKS, work_params(works, self._actor_id), prepare=True
                )
                rows = await cur.fetchall()
                stale |= {r.id for r in works} - {row[0] for row in rows}
                follow_ups.update(row[0] for row in rows if row[2])
            if effects:
                for result in works:
                    if result.id not in stale:
                        for effect in result.effects:
                            await effect.write(conn)
        return stale


def _has_effects(batch: Sequence[Result]) -> bool:
    return any(isinstance(r, WorkResult) and r.effects for r in batch)


def _transaction_if(
    conn: psycopg.AsyncConnection[Any], wanted: bool
) -> AbstractAsyncContextManager[Any]:
    """A transaction of `conn` when `wanted`; else each statement commits by itself."""
    return conn.transaction() if wanted else nullcontext()


def job_params(batch: list[JobResult], actor_id: int) -> dict[str, object]:
    """Parameters of COMPLETE_JOBS for results of claims held by `actor_id`."""
    return {
        "ids": array_literal([r.id for r in batch]),
        "attempts": array_literal([r.attempt for r in batch]),
        "states": array_literal([r.state for r in batch]),
        "delays": array_literal([r.delay for r in batch]),
        "errors": _errors(batch),
        "counts_attempts": array_literal([r.counts_attempt for r in batch]),
        "actor": actor_id,
    }


def work_params(batch: list[WorkResult], actor_id: int) -> dict[str, object]:
    """Parameters of COMPLETE_WORKS for results of claims held by `actor_id`."""
    return {
        "ids": array_literal([r.id for r in batch]),
        "attempts": array_literal([r.attempt for r in batch]),
        "generations": array_literal([r.generation for r in batch]),
        "job_states": array_literal([r.job_state for r in batch]),
        "resource_states": array_literal([r.resource_state for r in batch]),
        "counts_attempts": array_literal([r.counts_attempt for r in batch]),
        "delays": array_literal([r.delay for r in batch]),
        "errors": _errors(batch),
        "actor": actor_id,
    }


def array_literal(values: Sequence[int | float | enum.StrEnum | None]) -> str | None:
    """`values` as a PostgreSQL array literal; None (a NULL array) if every one is None.

    For numbers, booleans and enum labels only, none of which needs quoting: joining them
    here costs a few percent of psycopg dumping a list, which it does element by element
    in Python, a good part of a worker's CPU per job. The statements unnest these arrays
    side by side, and unnest pads a NULL array with NULLs.
    """
    if None not in values:
        return "{" + ",".join(map(str, values)) + "}"
    if all(v is None for v in values):
        return None
    return "{" + ",".join("NULL" if v is None else str(v) for v in values) + "}"


def _errors(batch: Sequence[Result]) -> list[str | None] | None:
    """The batch's encoded errors, for a binary jsonb[]; None when it has none."""
    errors = [r.error for r in batch]
    return errors if any(e is not None for e in errors) else None


async def _not_written(cur: psycopg.AsyncCursor[Any], batch: list[Any]) -> set[int]:
    """Return the ids of `batch` that the fenced statement did not write (stale claims)."""
    if cur.rowcount == len(batch):
        return set()
    written = {row[0] for row in await cur.fetchall()}
    return {r.id for r in batch} - written
