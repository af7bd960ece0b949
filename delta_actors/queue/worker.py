"""The worker: runs the jobs of one namespace on one event loop.

Components (each a named task in one TaskGroup; the first to fail stops the worker):
- listener: LISTEN/NOTIFY wake-ups for the namespace;
- producer: claims jobs, at most the free slots, one claim in flight at a time;
- completer: writes results in fenced batches;
- scheduler (optional): promotes due scheduled/retryable jobs;
- heartbeat: keeps this worker's row in `delta_actor` fresh, so rescue knows it lives;
- deadline watch: cancels runs that exceed their kind's timeout (a failed attempt).
Job runs are tasks outside the group: a job failing is an outcome, not a worker failure.

Slots and wake-ups: `max_workers` slots. The producer sleeps on one event, set by a
notification, by a freed slot when the last claim filled every slot it asked for (more
work may wait), or by the poll timer. Wake-ups arriving while a claim is in flight fold
into the next claim, so claims batch themselves under load and cost one round trip at
rest. A slot frees when its result is queued for the completer, which pushes back when
its backlog is full.

Stopping (`stop(timeout)`): claim no more (the claim in flight completes), let running
jobs finish until the deadline, cancel the rest and hand their claims back without
counting an attempt, write every result, then unregister. A sync handler cannot be
interrupted: its claim is handed back all the same and its late result is fenced off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool

from delta_actors import queries
from delta_actors.app import App, JobRegistration
from delta_actors.config import DEFAULT_NAMESPACE
from delta_actors.database import translate_errors
from delta_actors.outcomes import Cancel, PermanentError, Requeue
from delta_actors.queue.completer import Completer, JobResult
from delta_actors.queue.listener import Listener
from delta_actors.queue.retry import retry_delay
from delta_actors.queue.rows import JobError, JobState
from delta_actors.queue.scheduler import Scheduler
from delta_actors.schema import check_schema_async

logger = logging.getLogger(__name__)

UNKNOWN_KIND_DELAY = 60.0  # seconds before a job of an unregistered kind is offered again
_TRACE_LIMIT = 4000
_error_encoder = msgspec.json.Encoder()


@dataclass(slots=True)
class WorkerStats:
    """Counters of one worker since it started."""

    claimed: int = 0
    completed: int = 0
    failed: int = 0
    snoozed: int = 0
    cancelled: int = 0
    discarded: int = 0
    handed_back: int = 0
    stale: int = 0
    unknown_kind: int = 0
    claims: int = 0


@dataclass(slots=True)
class _Claim:
    id: int
    kind: str
    args: bytes
    attempt: int
    max_attempts: int
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    deadline: float = float("inf")  # loop time after which the run counts as timed out
    timed_out: bool = False


def _error_entry(attempt: int, exc: BaseException, message: str | None = None) -> str:
    trace = "".join(traceback.format_exception(exc))[-_TRACE_LIMIT:]
    text = message or f"{type(exc).__qualname__}: {exc}"
    return _error_encoder.encode(
        JobError(at=time.time(), attempt=attempt, error=text, trace=trace)
    ).decode()


class Worker:
    """Claims and runs the jobs of one namespace.

    Args:
        app: the handlers to run.
        dsn: the database.
        namespace: the queue this worker serves.
        max_workers: jobs run at once; defaults to the namespace's `max_workers`.
        poll_interval: seconds between claims when no notification arrives.
        actor_id: the `delta_actor` row this worker claims as; None registers a new one.
        run_scheduler: promote due jobs from this worker (the leader does it in a cluster).
        heartbeat_interval: seconds between heartbeats of the actor row.
        retry_policy: attempt number -> seconds before the next attempt after a failure.
    """

    def __init__(
        self,
        app: App,
        dsn: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        max_workers: int | None = None,
        poll_interval: float = 1.0,
        actor_id: int | None = None,
        run_scheduler: bool = True,
        heartbeat_interval: float = 2.0,
        retry_policy: Callable[[int], float] = retry_delay,
    ) -> None:
        self._app = app
        self._dsn = dsn
        self.namespace = namespace
        self.max_workers = max_workers or app.namespace(namespace).max_workers
        self._poll_interval = poll_interval
        self.actor_id = actor_id
        self._owns_actor = actor_id is None
        self._heartbeat_interval = heartbeat_interval
        self._retry_policy = retry_policy
        self.stats = WorkerStats()
        self._pool = AsyncConnectionPool(
            dsn,
            min_size=2,
            max_size=4,
            kwargs={"autocommit": True},
            open=False,
            name=f"delta-worker-{namespace}",
        )
        self._scheduler = Scheduler(self._pool) if run_scheduler else None
        self._listener = Listener(dsn, namespace, self._notified)
        self._completer: Completer | None = None
        self._threads: ThreadPoolExecutor | None = None
        self._running: dict[int, _Claim] = {}
        self._wake = asyncio.Event()
        self._maybe_more = True
        self._claiming = True
        self._cancelling = False
        self._handed_back: list[_Claim] = []
        self._main: asyncio.Task[None] | None = None
        self._producer: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect, check the schema, register, and start claiming; returns once started."""
        if self._main is not None:
            return
        with translate_errors(f"start worker for namespace {self.namespace!r}", self._dsn):
            await self._pool.open(wait=True, timeout=30)
            try:
                async with self._pool.connection() as conn:
                    await check_schema_async(conn)
                    if self.actor_id is None:
                        cur = await conn.execute(
                            queries.REGISTER_ACTOR,
                            (socket.gethostname(), os.getpid(), self.namespace, "worker"),
                        )
                        row = await cur.fetchone()
                        assert row is not None
                        self.actor_id = int(row[0])
            except BaseException:
                await self._pool.close()
                raise
        self._completer = Completer(
            self._pool,
            self.actor_id,
            max_pending=max(64, 4 * self.max_workers),
            on_written=self._results_written,
        )
        self._threads = ThreadPoolExecutor(
            max_workers=self.max_workers, thread_name_prefix=f"delta-{self.namespace}"
        )
        self._main = asyncio.create_task(self._run_components(), name=f"worker:{self.namespace}")
        logger.info(
            "worker started for namespace %s with %d slots (actor %d)",
            self.namespace, self.max_workers, self.actor_id,
            extra={"event": "worker.started", "namespace": self.namespace},
        )  # fmt: skip

    async def wait_listening(self, timeout: float = 10.0) -> None:
        """Wait until the LISTEN connection is up (tests use this to avoid racing it)."""
        await asyncio.wait_for(self._listener.is_listening.wait(), timeout)

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming, finish or hand back running jobs within `timeout` s; idempotent."""
        if self._main is None or self._stopped.is_set():
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._claiming = False
        self._wake.set()
        if self._producer is not None:
            # The claim in flight completes, so its jobs are known before we wait on them.
            await asyncio.wait([self._producer], timeout=max(deadline - loop.time(), 0))
        running = [c.task for c in self._running.values() if c.task is not None]
        if running:
            await asyncio.wait(running, timeout=max(deadline - loop.time(), 0))
        leftover = [c.task for c in self._running.values() if c.task is not None]
        if leftover:
            self._cancelling = True
            for task in leftover:
                task.cancel()
            await asyncio.wait(leftover)
        await self._hand_back()
        assert self._completer is not None
        # Results get a little time past the deadline: dropping them would only make
        # rescue run the jobs again.
        if not await self._completer.flush(max(deadline - loop.time(), 5.0)):
            logger.error(
                "stopped with %d job results unwritten; rescue will run them again",
                self._completer.backlog, extra={"event": "worker.results_lost"},
            )  # fmt: skip
        self._main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._main
        await self._unregister()
        await self._pool.close()
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()
        logger.info(
            "worker stopped for namespace %s", self.namespace,
            extra={"event": "worker.stopped", "namespace": self.namespace},
        )  # fmt: skip

    async def wait_stopped(self) -> None:
        """Wait until stop() has finished, or re-raise what made the worker fail."""
        assert self._main is not None
        done, _ = await asyncio.wait(
            [self._main, asyncio.ensure_future(self._stopped.wait())],
            return_when=asyncio.FIRST_COMPLETED,
        )
        if self._main in done and not self._main.cancelled():
            self._main.result()

    async def _run_components(self) -> None:
        assert self._completer is not None
        async with asyncio.TaskGroup() as group:
            group.create_task(self._listener.run(), name=f"worker:{self.namespace}:listener")
            self._producer = group.create_task(
                self._produce(), name=f"worker:{self.namespace}:producer"
            )
            group.create_task(self._completer.run(), name=f"worker:{self.namespace}:completer")
            if self._owns_actor:
                group.create_task(self._heartbeat(), name=f"worker:{self.namespace}:heartbeat")
            if self._scheduler is not None:
                group.create_task(self._scheduler.run(), name=f"worker:{self.namespace}:scheduler")
            group.create_task(self._watch_deadlines(), name=f"worker:{self.namespace}:deadlines")

    # ------------------------------------------------------------------ claiming

    def _notified(self) -> None:
        self._maybe_more = True
        self._wake.set()

    async def _produce(self) -> None:
        while self._claiming:
            try:
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)
            except TimeoutError:
                self._maybe_more = True
            self._wake.clear()
            free = self.max_workers - len(self._running)
            if not self._claiming or free <= 0 or not self._maybe_more:
                continue
            try:
                claims = await self._claim(free)
            except (psycopg.Error, OSError) as exc:
                logger.warning(
                    "claiming jobs failed: %s", exc,
                    extra={"event": "worker.claim_failed", "namespace": self.namespace},
                )  # fmt: skip
                await asyncio.sleep(min(self._poll_interval, 1.0))
                continue
            self._maybe_more = len(claims) == free
            for claim in claims:
                self._running[claim.id] = claim
                claim.task = asyncio.create_task(self._run_job(claim), name=f"job:{claim.id}")

    async def _claim(self, limit: int) -> list[_Claim]:
        params = {"queue": self.namespace, "limit": limit, "actor": self.actor_id}
        async with self._pool.connection() as conn:
            cur = await conn.execute(queries.CLAIM_JOBS, params)
            rows = await cur.fetchall()
        self.stats.claims += 1
        self.stats.claimed += len(rows)
        return [_Claim(*row) for row in rows]

    # ------------------------------------------------------------------ running

    async def _run_job(self, claim: _Claim) -> None:
        registration = self._app.jobs.get(claim.kind)
        try:
            if registration is None:
                result = self._unknown_kind(claim)
            else:
                result = await self._call_handler(claim, registration)
        except asyncio.CancelledError:
            if not self._cancelling:
                raise
            # Cancelled at the stop deadline: hand the claim back (see stop()).
            self._handed_back.append(claim)
            self._running.pop(claim.id, None)
            return
        assert self._completer is not None
        try:
            await self._completer.add(result)
        finally:
            self._running.pop(claim.id, None)
            if self._maybe_more:
                self._wake.set()

    async def _call_handler(self, claim: _Claim, registration: JobRegistration) -> JobResult:
        try:
            job = registration.decoder.decode(claim.args)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            message = (
                f"stored args of job {claim.id} no longer decode into "
                f"{registration.type.__qualname__}: {exc}"
            )
            return self._failed(claim, exc, message)
        claim.deadline = asyncio.get_running_loop().time() + registration.timeout
        try:
            if registration.is_async:
                await registration.handler(job)  # type: ignore[misc]
            else:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._threads, registration.handler, job)
        except Requeue as outcome:
            self.stats.snoozed += 1
            state = JobState.AVAILABLE if outcome.after <= 0 else JobState.SCHEDULED
            return JobResult(claim.id, claim.attempt, state, delay=outcome.after, give_back=True)
        except Cancel as outcome:
            self.stats.cancelled += 1
            return JobResult(
                claim.id, claim.attempt, JobState.CANCELLED,
                error=_error_entry(claim.attempt, outcome, f"cancelled: {outcome.reason}"),
            )  # fmt: skip
        except PermanentError as exc:
            self.stats.discarded += 1
            return JobResult(
                claim.id, claim.attempt, JobState.DISCARDED,
                error=_error_entry(claim.attempt, exc, f"permanent error: {exc.reason}"),
            )  # fmt: skip
        except asyncio.CancelledError as exc:
            if self._cancelling or not claim.timed_out:
                raise
            # Cancelled by the deadline watch, not by anyone above us.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return self._failed(claim, exc, f"timed out after {registration.timeout:g}s")
        except BaseException as exc:  # noqa: BLE001 (a handler's SystemExit is its job's failure)
            return self._failed(claim, exc)
        self.stats.completed += 1
        return JobResult(claim.id, claim.attempt, JobState.COMPLETED)

    def _failed(self, claim: _Claim, exc: BaseException, message: str | None = None) -> JobResult:
        error = _error_entry(claim.attempt, exc, message)
        self.stats.failed += 1
        if claim.attempt >= claim.max_attempts:
            self.stats.discarded += 1
            logger.warning(
                "job %d (%s) failed attempt %d of %d, discarding: %s",
                claim.id, claim.kind, claim.attempt, claim.max_attempts, message or exc,
                extra={"event": "job.discarded", "job_id": claim.id, "kind": claim.kind},
            )  # fmt: skip
            return JobResult(claim.id, claim.attempt, JobState.DISCARDED, error=error)
        delay = self._retry_policy(claim.attempt)
        logger.info(
            "job %d (%s) failed attempt %d of %d, retrying in %.1fs: %s",
            claim.id, claim.kind, claim.attempt, claim.max_attempts, delay, message or exc,
            extra={"event": "job.failed", "job_id": claim.id, "kind": claim.kind},
        )  # fmt: skip
        return JobResult(claim.id, claim.attempt, JobState.RETRYABLE, delay=delay, error=error)

    def _unknown_kind(self, claim: _Claim) -> JobResult:
        # Not the job's fault and nothing to lose: offer it again later, uncounted, so a
        # deploy that registers the kind picks it up.
        self.stats.unknown_kind += 1
        registered = ", ".join(sorted(self._app.jobs)) or "none"
        message = (
            f"no handler for job kind {claim.kind!r} in this worker (registered: {registered}); "
            f"offered again in {UNKNOWN_KIND_DELAY:g}s"
        )
        logger.error(message, extra={"event": "job.unknown_kind", "job_id": claim.id})
        error = _error_encoder.encode(
            JobError(at=time.time(), attempt=claim.attempt, error=message)
        ).decode()
        return JobResult(
            claim.id, claim.attempt, JobState.SCHEDULED,
            delay=UNKNOWN_KIND_DELAY, error=error, give_back=True,
        )  # fmt: skip

    def _results_written(self, results: list[JobResult], stale: set[int]) -> None:
        if stale:
            self.stats.stale += len(stale)
            logger.warning(
                "%d job results were stale (claim rescued or handed back meanwhile): %s",
                len(stale), sorted(stale)[:20], extra={"event": "worker.stale_results"},
            )  # fmt: skip
        if self._scheduler is not None and any(
            r.delay is not None and r.delay < 1.0 and r.state is not JobState.AVAILABLE
            for r in results
        ):
            self._scheduler.poke()
        if any(r.state is JobState.AVAILABLE for r in results):
            self._notified()

    async def _watch_deadlines(self) -> None:
        # One periodic sweep instead of a timer per job: per-job timers cost more than
        # a no-op job itself. Precision is a quarter of the shortest timeout.
        shortest = min((r.timeout for r in self._app.jobs.values()), default=60.0)
        interval = min(1.0, max(0.01, shortest / 4))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for claim in self._running.values():
                if claim.deadline <= now and not claim.timed_out and claim.task is not None:
                    claim.timed_out = True
                    claim.task.cancel()

    # ------------------------------------------------------------------ bookkeeping

    async def _hand_back(self) -> None:
        claims, self._handed_back = self._handed_back, []
        if not claims:
            return
        params = ([c.id for c in claims], [c.attempt for c in claims], self.actor_id)
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(queries.HAND_BACK_JOBS, params)
                returned = len(await cur.fetchall())
        except (psycopg.Error, OSError) as exc:
            logger.error(
                "handing back %d claims failed, rescue will return them: %s", len(claims), exc,
                extra={"event": "worker.hand_back_failed"},
            )  # fmt: skip
            return
        self.stats.handed_back += returned
        logger.info(
            "handed back %d unfinished jobs", returned, extra={"event": "worker.handed_back"}
        )

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            try:
                async with self._pool.connection() as conn:
                    await conn.execute(queries.HEARTBEAT_ACTOR, (self.actor_id,))
            except (psycopg.Error, OSError) as exc:
                logger.warning("heartbeat failed: %s", exc, extra={"event": "worker.heartbeat"})

    async def _unregister(self) -> None:
        if not self._owns_actor:
            return
        try:
            async with self._pool.connection() as conn:
                await conn.execute(queries.UNREGISTER_ACTOR, (self.actor_id,))
        except (psycopg.Error, OSError) as exc:
            logger.warning("unregistering failed: %s", exc, extra={"event": "worker.unregister"})

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()
