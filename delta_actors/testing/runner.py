"""The inline test Runner: a test drives its app's works through the real code, in-process.

    runner = delta.testing.Runner(app, delta_client)   # the client takes the app
    delta_client.inform(Order(key="o1", total=10))
    results = runner.run_until_idle()          # claims, runs, writes; no processes, no sleeps
    assert results.synced == ["order/o1"]
    results = runner.advance(30)               # the clock moves; what became due runs

What runs is what an actor runs: claims with the worker's Claimer (CLAIM_JOBS, or the
limits protocol when the app has limits), each claim through `runtime.worker.run_claim`
(the JobRunner or the Reconciler, a resource work in its `work_context()`), its result
written by the Completer's statements (COMPLETE_JOBS / COMPLETE_WORKS, with the work's
effects in the same transaction), due jobs promoted by the Promoter's statement, and
informers run by the leader's InformerScheduler under a lease the Runner takes for the
run and gives back at once. So a test that passes under the Runner means the same under
`delta-actors supervise`. Not run: rescue, expiry, cleanup and periodic jobs (leader
duties that need real time to pass).

Each call is a session of its own: it opens its connections and a short-lived
`delta_actor` row, and closes both before it returns, so a Runner holds nothing between
calls and needs no closing. Claims are taken one at a time and run one at a time, in the
queue's order (priority, due time, id), namespace after namespace: the order of the runs
is deterministic. `run_until_idle` ends when no namespace has a due job left; a queue
that never empties (a work that requeues itself with `after=0`) raises NotIdleError after
`max_runs` runs instead of spinning forever.

Time. Due times are compared with the database's `now()` (a retry's or requeue's
`scheduled_at`, an informer's `next_run_at`, a rate limit's window). `advance(seconds)`
moves each of them back by `seconds` (job_sql.ADVANCE_CLOCK), as if that much time had
passed, then runs until idle. So a retry due in 30 s does not run before the test has
advanced 30 s in all and runs in the first call after it, with no sleeping. Real time
still passes too (milliseconds in a quick test), so "due" means: advanced + elapsed >=
delay. Backoff has +/-10 % jitter; pass `retry_policy=` for exact delays, or advance
past the jitter. A work's `timeout` is real time: a hung work is cancelled after it.

Failure handling. Database errors raise `delta.DatabaseError` (the cause kept). A
handler's failure is an outcome, never an error of the Runner. If the test's own code is
cancelled mid-run, the running work is cancelled and its claim stays `running` under an
unregistered actor: rescue's business, as with a dead actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any, TypeVar

import msgspec
import psycopg
import uvloop

from delta_actors import tracing
from delta_actors.app import App
from delta_actors.cancellation import cancel_once
from delta_actors.client import AsyncClient, Client
from delta_actors.controller import runs_informer
from delta_actors.db import actor_sql, job_sql, leader_sql, resource_sql
from delta_actors.db.connection import (
    check_dsn,
    connect_async,
    make_async_pool,
    translate_errors,
)
from delta_actors.db.migrations import check_schema_async
from delta_actors.errors import ConfigError, DeltaError, UnknownKindError
from delta_actors.model.job_row import JobError
from delta_actors.model.kinds import kind_of
from delta_actors.model.object import Object
from delta_actors.queue.actors import register_actor, unregister_actor
from delta_actors.queue.claimer import Claimer
from delta_actors.queue.completer import Completer
from delta_actors.queue.floors import Floors
from delta_actors.queue.promoter import Promoter
from delta_actors.queue.results import JobResult, Result, WorkResult
from delta_actors.queue.retry import retry_delay
from delta_actors.queue.runner import Claim, Invoker, JobRunner, WorkerStats
from delta_actors.resources.informers import InformerScheduler
from delta_actors.resources.reconciler import Reconciler
from delta_actors.runtime.worker import run_claim
from delta_actors.testing.results import InformerRun, JobRun, Results, WorkOutcome, WorkRun

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_LEASE_TTL = 3600.0  # seconds: an informer run in a test never outlasts it
_error_decoder = msgspec.json.Decoder(JobError)
_ENDINGS: dict[str, WorkOutcome] = {
    "success": "synced", "requeue": "requeued", "error": "failed", "degraded": "degraded",
    "deleting": "deleting", "deleted": "deleted", "cancelled": "cancelled",
}  # fmt: skip


class NotIdleError(DeltaError):
    """A Runner ran `max_runs` runs and the queue still had due work (a requeue loop?)."""


class AsyncRunner:
    """Runs an app's due works, jobs and informers inline, for async tests.

    Args:
        app: the controllers and job handlers to run.
        client: a Client or AsyncClient of the test's database (or its DSN). A client
            made without an app takes this one (`client.app = app`), so that what it
            informs from then on lands in the controllers' namespaces with their
            `max_attempts`, as under `supervise`; one with an app keeps its own.
        namespaces: the namespaces to run; all of the app's by default.
        retry_policy: attempt number -> seconds before a failed attempt runs again
            (default: the worker's, attempt**4 with +/-10 % jitter).
        max_runs: runs after which `run_until_idle` gives up with NotIdleError.
    """

    def __init__(
        self,
        app: App,
        client: Client | AsyncClient | str,
        *,
        namespaces: Iterable[str] | None = None,
        retry_policy: Callable[[int], float] = retry_delay,
        max_runs: int = 1000,
    ) -> None:
        if not isinstance(app, App):
            raise ConfigError(f"Runner needs a delta.App, got {type(app).__name__}")
        self._app = app
        self._dsn = _dsn_of(client)
        if isinstance(client, Client | AsyncClient) and client.app is None:
            # Without it the client stores objects in the default namespace with the
            # default max_attempts: a controller of another namespace would never run
            # here, and "fails twice then degrades" would not degrade.
            client.app = app
        self._namespaces = list(app.namespaces) if namespaces is None else list(namespaces)
        for name in self._namespaces:
            app.namespace(name)  # UnknownNamespaceError names the app's
        self._retry_policy = retry_policy
        self._max_runs = max_runs
        self.advanced = 0.0  # seconds the test advanced the clock by, in all

    async def run_until_idle(self, *, informers: bool = False) -> Results:
        """Run every due work and job, and what they cause, until none is due.

        With `informers=True`, first run each informer of the app that is due (the first
        run of one is due at once; `client.run_informer` makes one due).
        """
        async with _Session(self._app, self._dsn, self._retry_policy) as session:
            results = Results()
            if informers:
                for kind in await session.due_informers():
                    run = await session.run_informer(kind)
                    if run is not None:
                        results.informers.append(run)
            await session.drain(self._namespaces, results, self._max_runs)
            return results

    async def run_informer(
        self, object_type: type[Object] | str, *, full: bool = False
    ) -> InformerRun:
        """Run the informer of this kind now, after its cursor or (`full`) a full listing;
        its objects are stored, their works not run (run_until_idle does that)."""
        kind = object_type if isinstance(object_type, str) else kind_of(object_type)
        registration = self._app.controllers.get(kind)
        if registration is None or not runs_informer(registration.controller):
            informers = sorted(
                k for k, r in self._app.controllers.items() if runs_informer(r.controller)
            )
            raise UnknownKindError(
                f"the app has no informer of kind {kind!r} (informers: "
                f"{', '.join(informers) or 'none'})"
            )
        async with _Session(self._app, self._dsn, self._retry_policy) as session:
            run = await session.run_informer(kind, request_full=full)
        assert run is not None  # requested: START_INFORMER takes it, due or not
        return run

    async def advance(self, seconds: float, *, informers: bool = False) -> Results:
        """Move the clock `seconds` ahead (see the module docstring), then run until idle."""
        if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
            raise ConfigError(f"advance takes seconds >= 0, got {seconds!r}")
        with translate_errors("advance the test clock", self._dsn):
            async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as conn:
                await conn.execute(job_sql.ADVANCE_CLOCK, {"seconds": float(seconds)})
        self.advanced += seconds
        return await self.run_until_idle(informers=informers)

    async def next_due_in(self) -> float | None:
        """Seconds until the next scheduled or retryable job is due; None if none waits."""
        with translate_errors("read the next due time", self._dsn):
            async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as conn:
                cur = await conn.execute(job_sql.SELECT_NEXT_DUE_IN)
                row = await cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])


class Runner:
    """The sync twin of AsyncRunner, for plain `def` tests: each call runs on an event
    loop of its own (uvloop), closed before it returns. Same arguments and methods."""

    def __init__(
        self,
        app: App,
        client: Client | AsyncClient | str,
        *,
        namespaces: Iterable[str] | None = None,
        retry_policy: Callable[[int], float] = retry_delay,
        max_runs: int = 1000,
    ) -> None:
        self._runner = AsyncRunner(
            app, client, namespaces=namespaces, retry_policy=retry_policy, max_runs=max_runs
        )

    @property
    def advanced(self) -> float:
        """Seconds the test advanced the clock by, in all."""
        return self._runner.advanced

    def run_until_idle(self, *, informers: bool = False) -> Results:
        """Run every due work and job until none is due (see AsyncRunner)."""
        return _run(self._runner.run_until_idle(informers=informers))

    def run_informer(self, object_type: type[Object] | str, *, full: bool = False) -> InformerRun:
        """Run the informer of this kind now (see AsyncRunner)."""
        return _run(self._runner.run_informer(object_type, full=full))

    def advance(self, seconds: float, *, informers: bool = False) -> Results:
        """Move the clock `seconds` ahead, then run until idle (see AsyncRunner)."""
        return _run(self._runner.advance(seconds, informers=informers))

    def next_due_in(self) -> float | None:
        """Seconds until the next scheduled or retryable job is due (see AsyncRunner)."""
        return _run(self._runner.next_due_in())


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise ConfigError(
            "delta.testing.Runner was called inside a running event loop (an async test): "
            "use delta.testing.AsyncRunner there and await its methods"
        )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop:
        return loop.run(coro)


def _dsn_of(client: Client | AsyncClient | str) -> str:
    if isinstance(client, str):
        check_dsn(client)
        return client
    if not isinstance(client, Client | AsyncClient):
        raise ConfigError(
            f"Runner takes a delta.Client, a delta.AsyncClient or a DSN, got "
            f"{type(client).__name__}"
        )
    conninfo = client._pool.conninfo
    if not isinstance(conninfo, str):
        raise ConfigError("Runner needs a client whose pool's conninfo is a string: pass the DSN")
    return conninfo


class _Session:
    """One Runner call's connections, actor row and runners; closed when the call ends."""

    def __init__(self, app: App, dsn: str, retry_policy: Callable[[int], float]) -> None:
        self._app = app
        self._dsn = dsn
        self._retry_policy = retry_policy
        self._pool = make_async_pool(dsn, min_size=1, max_size=4, name="delta-test-runner")
        self._claimer = Claimer(dsn, "test-runner")
        self._invoker = Invoker(4, "delta-test-runner", lambda: False)
        self._stats = WorkerStats()
        self._actor_id = 0

    async def __aenter__(self) -> _Session:
        action = "start the test runner"
        # A connection of its own first, as the worker's start: a database that is not
        # there fails at once with PostgreSQL's reason, not as a pool timeout later.
        async with await connect_async(self._dsn, action=action) as conn:
            with translate_errors(action, self._dsn):
                await check_schema_async(conn)
                self._actor_id = await register_actor(conn, "test-runner", "worker")
        try:
            with translate_errors(action, self._dsn):
                await self._pool.open(wait=True, timeout=30)
        except BaseException:
            with contextlib.suppress(DeltaError, psycopg.Error, OSError):
                async with await connect_async(self._dsn, action=action) as conn:
                    await conn.execute(actor_sql.UNREGISTER_ACTOR, (self._actor_id,))
            raise
        self._client = AsyncClient(self._pool, app=self._app)
        self._completer = Completer(
            self._pool, self._actor_id, max_pending=1, on_written=lambda _r, _s, _f: None
        )
        self._jobs = JobRunner(self._app, self._invoker, self._stats, self._retry_policy)
        self._works = Reconciler(self._app, self._invoker, self._stats, self._retry_policy)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._claimer.close()
            with translate_errors("stop the test runner", self._dsn):
                await unregister_actor(self._pool, self._actor_id)
        finally:
            await self._pool.close()
            self._invoker.shutdown()

    # ------------------------------------------------------------------ works and jobs

    async def drain(self, namespaces: list[str], results: Results, max_runs: int) -> None:
        """Promote, claim and run until no namespace has a due job (see the module)."""
        promoter = Promoter(self._pool)
        runs = 0
        while True:
            with translate_errors("promote due jobs", self._dsn):
                await promoter.run_once()
            ran = False
            for namespace in namespaces:
                while claims := await self._claim(namespace):
                    for claim in claims:
                        await self._run(claim, results)
                    ran = True
                    runs += len(claims)
                    if runs >= max_runs:
                        raise NotIdleError(
                            f"still busy after {runs} runs (max_runs): last "
                            f"{_describe(results.runs[-1]) if results.runs else '?'}; does a "
                            "work requeue itself with after=0?"
                        )
            if not ran:
                return

    async def _claim(self, namespace: str) -> list[Claim]:
        params = {"namespace": namespace, "limit": 1, "actor": self._actor_id}
        # Every claim reads the whole queue, from the start: floors (queue/floors.py) are
        # a worker's economy under load, and the clock moves due times back.
        self._claimer.floors = Floors()
        with translate_errors(f"claim jobs of namespace {namespace!r}", self._dsn):
            if self._app.limits:
                rows = await self._claimer.claim_limited(params, self._app.limits)
            else:
                rows = await self._claimer.claim(params)
        traced = tracing.recording()
        return [Claim.from_row(row, namespace, traced) for row in rows]

    async def _run(self, claim: Claim, results: Results) -> None:
        task = asyncio.create_task(self._run_claim(claim), name=f"test-runner:job:{claim.id}")
        result = await _with_deadline(claim, task)
        with translate_errors(f"write the result of job {claim.id}", self._dsn):
            stale = await self._completer.write([result])
            results.runs.append(await self._describe_run(claim, result, result.id in stale))

    async def _run_claim(self, claim: Claim) -> Result:
        # The task's top frame, as Worker._run_job is: a GeneratorExit thrown into the
        # task closes every frame below it, so only here can it become the claim's result.
        try:
            return await run_claim(claim, self._jobs, self._works, self._client, self._app)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 (the handler's failure, not ours)
            runner = self._jobs if claim.resource_id is None else self._works
            return runner.escaped(claim, exc)

    async def _describe_run(self, claim: Claim, result: Result, stale: bool) -> WorkRun | JobRun:
        error = _error_text(result.error)
        if isinstance(result, JobResult):
            registration = self._app.jobs.get(claim.kind)
            job = None
            if registration is not None:
                with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                    job = registration.decoder.decode(claim.args)
            return JobRun(claim.id, claim.kind, job, result.state, result.ending, error)
        assert isinstance(result, WorkResult)
        row = claim.resource
        object_id = row.object_id if row is not None else "?"
        finalize = row is not None and row.deletion_requested_at is not None
        outcome = "stale" if stale else _ENDINGS.get(result.ending, "cancelled")
        if outcome == "failed" and row is not None:
            async with self._pool.connection() as conn:
                cur = await conn.execute(resource_sql.SELECT_WORK_OUTCOMES, ([row.id],))
                now = await cur.fetchone()
            if now is not None and now[1] == "degraded" and now[2] == result.generation:
                outcome = "degraded"  # its last attempt: COMPLETE_WORKS degraded it
        return WorkRun(claim.kind, object_id, outcome, result.generation, finalize, error)

    # ------------------------------------------------------------------ informers

    async def due_informers(self) -> list[str]:
        """The app's informers that are due now (added first, as the leader does)."""
        kinds = [k for k, r in self._app.controllers.items() if runs_informer(r.controller)]
        if not kinds:
            return []
        with translate_errors("read due informers", self._dsn):
            async with self._pool.connection() as conn:
                await conn.execute(leader_sql.ADD_INFORMERS, (kinds,))
                cur = await conn.execute(leader_sql.SELECT_INFORMERS, (kinds,))
                due = {kind for kind, _, is_due, _ in await cur.fetchall() if is_due}
        return [kind for kind in kinds if kind in due]

    async def run_informer(
        self, kind: str, *, request_full: bool | None = None
    ) -> InformerRun | None:
        """Run one informer under a lease held for the run (None: it was not due);
        `request_full` not None asks for the run first, as `client.run_informer` does, so
        that it runs even if not due."""
        scheduler = InformerScheduler(self._app, self._pool)
        with translate_errors(f"run informer {kind}", self._dsn):
            async with self._pool.connection() as conn:
                await conn.execute(leader_sql.ADD_INFORMERS, ([kind],))
            if request_full is not None:
                await self._client.run_informer(kind, full=request_full)
            term = await self._take_lease()
            try:
                ran = await scheduler.run_informer(kind, term, self._actor_id)
            finally:
                async with self._pool.connection() as conn:
                    await conn.execute(
                        leader_sql.RESIGN_LEASE, {"term": term, "actor": self._actor_id}
                    )
        if not ran["ran"]:
            return None
        return InformerRun(
            kind, bool(ran["full"]), int(ran["objects"]), int(ran.get("tombstoned", 0)),
            ran.get("error"),
        )  # fmt: skip

    async def _take_lease(self) -> int:
        params = {"actor": self._actor_id, "host": "test-runner", "pid": 0, "ttl": _LEASE_TTL}
        async with self._pool.connection() as conn:
            cur = await conn.execute(leader_sql.ATTEMPT_ELECTION, params)
            row = await cur.fetchone()
        if row is None:
            raise ConfigError(
                "the test Runner cannot run informers while another leader holds the lease "
                "(a `delta-actors supervise` on the test's database?): stop it first"
            )
        return int(row[0])


async def _with_deadline(claim: Claim, task: asyncio.Task[Result]) -> Result:
    """Await the run, cancelling it as timed out at its deadline (the worker's watch)."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            # The deadline is set when the handler is invoked, just after the task starts.
            wait = claim.deadline - loop.time()
            done, _ = await asyncio.wait([task], timeout=min(max(wait, 0.0), 0.05))
            if done:
                return task.result()
            if loop.time() >= claim.deadline and not claim.timed_out:
                claim.timed_out = True
                cancel_once(task)
    except asyncio.CancelledError:
        cancel_once(task)
        raise


def _error_text(error: str | None) -> str | None:
    if error is None:
        return None
    try:
        return _error_decoder.decode(error).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return error


def _describe(run: WorkRun | JobRun) -> str:
    if isinstance(run, WorkRun):
        return f"{run.key} {run.outcome}"
    return f"job {run.id} ({run.kind}) {run.ending}"
