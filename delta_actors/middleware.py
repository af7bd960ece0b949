"""`App(middleware=[...])`: the application's own code around every run of a handler.

    @contextlib.asynccontextmanager
    async def tenancy(call: delta.Call):            # form 1: an async context manager
        token = TENANT.set(call.resource.tags[0] if call.resource else "-")
        try:
            yield
        finally:
            TENANT.reset(token)

    async def report(call: delta.Call, proceed):    # form 2: async def (call, proceed)
        try:
            await proceed()
        except Exception:
            sentry_sdk.capture_exception()
            raise

    app = delta.App(controllers=[...], middleware=[tenancy, report])

The two forms are told apart when the App is made: an `async def` (or an object whose
`__call__` is one) taking `(call, proceed)` wraps the run and awaits `proceed()` to run
what it wraps; anything else callable is a factory called with the `Call` that returns
an async context manager. The first middleware of the list is the outermost.

Invariants (what the runner, queue/runner.py, guarantees and tests pin down):
- A middleware runs for every run of a `work`, a `finalize` and a plain job, on the event
  loop, in the run's own task: inside its contextvars context, with `work_context()`
  open. What it sets in a contextvar the handler sees, a plain def's thread included
  (the thread's context is copied once every middleware is entered).
- The handler's outcome reaches the middleware as it ended: returned, or raised
  (`Requeue`, `Delete`, `PermanentError`, `Cancel`, the handler's own exception, or a
  `TimeoutError` when it ran past its timeout, a deadline that covers the middleware
  too). A stop of the worker cancels it: a middleware lets `CancelledError` through.
- A middleware that raises makes the run end with that exception, as if the handler had
  raised it: a failure (retried) for an ordinary exception, an outcome for `Requeue` and
  the others. It never reaches the worker. One that swallows the handler's exception
  (or never calls `proceed()`) makes the run end as if the handler had returned.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import msgspec

from delta_actors.errors import ConfigError
from delta_actors.model.job import Job
from delta_actors.model.resource import Resource

Proceed: TypeAlias = Callable[[], Awaitable[None]]
Middleware: TypeAlias = (
    Callable[["Call"], AbstractAsyncContextManager[Any]]
    | Callable[["Call", Proceed], Awaitable[None]]
)


class Call(msgspec.Struct, frozen=True):
    """One run of a handler, as middleware sees it (a frozen msgspec Struct: one is made
    per run, and a frozen dataclass costs ten times as much to make).

    Attributes:
        handler: "work", "finalize" (a resource's) or "job" (a plain job's).
        kind: the resource's or the job's kind.
        namespace: where it runs.
        attempt: this run's attempt, from 1 (a resource's: of its current generation).
        resource: the `Resource` a work or finalize reconciles; None for a plain job.
        job: the plain job's `Job` (its arguments); None for a resource.
        job_id: the id of the queue row being run.
        trace_context: the W3C trace context (`traceparent`, `tracestate`) of the inform
            or enqueue that queued the run, when it was traced; else empty.
        max_attempts: the plain job's attempts before a failure discards it; 0 for a
            resource (its own `max_attempts` says).
    """

    handler: Literal["work", "finalize", "job"]
    kind: str
    namespace: str
    attempt: int
    resource: Resource[Any] | None = None
    job: Job | None = None
    job_id: int = 0
    trace_context: Mapping[str, str] = msgspec.field(default_factory=dict)
    max_attempts: int = 0

    @property
    def id(self) -> str:
        """The resource's object id, or the plain job's id as text."""
        return self.resource.object_id if self.resource is not None else str(self.job_id)

    @property
    def generation(self) -> int | None:
        """The resource's generation; None for a plain job."""
        return self.resource.generation if self.resource is not None else None


@dataclass(frozen=True, slots=True)
class Wrap:
    """A middleware, checked and classified: `wraps` means the `(call, proceed)` form."""

    function: Middleware
    wraps: bool


def check_middleware(middleware: Sequence[Middleware]) -> tuple[Wrap, ...]:
    """Classify each middleware (module docstring), or raise ConfigError naming the fix."""
    given: Any = middleware  # checked at run time: apps are often untyped
    if isinstance(given, (str, bytes)) or not isinstance(given, Sequence):
        raise ConfigError(f"middleware must be a list, got {type(given).__name__}")
    checked = []
    for entry in middleware:
        if not callable(entry):
            raise ConfigError(
                f"middleware {entry!r:.100} is not callable: give an async context manager "
                "factory (e.g. an @contextlib.asynccontextmanager function of the call) or "
                "an `async def (call, proceed)`"
            )
        wraps = inspect.iscoroutinefunction(entry) or inspect.iscoroutinefunction(
            getattr(entry, "__call__", None)  # noqa: B004 (an object with async __call__)
        )
        if wraps and not _takes_two(entry):
            raise ConfigError(
                f"middleware {entry!r:.100} is an async def, so it must take (call, proceed) "
                "and await proceed(); for an async context manager of the call, decorate "
                "it with @contextlib.asynccontextmanager"
            )
        checked.append(Wrap(entry, wraps))
    return tuple(checked)


def _takes_two(function: Callable[..., Any]) -> bool:
    try:
        inspect.signature(function).bind(None, None)
    except TypeError:
        return False
    except ValueError:  # no signature to read (a builtin): let the call tell
        return True
    return True


async def run_through(
    chain: Sequence[Wrap], call: Call, innermost: Proceed, index: int = 0
) -> None:
    """Run `innermost` inside `chain[index:]`, the first of them outermost."""
    if index == len(chain):
        await innermost()
        return
    wrap = chain[index]

    async def proceed() -> None:
        await run_through(chain, call, innermost, index + 1)

    if wrap.wraps:
        await wrap.function(call, proceed)  # type: ignore[call-arg,misc]
        return
    manager = wrap.function(call)  # type: ignore[call-arg]
    if not hasattr(manager, "__aenter__") or not hasattr(manager, "__aexit__"):
        raise TypeError(
            f"middleware {wrap.function!r:.100} returned {manager!r:.100}, not an async "
            "context manager: decorate it with @contextlib.asynccontextmanager, or make "
            "it an `async def (call, proceed)`"
        )
    async with manager:
        await proceed()
