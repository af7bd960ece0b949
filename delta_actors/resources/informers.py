"""Informer scheduling: each controller's `inform` runs on its interval, one at a time.

Only the leader runs informers, so at most one run per kind happens across the cluster;
every write that a stale leader could get wrong (starting a run, advancing the cursor,
tombstones) is fenced on the leader's term in SQL.

A run of kind K:
1. START_INFORMER claims the due run (or the one a client asked for with
   `run_informer`, clearing the request), records it in `delta_informer_run`, and reads
   the cursor. The run is a full listing (`after` None, `full` True) the first time, on a
   request for one, and every `full_interval` seconds when the controller sets one;
   otherwise it lists changes after the cursor. A kind runs at most once at a time: a
   request that arrives during a run is served by one more run after it.
2. The controller's `inform(InformOptions(after, full))` yields objects; they are written in
   batches of `BATCH` through the same path as `inform_many`.
3. Without error: the cursor advances to the newest `created_at()` the run saw, or, for
   objects without one, to the database time at which the run started; the next run is
   due after `inform_interval` plus up to 10% jitter. After a full listing, a controller
   with `tombstones` gets every resource of K that was not listed (and not informed since
   the run began) deleted, the one way out (resource_sql.DELETE_RESOURCES): its
   `finalize` runs, if it has one. With `tombstones = "listed"` only resources an
   informer stored or listed are taken: the listing marks what it listed first.
4. With an error, or past the controller's `inform_timeout`: the cursor stays, what was
   written stays written (it is real data), and the next run is due after a backoff
   capped at the interval. Either way the run's record gets its end, objects and error.
"""

from __future__ import annotations

import asyncio
import logging
import random
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from delta_actors import tracing
from delta_actors.app import App, ControllerRegistration
from delta_actors.cancellation import cancel_once, raise_if_cancelling
from delta_actors.controller import InformOptions, runs_informer
from delta_actors.db import leader_sql, resource_sql
from delta_actors.db.connection import drive_async
from delta_actors.errors import ConfigError
from delta_actors.health import Progress, describe, log_failure
from delta_actors.model.object import Object, id_of
from delta_actors.resources.store import InformParams, inform, prepare

logger = logging.getLogger(__name__)

BATCH = 500
TOMBSTONE_REASON = "tombstoned: not in a full listing of its informer"
FAILURE_BACKOFF = 30.0  # seconds before a failed informer runs again (at most its interval)


class InformerTimeout(Exception):  # noqa: N818 (the run's failure, like HandlerTimeout)
    """An informer run took longer than its controller's `inform_timeout`."""


class InformerScheduler:
    """Runs the due informers of an app, as leader."""

    def __init__(self, app: App, pool: AsyncConnectionPool, *, interval: float = 1.0) -> None:
        self._app = app
        self._pool = pool
        self._interval = interval  # seconds between checks for due informers
        self.informers = {
            kind: registration
            for kind, registration in app.controllers.items()
            if runs_informer(registration.controller)
        }
        self._running: dict[str, asyncio.Task[Any]] = {}
        # Metrics, sent with the leader's heartbeats: runs by kind and result since this
        # process started, and each kind's last success (epoch seconds, from the database).
        self.runs: dict[str, dict[str, int]] = {}
        self.last_success: dict[str, float] = {}

    @property
    def interval(self) -> float:
        """Seconds between checks for due informers."""
        return self._interval

    async def run(self, term: int, actor_id: int, progress: Progress | None = None) -> None:
        """Start due informers every interval until cancelled (which cancels the runs).

        Survives any Exception (logged, tried again next interval); each check that went
        through is progress. Runs are tasks this scheduler owns: they record their own
        failures (`_run_informer_task`), and cancelling the scheduler cancels them.
        """
        progress = progress or Progress("informers", self._interval)
        added = False
        try:
            while True:
                try:
                    async with progress.deadline():
                        if not added:
                            async with self._pool.connection() as conn:
                                await conn.execute(
                                    leader_sql.ADD_INFORMERS, (list(self.informers),)
                                )
                            added = True
                        await self.start_due(term, actor_id)
                except Exception as exc:  # noqa: BLE001 (scheduling goes on; logged)
                    progress.failed(exc)
                    log_failure(logger, "scheduling informers failed", exc, "informers.error")
                else:
                    progress.ok()
                raise_if_cancelling()
                await asyncio.sleep(self._interval)
        finally:
            for task in self._running.values():
                cancel_once(task)
            await asyncio.gather(*self._running.values(), return_exceptions=True)
            self._running.clear()

    async def start_due(self, term: int, actor_id: int) -> list[str]:
        """Start a run for each due informer that is not running; return their kinds."""
        self._running = {k: t for k, t in self._running.items() if not t.done()}
        async with self._pool.connection() as conn:
            cur = await conn.execute(leader_sql.SELECT_INFORMERS, (list(self.informers),))
            rows = await cur.fetchall()
        due = [kind for kind, _, is_due, _ in rows if is_due]
        self.last_success.update((kind, at) for kind, _, _, at in rows if at is not None)
        started = []
        for kind in due:
            if kind in self._running:
                continue
            self._running[kind] = asyncio.create_task(
                self._run_informer_task(kind, term, actor_id), name=f"leader:inform:{kind}"
            )
            started.append(kind)
        return started

    async def _run_informer_task(self, kind: str, term: int, actor_id: int) -> None:
        # The owner of one run: whatever ends it is logged here, never left for the
        # event loop to find as an unretrieved task exception. A run that fails in our
        # own statements (the connection lost at START or FINISH) has not advanced its
        # cursor; it is due again at the next check.
        try:
            await self.run_informer(kind, term, actor_id)
        except Exception as exc:  # noqa: BLE001 (reported; the next check retries)
            log_failure(logger, f"informer {kind} run failed", exc, "informer.error")

    async def run_informer(self, kind: str, term: int, actor_id: int) -> dict[str, Any]:
        """Run one informer now if it is due (or asked for) and we lead; return what it did."""
        registration = self.informers[kind]
        fence = {"kind": kind, "term": term, "actor": actor_id}
        async with self._pool.connection() as conn:
            cur = await conn.execute(leader_sql.START_INFORMER, fence)
            row = await cur.fetchone()
        if row is None:
            return {"kind": kind, "ran": False}
        cursor, started_at, last_full_at, requested, requested_full, run_id = row
        full = (
            cursor is None
            or requested_full
            or _full_due(registration.controller.full_interval, last_full_at, started_at)
        )
        if requested:
            logger.info(
                "informer %s runs on request (%s listing)", kind, "full" if full else "cursor",
                extra={"event": "informer.requested", "kind": kind},
            )  # fmt: skip
        run = _Run(kind, run_id, full, started_at)
        with tracing.informer_span(kind, full) if tracing.recording() else nullcontext() as span:
            return await self._run(registration, run, cursor, fence, span)

    async def _run(
        self,
        registration: ControllerRegistration,
        run: _Run,
        cursor: datetime | None,
        fence: dict[str, Any],
        span: Any,
    ) -> dict[str, Any]:
        """List, write, tombstone and move the cursor of one run that START_INFORMER began."""
        kind, full, started_at, run_id = run.kind, run.full, run.started_at, run.run_id
        try:
            await self._list(registration, InformOptions(None if full else cursor, full), run)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 (an informer's SystemExit is its failure too)
            await self._failed(registration, run, exc)
            if span is not None:
                tracing.record_failure(span, exc)
            return {
                "kind": kind,
                "ran": True,
                "full": full,
                "error": str(exc),
                "objects": run.written,
            }
        tombstoned = 0
        tombstones = registration.controller.tombstones
        async with self._pool.connection() as conn, conn.transaction():
            if full and tombstones:
                if tombstones == "listed":
                    await conn.execute(
                        resource_sql.MARK_LISTED, {"kind": kind, "listed": run.listed}
                    )
                cur = await conn.execute(
                    resource_sql.TOMBSTONE_UNLISTED,
                    {**fence, "started": started_at, "listed": run.listed,
                     "only_listed": tombstones == "listed",
                     "finalize": registration.finalizes, "reason": TOMBSTONE_REASON},
                )  # fmt: skip
                tombstoned = len(await cur.fetchall())
            await conn.execute(
                leader_sql.FINISH_INFORMER,
                {**fence, "cursor": run.newest or started_at, "objects": run.written,
                 "full": full, "run": run_id,
                 "next_in": _jittered(registration.controller.inform_interval)},
            )  # fmt: skip
        self._count(kind, "success")
        if span is not None:
            span.set_attribute("delta.objects", run.written)
            span.set_attribute("delta.tombstoned", tombstoned)
        if run.written or tombstoned:
            logger.info(
                "informer %s listed %d objects%s", kind, run.written,
                f", {tombstoned} tombstoned" if tombstoned else "",
                extra={"event": "informer.ran", "kind": kind, "objects": run.written},
            )  # fmt: skip
        return {
            "kind": kind, "ran": True, "full": full, "objects": run.written,
            "tombstoned": tombstoned,
        }  # fmt: skip

    async def _list(
        self, registration: ControllerRegistration, options: InformOptions, run: _Run
    ) -> None:
        """List and write in batches, within `inform_timeout`; on failure, keep what was
        listed (it is real data) and raise."""
        batch: list[Object] = []
        limit = registration.controller.inform_timeout
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                async for obj in registration.controller.inform(options):
                    batch.append(obj)
                    if options.full:
                        run.listed.append(id_of(obj))
                    created = _created_at(obj)
                    if created is not None and (run.newest is None or created > run.newest):
                        run.newest = created
                    if len(batch) >= BATCH:
                        run.written += await self._write(registration, batch)
                        batch = []
                if batch:
                    run.written += await self._write(registration, batch)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if batch:
                await self._write_last(registration, batch, run)
            if isinstance(exc, TimeoutError) and deadline.expired():
                raise InformerTimeout(
                    f"informer {run.kind} ran past its inform_timeout of {limit:g}s"
                ) from exc
            raise

    async def _write_last(
        self, registration: ControllerRegistration, batch: list[Object], run: _Run
    ) -> None:
        try:
            run.written += await self._write(registration, batch)
        except Exception as exc:  # noqa: BLE001 (the run's failure is recorded next)
            log_failure(logger, "writing the informer's last batch failed", exc,
                        "informer.write_failed")  # fmt: skip

    async def _write(self, registration: ControllerRegistration, batch: list[Object]) -> int:
        params = InformParams(namespace=registration.namespace, listed=True)
        items = prepare(batch, params, self._app)
        async with self._pool.connection() as conn, conn.transaction():
            await drive_async(conn, inform(items, params))
        return len(items)

    def _count(self, kind: str, result: str) -> None:
        by_result = self.runs.setdefault(kind, {})
        by_result[result] = by_result.get(result, 0) + 1

    async def _failed(
        self, registration: ControllerRegistration, run: _Run, exc: BaseException
    ) -> None:
        kind = run.kind
        self._count(kind, "error")
        interval = registration.controller.inform_interval or FAILURE_BACKOFF
        logger.error(
            "informer %s failed after %d objects; its cursor stays: %s", kind, run.written,
            describe(exc), extra={"event": "informer.failed", "kind": kind},
        )  # fmt: skip
        message = "".join(traceback.format_exception(exc))[-4000:]
        try:
            async with self._pool.connection() as conn:
                await conn.execute(
                    leader_sql.FAIL_INFORMER,
                    {"kind": kind, "error": message, "objects": run.written, "run": run.run_id,
                     "full": run.full, "next_in": min(FAILURE_BACKOFF, interval)},
                )  # fmt: skip
        except Exception as db_exc:  # noqa: BLE001 (the failure is logged above already)
            log_failure(logger, "recording the informer failure failed", db_exc, "informer.error")


@dataclass
class _Run:
    """One informer run as it goes: what it was started as, and what it listed so far."""

    kind: str
    run_id: int
    full: bool
    started_at: datetime
    written: int = 0
    listed: list[str] = field(default_factory=list)  # ids, for tombstones after a full run
    newest: datetime | None = None  # the newest created_at() seen: the next cursor


def _created_at(obj: Object) -> datetime | None:
    """The object's cursor time; a naive one cannot be compared, so it is refused."""
    created = obj.created_at()
    if created is not None and created.tzinfo is None:
        raise ConfigError(
            f"{type(obj).__qualname__}.created_at() returned a naive datetime ({created}): "
            "return an aware one, e.g. with tzinfo=UTC"
        )
    return created


def _full_due(interval: float | None, last_full: datetime | None, now: datetime) -> bool:
    if interval is None:
        return False
    return last_full is None or (now - last_full).total_seconds() >= interval


def _jittered(interval: float | None) -> float:
    base = interval or 3600.0
    return base * (1 + random.uniform(0, 0.1))  # noqa: S311 (jitter, not security)
