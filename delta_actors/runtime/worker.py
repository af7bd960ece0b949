"""The worker: runs the jobs and resource works of one namespace on one event loop.

Components (each a named task in one TaskGroup; the first to fail stops the worker):
- listener: LISTEN/NOTIFY wake-ups for the namespace, on the DSN's own connection, or on
  `listen_dsn`'s; behind a transaction pooler (db/pooler.py) without a `listen_dsn` there
  is no listener and the producer polls every POLL_INTERVAL_WITHOUT_LISTEN seconds;
- producer: claims jobs, at most the free slots, one claim in flight at a time, on a
  connection of its own where the claim's plan is made once (see queue/claimer.py);
- completer: writes results in fenced batches, plain jobs' on a connection of its own
  where their statement has a plan made once (queue/completer.py);
- promoter (optional, `run_scheduler`): promotes due scheduled/retryable jobs;
- sweep: finds claimable jobs below the producer's claim floors (queue/floors.py);
- heartbeat: keeps this worker's row in `delta_actor` fresh, so rescue knows it lives;
  when the row is gone (rescued) or no heartbeat got through for most of the rescue TTL,
  it cancels every running job and fails the worker: its claims are, or soon will be,
  another actor's, and two runs of one resource must never overlap. A plain def's thread
  cannot be cancelled, so `on_lost` is called first: under `supervise` it ends the
  actor's process there and then (runtime/actor.py), not after a stop that a cut network
  would stretch past the rescue TTL;
- deadline watch: cancels runs that exceed their kind's timeout (a failed attempt).
Job runs are tasks outside the group: a job failing is an outcome, not a worker failure.
Each resource work runs in a `work_context()` whose effects go to the completer with its
result (context.py).

Slots and wake-ups: `max_workers` slots. The producer sleeps on one event, set by a
notification, by a freed slot when the last claim filled every slot it asked for (more
work may wait), or by the poll timer. Wake-ups arriving while a claim is in flight fold
into the next claim, so claims batch themselves under load and cost one round trip at
rest. A slot frees when its result is queued for the completer, which pushes back when
its backlog is full.

Lost replies: a claim commits but its reply can be lost with the connection (PostgreSQL
restarted, backend terminated). The rows are then `running` under this live actor, which
does not know them, and rescue never comes because the actor heartbeats on. So after a
failed claim, before claiming again (no claim is in flight then), the producer looks up
the claims the table says this actor holds; those neither running here nor waiting in the
completer are handed back, uncounted (works: a cancelled row and a follow-up work).

Stopping (`stop(timeout)`): claim no more (the claim in flight completes), let running
jobs finish until the deadline, cancel the rest and hand their claims back without
counting an attempt, write every result, then unregister. A sync handler cannot be
interrupted: its claim is handed back all the same and its late result is fenced off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import psycopg

from delta_actors import tracing
from delta_actors.app import App
from delta_actors.cancellation import cancel_once, raise_if_cancelling
from delta_actors.client import AsyncClient
from delta_actors.config import DEFAULT_NAMESPACE
from delta_actors.context import open_context
from delta_actors.db import actor_sql, job_sql
from delta_actors.db.actor_sql import ClaimOfActor
from delta_actors.db.connection import connect_async, make_async_pool, translate_errors
from delta_actors.db.migrations import check_schema_async
from delta_actors.db.pooler import listen_dsn_of
from delta_actors.errors import ActorLostError
from delta_actors.health import ComponentHealth, Progress, describe, log_failure
from delta_actors.queue import results
from delta_actors.queue.actors import heartbeat, register_actor, unregister_actor
from delta_actors.queue.claimer import Claimer
from delta_actors.queue.completer import Completer
from delta_actors.queue.floors import (
    FLOOR_MARGIN,
    SWEEP_INTERVAL,
    UNLIMITED,
    Floors,
    Sweeper,
    shape_of,
)
from delta_actors.queue.listener import Listener
from delta_actors.queue.promoter import Promoter
from delta_actors.queue.results import Result
from delta_actors.queue.retry import retry_delay
from delta_actors.queue.runner import Claim, Invoker, JobRunner, WorkerStats
from delta_actors.resources.reconciler import Reconciler
from delta_actors.runtime.metrics import Recorder

logger = logging.getLogger(__name__)

POLL_INTERVAL = 1.0  # seconds between claims without a wake-up, while LISTEN wakes us
# Without LISTEN (a transaction pooler, no listen DSN) polling is the only wake-up, so it
# runs more often: 0.1 s of enqueue-to-start latency on average, for one claim statement
# (an index probe when there is nothing to do) every 0.2 s per worker actor.
POLL_INTERVAL_WITHOUT_LISTEN = 0.2


def run_claim(
    claim: Claim, jobs: JobRunner, works: Reconciler, work_client: AsyncClient, app: App
) -> Coroutine[Any, Any, Result]:
    """Run one claim to its result: a plain job through `jobs`, a resource work through
    `works` in a `work_context()` whose effects ride on the result.

    The one execution path of a claim, shared by the Worker and the test Runner
    (delta_actors.testing), so that what passes under one holds under the other. Await it
    in a task of its own (the context is the task's), whose top frame turns a
    BaseException that escapes into `escaped()` (see Worker._run_job). A plain job's is
    its runner's own coroutine, one layer fewer on the path of the cheapest runs.
    """
    if claim.resource_id is None:
        return jobs.run(claim)
    return _run_work(claim, works, work_client, app)


async def _run_work(claim: Claim, works: Reconciler, work_client: AsyncClient, app: App) -> Result:
    # In this task, so the work (and a plain def's thread) sees it.
    ctx = open_context(work_client, app)
    try:
        work_result = await works.run(claim)
    finally:
        effects = ctx.close()
    finalized = claim.resource is not None and claim.resource.deletion_requested_at is not None
    return results.with_effects(work_result, effects, finalized=finalized)


class Worker:
    """Claims and runs the jobs of one namespace.

    Args:
        app: the handlers to run.
        dsn: the database.
        namespace: the queue this worker serves.
        max_workers: jobs run at once; defaults to the namespace's `max_workers`.
        poll_interval: seconds between claims when no notification arrives; default
            POLL_INTERVAL (1 s), POLL_INTERVAL_WITHOUT_LISTEN (0.2 s) when nothing listens.
        actor_id: the `delta_actor` row this worker claims as; None registers a new one.
        run_scheduler: promote due jobs from this worker (the leader does it in a cluster).
        heartbeat_interval: seconds between heartbeats of the actor row.
        rescue_ttl: the leader's rescue TTL; a worker that cannot heartbeat for most of it
            stops (ActorLostError) before its claims can be rescued and run elsewhere.
        retry_policy: attempt number -> seconds before the next attempt after a failure.
        listen_dsn: a direct connection (or a session pooler's) for LISTEN, when `dsn`
            goes through a pooler in transaction mode; default: LISTEN on `dsn` itself,
            or, behind a transaction pooler, no LISTEN (polling).
        on_lost: called with the ActorLostError the moment the heartbeat raises it,
            before the running jobs are cancelled; it may end the process (os._exit),
            the one way to stop a plain def's thread. None: the threads run on.
    """

    def __init__(
        self,
        app: App,
        dsn: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        max_workers: int | None = None,
        poll_interval: float | None = None,
        actor_id: int | None = None,
        run_scheduler: bool = True,
        heartbeat_interval: float = 2.0,
        rescue_ttl: float = 10.0,
        retry_policy: Callable[[int], float] = retry_delay,
        sweep_interval: float = SWEEP_INTERVAL,
        floor_margin: float = FLOOR_MARGIN,
        listen_dsn: str | None = None,
        on_lost: Callable[[ActorLostError], None] | None = None,
    ) -> None:
        listen_dsn = listen_dsn_of(dsn, listen_dsn)
        if poll_interval is None:
            poll_interval = POLL_INTERVAL if listen_dsn else POLL_INTERVAL_WITHOUT_LISTEN
        self._app = app
        self._dsn = dsn
        self.namespace = namespace
        self.max_workers = max_workers or app.namespace(namespace).max_workers
        self._poll_interval = poll_interval
        self.actor_id = actor_id
        self._owns_actor = actor_id is None
        self._heartbeat_interval = heartbeat_interval
        self._on_lost = on_lost
        # Detection takes up to an interval plus an attempt's timeout; keep a second spare.
        fence = rescue_ttl - heartbeat_interval - max(heartbeat_interval, 1.0) - 1.0
        self._fence = max(fence, heartbeat_interval)
        self._retry_policy = retry_policy
        self.stats = WorkerStats()
        self.recorder = Recorder()
        self._pool = make_async_pool(dsn, min_size=2, max_size=4, name=f"delta-worker-{namespace}")
        # `work_context().client`: a pool of its own, so that works reading through it can
        # never starve the claims and results of connections; it opens none until used.
        self._work_pool = make_async_pool(
            dsn, min_size=0, max_size=min(self.max_workers, 8), name=f"delta-work-{namespace}"
        )
        self._work_client = AsyncClient(self._work_pool, app=app)
        self._limited_unwritten: set[int] = set()  # runs of limited kinds, result unwritten
        self._unwritten_works: dict[int, Claim] = {}  # resource works, result unwritten
        self._promoter = Promoter(self._pool) if run_scheduler else None
        self.progress = {
            "claims": Progress(
                "claims", poll_interval,
                is_idle=lambda: not self._claiming or len(self._running) >= self.max_workers,
            ),
            "results": Progress(
                "results", 1.0,
                is_idle=lambda: self._completer is None or self._completer.backlog == 0,
            ),
        }  # fmt: skip
        self._listener: Listener | None = None
        if listen_dsn is not None:
            progress = Progress("listener", poll_interval, is_idle=self._is_listening)
            self.progress["listener"] = progress
            self._listener = Listener(listen_dsn, namespace, self._notified, progress)
        self.progress["sweep"] = Progress("sweep", sweep_interval)
        self._floors = Floors(floor_margin)
        self._claimer = Claimer(dsn, namespace, floors=self._floors)
        self._sweeper = Sweeper(
            self._pool, namespace, self._floors, lambda: list(app.limits), self._notified,
            interval=sweep_interval, progress=self.progress["sweep"],
        )  # fmt: skip
        self._completer: Completer | None = None
        self._invoker: Invoker | None = None
        self._running: dict[int, Claim] = {}
        self._wake = asyncio.Event()
        self._maybe_more = True
        self._claiming = True
        self._cancelling = False
        self._handed_back: list[Claim] = []
        self._replies_lost = False  # a claim failed: its rows may be ours without our knowing
        self._claims_left = False  # a stop could not hand back or finish some claims
        self._main: asyncio.Task[None] | None = None
        self._producer: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect, check the schema, register, and start claiming; returns once started."""
        if self._main is not None:
            return
        action = f"start worker for namespace {self.namespace!r}"
        # A connection of its own, not the pool's: a wrong password or a full server then
        # fails at once with PostgreSQL's reason, instead of as a pool timeout 30 s later.
        async with await connect_async(self._dsn, action=action) as conn:
            with translate_errors(action, self._dsn):
                await check_schema_async(conn)
                if self.actor_id is None:
                    self.actor_id = await register_actor(conn, self.namespace, "worker")
        with translate_errors(action, self._dsn):
            await self._pool.open(wait=True, timeout=30)
            await self._work_pool.open()
        self._completer = Completer(
            self._pool,
            self.actor_id,
            max_pending=max(64, 4 * self.max_workers),
            on_written=self._results_written,
            progress=self.progress["results"],
            dsn=self._dsn,
            namespace=self.namespace,
        )
        invoker = Invoker(self.max_workers, f"delta-{self.namespace}", lambda: self._cancelling)
        self._invoker = invoker
        self._jobs = JobRunner(self._app, invoker, self.stats, self._retry_policy)
        self._works = Reconciler(self._app, invoker, self.stats, self._retry_policy)
        self._main = asyncio.create_task(self._run_components(), name=f"worker:{self.namespace}")
        logger.info(
            "worker started for namespace %s with %d slots (actor %d)",
            self.namespace, self.max_workers, self.actor_id,
            extra={"event": "worker.started", "namespace": self.namespace},
        )  # fmt: skip

    def health(self) -> list[ComponentHealth]:
        """Each component's progress now (health.py)."""
        return [progress.snapshot() for progress in self.progress.values()]

    async def wait_listening(self, timeout: float = 10.0) -> None:
        """Wait until the LISTEN connection is up (tests use this to avoid racing it);
        at once when nothing listens (behind a transaction pooler, polling)."""
        if self._listener is not None:
            await asyncio.wait_for(self._listener.is_listening.wait(), timeout)

    def _is_listening(self) -> bool:
        return self._listener is not None and self._listener.is_listening.is_set()

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
                cancel_once(task)
            _, stubborn = await asyncio.wait(leftover, timeout=5.0)
            # A handler that swallows its cancellation keeps running; its claim goes
            # back all the same and its late result is fenced off.
            self._handed_back.extend(c for c in self._running.values() if c.task in stubborn)
        await self._hand_back()
        assert self._completer is not None
        # Results get a little time past the deadline: dropping them would only make
        # rescue run the jobs again.
        if not await self._completer.flush(max(deadline - loop.time(), 5.0)):
            self._claims_left = True
            logger.error(
                "stopped with %d job results unwritten; rescue will run them again",
                self._completer.backlog, extra={"event": "worker.results_lost"},
            )  # fmt: skip
        cancel_once(self._main)
        try:
            await self._main
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception(
                "worker component failed before stop", extra={"event": "worker.failed"}
            )
        await self._unregister()
        await self._pool.close()
        await self._work_pool.close()
        if self._invoker is not None:
            self._invoker.shutdown()
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
        name = f"worker:{self.namespace}"
        try:
            async with asyncio.TaskGroup() as group:
                if self._listener is not None:
                    group.create_task(self._listener.run(), name=f"{name}:listener")
                self._producer = group.create_task(self._produce(), name=f"{name}:producer")
                group.create_task(self._completer.run(), name=f"{name}:completer")
                if self._owns_actor:
                    group.create_task(self._heartbeat(), name=f"{name}:heartbeat")
                if self._promoter is not None:
                    group.create_task(self._promoter.run(), name=f"{name}:promoter")
                group.create_task(self._sweeper.run(), name=f"{name}:sweep")
                group.create_task(self._watch_deadlines(), name=f"{name}:deadlines")
                group.create_task(self._watch_cancel_requests(), name=f"{name}:cancels")
        except ExceptionGroup as group:
            # One component failed (the others were cancelled): raise its error itself.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    async def _heartbeat(self) -> None:
        assert self.actor_id is not None
        try:
            await heartbeat(
                self._pool, self.actor_id, self._heartbeat_interval, fence=self._fence,
                health=self.health,
            )  # fmt: skip
        except ActorLostError as exc:
            # Our claims are, or are about to be, someone else's: not one more moment of them.
            self._claiming = False
            if self._on_lost is not None:
                self._on_lost(exc)
            for claim in self._running.values():
                if claim.task is not None:
                    cancel_once(claim.task)
            raise

    # ------------------------------------------------------------------ claiming

    def _notified(self) -> None:
        self._maybe_more = True
        self._wake.set()

    async def _produce(self) -> None:
        try:
            await self._produce_until_stopped()
        finally:
            await self._claimer.close()

    async def _produce_until_stopped(self) -> None:
        while self._claiming:
            raise_if_cancelling()
            try:
                async with asyncio.timeout(self._poll_interval):
                    await self._wake.wait()
            except TimeoutError:
                self._maybe_more = True
            self._wake.clear()
            free = self.max_workers - len(self._running)
            if not self._claiming or free <= 0 or not self._maybe_more:
                continue
            try:
                if self._replies_lost:
                    await self._hand_back_unknown_claims()
                    self._replies_lost = False
                claims = await self._claim(free)
            except Exception as exc:  # noqa: BLE001 (claiming goes on; logged)
                self._replies_lost = True
                self.stats.claim_failures += 1
                self.progress["claims"].failed(exc)
                log_failure(
                    logger, "claiming jobs failed", exc, "worker.claim_failed",
                    namespace=self.namespace,
                )  # fmt: skip
                await asyncio.sleep(min(self._poll_interval, 1.0))
                continue
            self.progress["claims"].ok()
            self._maybe_more = len(claims) == free
            for claim in claims:
                self._running[claim.id] = claim
                claim.task = asyncio.create_task(self._run_job(claim), name=f"job:{claim.id}")
            if claims:
                # The runs start first, then the floors rise past this claim (before the
                # next claim or any other look at them: Floors.settle).
                await asyncio.sleep(0)
                self._floors.settle()

    async def _claim(self, limit: int) -> list[Claim]:
        params = {"namespace": self.namespace, "limit": limit, "actor": self.actor_id}
        traced = tracing.recording()
        started = time.time_ns() if traced else 0
        limits = self._app.limits
        # Where this claim reads from: a resource work's follow-up lies above it.
        floors = {shape: list(self._floors.of(shape)) for shape in [UNLIMITED, *limits]}
        if limits:
            rows = await self._claimer.claim_limited(params, limits)
        else:
            rows = await self._claimer.claim(params)
        self.stats.claims += 1
        self.stats.claimed += len(rows)
        if rows and traced:
            tracing.record_claim(self.namespace, limit, len(rows), started)
        claims = [Claim.from_row(row, self.namespace, traced) for row in rows]
        for claim in claims:
            if claim.resource_id is not None:
                claim.floor_at = floors[shape_of(claim.kind, limits)][claim.priority - 1]
        return claims

    async def _hand_back_unknown_claims(self) -> None:
        """Hand back the claims the table gives this actor but this process never saw."""
        assert self._completer is not None
        async with self._pool.connection() as conn:
            cur = await conn.execute(actor_sql.SELECT_CLAIMS_OF_ACTORS, ([self.actor_id], 100_000))
            rows = [ClaimOfActor(*row) for row in await cur.fetchall()]
        known = self._running.keys() | self._completer.unwritten
        unknown = [claim for claim in rows if claim.job_id not in known]
        if not unknown:
            return
        logger.warning(
            "%d claims committed but their reply was lost; handing them back: %s",
            len(unknown), [claim.job_id for claim in unknown][:20],
            extra={"event": "worker.lost_claims", "namespace": self.namespace},
        )  # fmt: skip
        for claim in unknown:
            if claim.resource_id is not None:
                await self._completer.add(
                    results.work_handed_back(claim.job_id, claim.attempt, claim.generation or 0)
                )
        jobs = [claim for claim in unknown if claim.resource_id is None]
        if jobs:
            await self._hand_back_jobs([c.job_id for c in jobs], [c.attempt for c in jobs])
        self.stats.handed_back += len(unknown)

    # ------------------------------------------------------------------ running

    async def _run_job(self, claim: Claim) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            result = await run_claim(claim, self._jobs, self._works, self._work_client, self._app)
        except asyncio.CancelledError:
            if not self._cancelling:
                raise
            # Cancelled at the stop deadline: hand the claim back (see stop()).
            self._handed_back.append(claim)
            self._running.pop(claim.id, None)
            return
        except BaseException as exc:  # noqa: BLE001 (the handler's failure, not ours)
            # A GeneratorExit raised by a handler, or thrown into this task through a
            # future it awaited (a plain def's thread), closes the frames below this one
            # (run_claim's, the runner's): they cannot return a result. The claim still
            # fails, counted once.
            runner = self._jobs if claim.resource_id is None else self._works
            result = runner.escaped(claim, exc)
        self.recorder.observe(claim.kind, result, loop.time() - started)
        assert self._completer is not None
        if claim.resource_id is not None:
            # Once written, a work queued meanwhile for its resource becomes claimable,
            # below where the claims now read (queue/floors.py).
            self._unwritten_works[claim.id] = claim
        try:
            await self._completer.add(result, claim.tid)
        finally:
            self._running.pop(claim.id, None)
            if claim.kind in self._app.limits:
                # Its share of the kind's limit frees once its result is written: then
                # the producer is woken (_results_written) to take a waiting one.
                self._limited_unwritten.add(claim.id)
            if self._maybe_more:
                self._wake.set()

    def _results_written(
        self, results: list[Result], stale: set[int], follow_ups: set[int]
    ) -> None:
        if self._unwritten_works:
            rewound = False
            for result in results:
                claim = self._unwritten_works.pop(result.id, None)
                # Only a work queued for its resource while it ran lies below the floors
                # now (skipped while busy); moving them back for every work would make
                # the next claims read again what was claimed since, which a held
                # snapshot keeps as dead row versions (queue/floors.py).
                if claim is not None and result.id in follow_ups:
                    if claim.floor_at is not None:
                        shape = shape_of(claim.kind, self._app.limits)
                        self._floors.rewind(shape, claim.priority, claim.floor_at)
                    rewound = True
            if rewound:
                self._notified()
        if self._limited_unwritten and any(r.id in self._limited_unwritten for r in results):
            self._limited_unwritten.difference_update(r.id for r in results)
            self._notified()
        if stale:
            self.stats.stale += len(stale)
            logger.warning(
                "%d job results were stale (claim rescued or handed back meanwhile): %s",
                len(stale), sorted(stale)[:20], extra={"event": "worker.stale_results"},
            )  # fmt: skip
        if self._promoter is not None and any(
            r.delay is not None and 0 < r.delay < 1.0 for r in results
        ):
            self._promoter.poke()
        if any(r.delay is not None and r.delay <= 0 for r in results):
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
                    cancel_once(claim.task)

    async def _watch_cancel_requests(self) -> None:
        # Running plain jobs an operator cancelled (cancel_jobs): stop the run, which
        # then ends as cancelled. A failed look is logged and tried again next time.
        while True:
            await asyncio.sleep(max(self._poll_interval, 1.0))
            if not any(c.resource_id is None for c in self._running.values()):
                continue
            try:
                async with self._pool.connection() as conn:
                    cur = await conn.execute(
                        job_sql.SELECT_CANCEL_REQUESTS, {"actor": self.actor_id}
                    )
                    asked = {row[0] for row in await cur.fetchall()}
            except Exception as exc:  # noqa: BLE001 (the watch goes on; logged)
                log_failure(logger, "looking for cancelled jobs failed", exc,
                            "worker.cancel_watch_failed")  # fmt: skip
                continue
            for job_id in asked:
                claim = self._running.get(job_id)
                if claim is not None and claim.task is not None and not claim.cancel_requested:
                    claim.cancel_requested = True
                    cancel_once(claim.task)
                    logger.info(
                        "job %d (%s) asked to stop by an operator", job_id, claim.kind,
                        extra={"event": "job.cancel_requested", "job_id": job_id},
                    )  # fmt: skip

    # ------------------------------------------------------------------ bookkeeping

    async def _hand_back(self) -> None:
        handed_back, self._handed_back = self._handed_back, []
        assert self._completer is not None
        for claim in handed_back:
            if claim.resource_id is not None:
                # A work's job row never goes back to the queue (see COMPLETE_WORKS).
                await self._completer.add(Reconciler.hand_back(claim), claim.tid)
                self.stats.handed_back += 1
        claims = [c for c in handed_back if c.resource_id is None]
        if not claims:
            return
        try:
            returned = await self._hand_back_jobs(
                [c.id for c in claims], [c.attempt for c in claims]
            )
        except (psycopg.Error, OSError) as exc:
            self._claims_left = True
            logger.error(
                "handing back %d claims failed, rescue will return them: %s", len(claims),
                describe(exc),
                extra={"event": "worker.hand_back_failed"},
            )  # fmt: skip
            return
        self.stats.handed_back += returned
        logger.info(
            "handed back %d unfinished jobs", returned, extra={"event": "worker.handed_back"}
        )

    async def _hand_back_jobs(self, ids: list[int], attempts: list[int]) -> int:
        """Make claimed plain jobs available again, uncounted; return how many were."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                job_sql.HAND_BACK_JOBS, {"ids": ids, "attempts": attempts, "actor": self.actor_id}
            )
            return len(await cur.fetchall())

    async def queue_depth(self) -> tuple[int, float]:
        """Return the namespace's available jobs (capped at 100,000) and the oldest's wait."""
        with translate_errors("read the queue depth"):
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    job_sql.COUNT_AVAILABLE_JOBS,
                    {"namespace": self.namespace, "floors": self._floors.lowest()},
                )
                row = await cur.fetchone()
        return (int(row[0]), float(row[1] or 0.0)) if row else (0, 0.0)

    async def _unregister(self) -> None:
        if self._claims_left:
            # The row stays: rescue finds it by its heartbeat's age (the TTL) and returns
            # the claims we could not; without a row only its rarer look for claims of
            # no actor would (leader/maintenance.py).
            logger.warning(
                "claims left behind: keeping actor %s's row for rescue", self.actor_id,
                extra={"event": "worker.row_kept"},
            )  # fmt: skip
            return
        if self._owns_actor and self.actor_id is not None:
            await unregister_actor(self._pool, self.actor_id)

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()
