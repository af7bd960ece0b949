"""Running one claimed job: the user's handler under a deadline, its outcome as a result.

Deadlines are enforced by the worker's deadline watch, which marks the claim timed out and
cancels its task; `invoke` turns that cancellation into `HandlerTimeout`. A cancellation
from anyone else (the stop deadline) passes through untouched.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import traceback
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

import msgspec

from delta_actors.app import App
from delta_actors.config import DEFAULT_NAMESPACE
from delta_actors.db.resource_sql import StoredRow
from delta_actors.middleware import Call, Wrap, run_through
from delta_actors.model.job_row import JobError
from delta_actors.outcomes import Cancel, PermanentError, Requeue
from delta_actors.queue import results
from delta_actors.queue.results import UNKNOWN_KIND_DELAY, JobResult

logger = logging.getLogger(__name__)

_TRACE_LIMIT = 4000
_error_encoder = msgspec.json.Encoder()
_metadata_decoder = msgspec.json.Decoder(dict[str, Any])
_TRACE_KEYS = ("traceparent", "tracestate")
_NO_CONTEXT: Mapping[str, str] = MappingProxyType({})


@dataclass(slots=True)
class WorkerStats:
    """Counters of one worker since it started."""

    claimed: int = 0
    completed: int = 0
    failed: int = 0
    snoozed: int = 0
    cancelled: int = 0
    discarded: int = 0
    deleted: int = 0
    handed_back: int = 0
    stale: int = 0
    unknown_kind: int = 0
    claims: int = 0
    claim_failures: int = 0  # claims that failed on the database (logged as claim_failed)


@dataclass(slots=True)
class Claim:
    """A job this worker holds: the row CLAIM_JOBS returned, and its run."""

    id: int
    kind: str
    args: bytes
    attempt: int
    max_attempts: int
    resource_id: int | None
    priority: int
    resource: StoredRow | None  # a resource work's resource, with its object
    namespace: str = DEFAULT_NAMESPACE  # the claim's (its rows do not carry it)
    metadata: str | None = None  # the row's metadata (JSON text): what queued it, traced
    tid: str | None = None  # the row version the claim wrote, where its result looks first
    floor_at: datetime | None = None  # where the claim read its priority from (floors.py)
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    deadline: float = float("inf")  # loop time after which the run counts as timed out
    timed_out: bool = False
    cancel_requested: bool = False  # an operator asked it to stop (cancel_jobs)
    # Its run has the work span (App.chain): tracing.recording(), asked once per claim
    # statement, since OpenTelemetry's lookup costs microseconds, a no-op job's tenth.
    traced: bool = False

    @classmethod
    def from_row(cls, row: tuple[Any, ...], namespace: str, traced: bool = False) -> Claim:
        """Build a Claim from a CLAIM_JOBS row of a claim of `namespace`: this class's
        fields (but its namespace; its scheduled_at is the floors' alone), then a
        StoredRow."""
        resource = StoredRow(*row[10:]) if row[5] is not None else None
        claim = cls(
            row[0], row[1], row[2], row[3], row[4], row[5], row[6], resource, namespace,
            row[8], row[9],
        )  # fmt: skip
        if traced:  # set apart: a keyword argument made each Claim 0.17 us dearer (timeit)
            claim.traced = True
        return claim


class HandlerTimeout(TimeoutError):  # noqa: N818 (internal signal)
    """A handler ran past its deadline (a TimeoutError, as middleware sees it)."""


def error_entry(attempt: int, exc: BaseException | None, message: str | None = None) -> str:
    """Encode one error history entry (a JobError) as JSON text."""
    trace = "".join(traceback.format_exception(exc))[-_TRACE_LIMIT:] if exc else ""
    text = message or f"{type(exc).__qualname__}: {exc}"
    return _error_encoder.encode(
        JobError(at=time.time(), attempt=attempt, error=text, trace=trace)
    ).decode()


class Invoker:
    """Calls user code for claims: async on the loop, sync on a thread, under a deadline.

    A plain def that overruns its deadline cannot be stopped and keeps its thread. Its
    pool is then replaced (the old one's other threads finish what they run and exit), so
    hung handlers, however many, never leave later ones waiting for a thread.
    """

    def __init__(self, threads: int, name: str, is_stopping: Callable[[], bool]) -> None:
        self._threads = threads
        self._name = name
        self._is_stopping = is_stopping
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self.abandoned_threads = 0

    def invoke(
        self,
        claim: Claim,
        fn: Callable[[Any], Any],
        arg: Any,
        *,
        is_async: bool,
        timeout: float,
        call: Call | None = None,
        chain: Sequence[Wrap] = (),
    ) -> Coroutine[Any, Any, None]:
        """Run fn(arg) inside `chain` (middleware.py); raise HandlerTimeout after `timeout` s.

        Await it in the run's task (the deadline starts now). Without middleware it is
        handle()'s coroutine, which a plain job's run awaits itself (JobRunner.run): a
        no-op job's whole run costs the worker some 13 us of CPU, and every call on its
        path (a coroutine layer, a function that hands one on, keyword arguments) a
        fraction of one.
        """
        if not chain or call is None:
            return self.handle(claim, fn, arg, is_async, timeout)
        return self._run_through(chain, call, claim, fn, arg, is_async=is_async, timeout=timeout)

    async def _run_through(
        self,
        chain: Sequence[Wrap],
        call: Call,
        claim: Claim,
        fn: Callable[[Any], Any],
        arg: Any,
        *,
        is_async: bool,
        timeout: float,
    ) -> None:
        claim.deadline = asyncio.get_running_loop().time() + timeout

        async def run_handler() -> None:
            await self.handle(claim, fn, arg, is_async, timeout, starts=False)

        try:
            await run_through(chain, call, run_handler)
        except asyncio.CancelledError as exc:
            # The deadline passed in a middleware's own code.
            converted = self._converted(claim, exc, timeout, in_thread=False)
            if converted is None:
                raise
            raise converted from exc

    async def handle(
        self,
        claim: Claim,
        fn: Callable[[Any], Any],
        arg: Any,
        is_async: bool,
        timeout: float,
        *,
        starts: bool = True,
    ) -> None:
        """fn(arg), its deadline starting now unless not `starts` (inside middleware,
        whose chain started it); its timeout or cancel request raised as such."""
        loop = asyncio.get_running_loop()
        if starts:
            claim.deadline = loop.time() + timeout
        try:
            if is_async:
                await fn(arg)
            else:
                # The task's context goes along (copied here, inside every middleware),
                # so a plain def sees its work_context() and what middleware set.
                context = contextvars.copy_context()
                await loop.run_in_executor(self._executor, context.run, fn, arg)
        except asyncio.CancelledError as exc:
            # Converted here, so that middleware sees the timeout as an exception.
            converted = self._converted(claim, exc, timeout, in_thread=not is_async)
            if converted is None:
                raise
            raise converted from exc

    def _converted(
        self, claim: Claim, exc: asyncio.CancelledError, timeout: float, *, in_thread: bool
    ) -> Exception | None:
        """What a cancellation of a run means: None (re-raise it), a timeout, or a Cancel."""
        if self._is_stopping() or not (claim.timed_out or claim.cancel_requested):
            return None
        # Cancelled by the deadline watch or an operator's request, not by anyone above us.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        if in_thread:
            self._abandon_thread(claim)
        if claim.cancel_requested and not claim.timed_out:
            return Cancel("asked to stop by an operator (cancel_jobs)")
        return HandlerTimeout(f"timed out after {timeout:g}s")

    def _abandon_thread(self, claim: Claim) -> None:
        old, self._executor = (
            self._executor, ThreadPoolExecutor(self._threads, thread_name_prefix=self._name),
        )  # fmt: skip
        old.shutdown(wait=False)
        self.abandoned_threads += 1
        logger.warning(
            "%s %d overran its timeout in a thread that cannot be stopped; %d such threads "
            "so far, later handlers get fresh ones", claim.kind, claim.id,
            self.abandoned_threads, extra={"event": "worker.thread_abandoned"},
        )  # fmt: skip

    def shutdown(self) -> None:
        """Stop the threads once idle, dropping handlers not yet started."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class ClaimRunner:
    """What running any claim needs: the app, the invoker, the counters, the backoff."""

    def __init__(
        self,
        app: App,
        invoker: Invoker,
        stats: WorkerStats,
        retry_policy: Callable[[int], float],
    ) -> None:
        self._app = app
        self._invoker = invoker
        self._stats = stats
        self._retry_policy = retry_policy


class JobRunner(ClaimRunner):
    """Runs plain jobs and maps their outcomes to JobResults."""

    async def run(self, claim: Claim) -> JobResult:
        """Run one claimed job and return what to write."""
        registration = self._app.jobs.get(claim.kind)
        if registration is None:
            return self._unknown_kind(claim)
        try:
            job = registration.decoder.decode(claim.args)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            message = (
                f"stored args of job {claim.id} no longer decode into "
                f"{registration.type.__qualname__}: {exc}"
            )
            return self._failed(claim, exc, message)
        chain = self._app.chain(claim.traced)
        try:
            if chain:
                call = Call(
                    "job", claim.kind, claim.namespace, claim.attempt, job=job,
                    job_id=claim.id, trace_context=trace_context(claim.metadata),
                    max_attempts=claim.max_attempts,
                )  # fmt: skip
                await self._invoker.invoke(
                    claim, registration.handler, job, is_async=registration.is_async,
                    timeout=registration.timeout, call=call, chain=chain,
                )  # fmt: skip
            else:
                await self._invoker.handle(
                    claim, registration.handler, job, registration.is_async,
                    registration.timeout,
                )  # fmt: skip
        except Requeue as outcome:
            self._stats.snoozed += 1
            return results.job_requeued(claim.id, claim.attempt, outcome.after)
        except Cancel as outcome:
            self._stats.cancelled += 1
            error = error_entry(claim.attempt, None, f"cancelled: {outcome.reason}")
            return results.job_cancelled(claim.id, claim.attempt, error)
        except PermanentError as exc:
            self._stats.discarded += 1
            error = error_entry(claim.attempt, exc, f"permanent error: {exc.reason}")
            return results.job_discarded(claim.id, claim.attempt, error)
        except HandlerTimeout as exc:
            return self._failed(claim, exc, str(exc))
        except (asyncio.CancelledError, GeneratorExit):
            raise  # GeneratorExit: see Worker._run_job
        except BaseException as exc:  # noqa: BLE001 (a handler's SystemExit is its job's failure)
            return self._failed(claim, exc)
        self._stats.completed += 1
        return results.job_done(claim.id, claim.attempt)

    def escaped(self, claim: Claim, exc: BaseException) -> JobResult:
        """The result for a run that `exc` ended outside run() (see Worker._run_job)."""
        return self._failed(claim, exc)

    def _failed(self, claim: Claim, exc: BaseException, message: str | None = None) -> JobResult:
        error = error_entry(claim.attempt, exc, message)
        self._stats.failed += 1
        if claim.attempt >= claim.max_attempts:
            self._stats.discarded += 1
            logger.warning(
                "job %d (%s) failed attempt %d of %d, discarding: %s",
                claim.id, claim.kind, claim.attempt, claim.max_attempts, message or exc,
                extra={"event": "job.discarded", "job_id": claim.id, "kind": claim.kind},
            )  # fmt: skip
            return results.job_failed(claim.id, claim.attempt, claim.max_attempts, 0.0, error)
        delay = self._retry_policy(claim.attempt)
        logger.info(
            "job %d (%s) failed attempt %d of %d, retrying in %.1fs: %s",
            claim.id, claim.kind, claim.attempt, claim.max_attempts, delay, message or exc,
            extra={"event": "job.failed", "job_id": claim.id, "kind": claim.kind},
        )  # fmt: skip
        return results.job_failed(claim.id, claim.attempt, claim.max_attempts, delay, error)

    def _unknown_kind(self, claim: Claim) -> JobResult:
        # Not the job's fault and nothing to lose: offer it again later, uncounted, so a
        # deploy that registers the kind picks it up.
        self._stats.unknown_kind += 1
        message = unknown_kind_message("job kind", claim.kind, self._app.jobs)
        logger.error(message, extra={"event": "job.unknown_kind", "job_id": claim.id})
        return results.job_of_unknown_kind(
            claim.id, claim.attempt, error_entry(claim.attempt, None, message)
        )


def trace_context(metadata: str | None) -> Mapping[str, str]:
    """The trace context in a job row's metadata (tracing.py); else empty."""
    if metadata is None:
        return _NO_CONTEXT
    try:
        decoded = _metadata_decoder.decode(metadata)
    except msgspec.DecodeError:
        return _NO_CONTEXT
    return {k: v for k, v in decoded.items() if k in _TRACE_KEYS and isinstance(v, str)}


def unknown_kind_message(what: str, kind: str, registered: dict[str, Any]) -> str:
    """Say that this worker has no code for `kind`, and when it is offered again."""
    names = ", ".join(sorted(registered)) or "none"
    return (
        f"no handler for {what} {kind!r} in this worker (registered: {names}); "
        f"offered again in {UNKNOWN_KIND_DELAY:g}s"
    )
