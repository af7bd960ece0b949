"""Batched, fenced completion of jobs.

Results queue up in memory and are written by one task with one `UPDATE ... FROM unnest`
per batch. Only one write is in flight at a time, so batches grow by themselves under load
(group commit) while a lone result is written at once. The UPDATE is fenced on (state,
attempt, actor): a claim that was rescued or handed back meanwhile matches no row, and is
reported as stale rather than overwriting a newer result. It looks for each claim's row
where the claim left it (the row version, resource_sql.BY_ROW_VERSION) when the worker
gave that with the result; the results it did not find there, and those given without
one, are written by id in a second statement (a row updated since its claim, such as by
a cancel request, is found only so), and only what that one does not find is stale.

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

Plain jobs' results, in a batch without effects, go over a connection of the completer's
own (`delta-results-NAMESPACE`, db/connection.OwnConnection), on which the statement by
row versions runs a generic plan, made once: that plan (a TID scan of the batch's row
versions, joined with its arrays) is the same whatever the batch or the table, and
planning it for every batch, as the pools do, took 0.25 ms of a 10-row batch's 0.8 ms.
The statement by id is sent there unprepared: planned for its parameters, as on a pool.
A write that failed or was interrupted closes that connection; the retry opens a new one.
Works' results, and every result of a batch with effects (one transaction), go through
the pool. Behind a transaction pooler (db/pooler.py) there is no such connection. A batch
of both commits twice, so a failure of its works' write leaves its plain jobs' results
written: those are reported written (PartlyWritten), and only the works are retried.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from delta_actors.cancellation import raise_if_cancelling
from delta_actors.config import DEFAULT_NAMESPACE
from delta_actors.db import job_sql, resource_sql
from delta_actors.db.connection import OwnConnection
from delta_actors.db.pooler import target
from delta_actors.health import Progress, describe, log_failure
from delta_actors.queue import results
from delta_actors.queue.results import JobResult, Result, WorkResult
from delta_actors.queue.runner import error_entry

logger = logging.getLogger(__name__)


class PartlyWritten(Exception):  # noqa: N818 (not an error of its own: `cause` is)
    """A batch's write failed after its plain jobs' results committed on the completer's
    own connection: `written` (of which `stale` were found stale) is not to be retried."""

    def __init__(self, cause: Exception, written: Sequence[Result], stale: set[int]) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.written = list(written)
        self.stale = stale


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
        dsn: str | None = None,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        self._pool = pool
        # Plain jobs' results, given `dsn` (see the module docstring); else the pool's.
        self._own: OwnConnection | None = None
        if dsn is not None and target(dsn).keeps_sessions:
            self._own = OwnConnection(
                dsn, f"delta-results-{namespace}", job_sql.RESULTS_CONNECTION_SETTINGS
            )
        self._actor_id = actor_id
        self._max_pending = max_pending
        self._on_written = on_written
        self._progress = progress or Progress("results", 1.0)
        self._pending: list[Result] = []
        self._tids: dict[int, str] = {}  # of pending results: where their claims left the rows
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

    async def add(self, result: Result, tid: str | None = None) -> None:
        """Queue `result`, of a claim that left its row at `tid` if given; waits while the
        backlog is full (backpressure on claiming)."""
        self._pending.append(result)
        if tid is not None:
            self._tids[result.id] = tid
        self._has_pending.set()
        self._idle.clear()
        if len(self._pending) >= self._max_pending:
            self._room.clear()
            await self._room.wait()

    async def run(self) -> None:
        """Write results until cancelled (after flush() has emptied the backlog)."""
        try:
            while True:
                raise_if_cancelling()
                await self._has_pending.wait()
                await self._write_pending()
        finally:
            if self._own is not None:
                await self._own.close()

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
        stale, _follow_ups = await self._write(batch, {})  # the Runner reads from no floor
        return stale

    async def _write_pending(self) -> None:
        delay = 0.05
        while self._pending:
            batch, self._pending = self._pending, []
            tids, self._tids = self._tids, {}
            self._has_pending.clear()
            self._writing = len(batch)
            self._batch = batch
            try:
                stale, follow_ups = await self._write(batch, tids)
            except Exception as exc:  # noqa: BLE001 (results are never dropped here)
                if isinstance(exc, PartlyWritten):
                    # Its plain jobs' results committed on their own connection: they
                    # are written, and written again they would only be found stale.
                    self._on_written(exc.written, exc.stale, set())
                    done = {r.id for r in exc.written}
                    batch = [r for r in batch if r.id not in done]
                    exc = exc.cause
                # Keep the batch, in front of what came since, and try again.
                self._pending = batch + self._pending
                self._tids.update(tids)  # none of these ids came again: their claims run on
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

    async def _write(self, batch: list[Result], tids: dict[int, str]) -> tuple[set[int], set[int]]:
        """Write `batch` (its claims' rows where `tids` says); return the ids of its stale
        results, and of its written works whose resource has a work queued and available
        (COMPLETE_WORKS says)."""
        follow_ups: set[int] = set()
        try:
            return await self._write_batch(batch, tids, follow_ups), follow_ups
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
            stale |= await self._write_batch(others, tids, follow_ups)
        for result in with_effects:
            assert isinstance(result, WorkResult)
            try:
                stale |= await self._write_batch([result], tids, follow_ups)
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
                stale |= await self._write_batch([refused], tids, follow_ups)
        return stale, follow_ups

    async def _write_batch(
        self, batch: list[Result], tids: dict[int, str], follow_ups: set[int]
    ) -> set[int]:
        """Write `batch` (one transaction if it has effects); return its stale ids, and add
        to `follow_ups` those of its written works with a work queued for their resource
        (an over-count if the transaction then fails: a floor moved back costs a read)."""
        jobs = [r for r in batch if isinstance(r, JobResult)]
        works = [r for r in batch if isinstance(r, WorkResult)]
        effects = _has_effects(works)
        if not jobs or self._own is None or effects:
            return await self._write_through_pool(jobs, works, tids, follow_ups, effects)
        stale = await self._write_jobs_on_own(jobs, tids)
        if not works:
            return stale
        try:
            return stale | await self._write_through_pool([], works, tids, follow_ups, False)
        except Exception as exc:
            raise PartlyWritten(exc, jobs, stale) from exc

    async def _write_through_pool(
        self,
        jobs: list[JobResult],
        works: list[WorkResult],
        tids: dict[int, str],
        follow_ups: set[int],
        effects: bool,
    ) -> set[int]:
        """Write `jobs` and `works` on a connection of the pool, in one transaction if
        `effects` (the works have some); return their stale ids (`follow_ups`: see
        _write_batch)."""
        stale: set[int] = set()
        async with self._pool.connection() as conn, _transaction_if(conn, effects):
            if jobs:
                missing, _ = await self._fenced(conn, _JOB_STATEMENTS, jobs, tids, job_params)
                stale |= missing
            if works:
                missing, rows = await self._fenced(
                    conn, _WORK_STATEMENTS, works, tids, work_params, rows_wanted=True
                )
                stale |= missing
                follow_ups.update(row[0] for row in rows if row[2])
            if effects:
                for result in works:
                    if result.id not in stale:
                        for effect in result.effects:
                            await effect.write(conn)
        return stale

    async def _write_jobs_on_own(self, jobs: list[JobResult], tids: dict[int, str]) -> set[int]:
        """Write plain jobs' results on the completer's own connection; their stale ids."""
        assert self._own is not None
        try:
            conn = await self._own.get()
            stale, _ = await self._fenced(
                conn, _JOB_STATEMENTS, jobs, tids, job_params, prepare_by_id=False
            )
        except BaseException:
            await self._own.close()
            raise
        return stale

    async def _fenced(
        self,
        conn: psycopg.AsyncConnection[Any],
        statements: tuple[LiteralString, LiteralString],
        batch: Sequence[_R],
        tids: dict[int, str],
        params_of: Callable[[list[_R], int], dict[str, object]],
        *,
        rows_wanted: bool = False,
        prepare_by_id: bool = True,
    ) -> tuple[set[int], list[tuple[Any, ...]]]:
        """Run one results statement for `batch`: by the row versions in `tids` (the first
        statement) for the results that have one, then by id (the second) for the others
        and for those not found there (see the module docstring). Return the ids of
        `batch` that neither wrote (stale), and, if `rows_wanted`, the rows written. The
        second is sent unprepared unless `prepare_by_id` (on a connection of generic plans,
        where the first alone is prepared).

        A statement returns each row it wrote once, so a row count equal to the batch's
        means none is stale, and then the rows are not read unless wanted (as a plain
        job's never are). On a pool's connection both are prepared, so the server parses
        each once, but planned on every execution (the pool's force_custom_plan): a
        generic plan of these unnest joins ran 2.5x slower. On the completer's own, the
        first runs its generic plan, a TID scan, which does not (module docstring)."""
        by_version, by_id = statements
        located = [r for r in batch if r.id in tids] if tids else []
        rest = [] if len(located) == len(batch) else [r for r in batch if r.id not in tids]
        rows: list[tuple[Any, ...]] = []
        missing: set[int] = set()
        if located:
            params = params_of(located, self._actor_id)
            params["tids"] = tid_literal([tids[r.id] for r in located])
            cur = await conn.execute(by_version, params, prepare=True)
            if rows_wanted or cur.rowcount < len(located):
                rows = await cur.fetchall()
            if cur.rowcount < len(located):
                found = {row[0] for row in rows}
                rest += [r for r in located if r.id not in found]
        if rest:
            cur = await conn.execute(by_id, params_of(rest, self._actor_id), prepare=prepare_by_id)
            if rows_wanted or cur.rowcount < len(rest):
                written = await cur.fetchall()
                rows += written
                if len(written) < len(rest):
                    missing = {r.id for r in rest} - {row[0] for row in written}
        return missing, rows


_R = TypeVar("_R", JobResult, WorkResult)
_JOB_STATEMENTS = (job_sql.COMPLETE_CLAIMED_JOBS, job_sql.COMPLETE_JOBS)
_WORK_STATEMENTS = (resource_sql.COMPLETE_CLAIMED_WORKS, resource_sql.COMPLETE_WORKS)


def _has_effects(batch: Sequence[Result]) -> bool:
    return any(isinstance(r, WorkResult) and r.effects for r in batch)


def _transaction_if(
    conn: psycopg.AsyncConnection[Any], wanted: bool
) -> AbstractAsyncContextManager[Any]:
    """A transaction of `conn` when `wanted`; else each statement commits by itself."""
    return conn.transaction() if wanted else nullcontext()


def job_params(batch: list[JobResult], actor: int | list[int]) -> dict[str, object]:
    """Parameters of COMPLETE_JOBS for results of claims held by `actor` (a list of
    actors: COMPLETE_JOBS_OF_ACTORS, rescue's)."""
    return {
        "ids": array_literal([r.id for r in batch]),
        "attempts": array_literal([r.attempt for r in batch]),
        "states": array_literal([r.state for r in batch]),
        "delays": array_literal([r.delay for r in batch]),
        "errors": _errors(batch),
        "counts_attempts": array_literal([r.counts_attempt for r in batch]),
        **fence_params(actor),
    }


def work_params(batch: list[WorkResult], actor: int | list[int]) -> dict[str, object]:
    """Parameters of COMPLETE_WORKS for results of claims held by `actor` (a list of
    actors: COMPLETE_WORKS_OF_ACTORS, rescue's)."""
    return {
        "ids": array_literal([r.id for r in batch]),
        "attempts": array_literal([r.attempt for r in batch]),
        "generations": array_literal([r.generation for r in batch]),
        "job_states": array_literal([r.job_state for r in batch]),
        "resource_states": array_literal([r.resource_state for r in batch]),
        "counts_attempts": array_literal([r.counts_attempt for r in batch]),
        "delays": array_literal([r.delay for r in batch]),
        "errors": _errors(batch),
        **fence_params(actor),
    }


def fence_params(actor: int | list[int]) -> dict[str, object]:
    """The fence's parameter: one actor (resource_sql.CLAIM_FENCE) or several
    (resource_sql.CLAIMS_OF_ACTORS_FENCE)."""
    if isinstance(actor, list):
        return {"actors": array_literal(actor)}
    return {"actor": actor}


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


def tid_literal(tids: Sequence[str]) -> str:
    """Row versions ("(page,item)", as a claim returns them) as a PostgreSQL tid[] literal."""
    return '{"' + '","'.join(tids) + '"}' if tids else "{}"


def _errors(batch: Sequence[Result]) -> list[str | None] | None:
    """The batch's encoded errors, for a binary jsonb[]; None when it has none."""
    errors = [r.error for r in batch]
    return errors if any(e is not None for e in errors) else None
