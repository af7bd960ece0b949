"""`delta.work_context()`: what a running `work` or `finalize` may use besides its resource.

    ctx = delta.work_context()
    ctx.inform(Invoice(order=order.id()))      # stored iff this work's result commits
    ctx.enqueue(SendEmail(to=order.email))     # enqueued iff this work's result commits
    await ctx.client.get(Customer, order.customer)   # the actor's AsyncClient, at once

Effects, the protocol between a work, its worker and the completer:

1. The worker opens a context for each resource work it runs (`open_context`) in the
   work's task, so an async work sees it, and the invoker copies the task's context into
   the thread of a plain-def work, so that one does too.
2. `inform*` and `enqueue` validate and encode at once, as the client's calls do (a bad
   object raises inside the work: a failure of that work), and hold the result in
   memory. Nothing is written while the work runs.
3. When the work ends the worker closes the context (a call after that, from a thread
   that outlived its timeout, raises) and hands its effects to the result
   (`results.with_effects`): kept by the endings that are not failures (synced, requeue,
   deleting, deleted), dropped by every other (failed, timed out, degraded, handed back).
4. The completer writes a result that carries effects and the effects in one
   transaction, after the result's fenced statement: a stale claim (rescued or handed
   back meanwhile) writes nothing, so neither do its effects; a retried batch was rolled
   back whole, so each committed result leaves its effects exactly once. A rescued work
   never reaches the completer: its effects die with its process.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import psycopg

from delta_actors.app import App
from delta_actors.client import AsyncClient, inform_params, insert_options
from delta_actors.db.connection import drive_async
from delta_actors.errors import ConfigError
from delta_actors.model.job import Job
from delta_actors.model.object import Object
from delta_actors.queue.insert import InsertBatch, build_batch, insert_jobs_async
from delta_actors.resources.store import InformParams, encode_options, inform, prepare

_current: contextvars.ContextVar[WorkContext | None] = contextvars.ContextVar(
    "delta_work_context", default=None
)


class WorkContext:
    """The context of one running `work` or `finalize` (see the module docstring)."""

    __slots__ = ("_app", "_client", "_effects", "_open")

    def __init__(self, client: AsyncClient, app: App) -> None:
        self._client = client
        self._app = app
        self._effects: list[InformEffect | EnqueueEffect] = []
        self._open = True

    @property
    def client(self) -> AsyncClient:
        """The actor's AsyncClient: reads, and writes that commit at once (not effects)."""
        return self._client

    def inform(
        self,
        obj: Object,
        *,
        namespace: str | None = None,
        tags: Iterable[str] = (),
        metadata: dict[str, Any] | None = None,
        max_attempts: int | None = None,
    ) -> None:
        """Inform about `obj` when this work's result commits (options as Client.inform)."""
        self.inform_many(
            [obj], namespace=namespace, tags=tags, metadata=metadata, max_attempts=max_attempts
        )

    def inform_many(
        self,
        objects: Iterable[Object],
        *,
        namespace: str | None = None,
        tags: Iterable[str] = (),
        metadata: dict[str, Any] | None = None,
        max_attempts: int | None = None,
    ) -> None:
        """Inform about `objects` when this work's result commits, atomically with it."""
        self._check_open("inform")
        params = inform_params(namespace, tags, metadata, max_attempts)
        items = prepare(objects, params, self._app)
        encode_options(params)  # raises now, not in the completer
        if items:
            self._effects.append(InformEffect(items, params))

    def enqueue(
        self,
        job: Job,
        *,
        namespace: str | None = None,
        priority: int = 1,
        scheduled_at: datetime | None = None,
        unique_key: str | None = None,
        max_attempts: int = 25,
    ) -> None:
        """Enqueue `job` when this work's result commits (options as Client.enqueue)."""
        self._check_open("enqueue")
        options = insert_options(namespace, priority, scheduled_at, unique_key, max_attempts)
        self._effects.append(EnqueueEffect(build_batch([job], options, self._app)))

    def _check_open(self, what: str) -> None:
        if not self._open:
            raise ConfigError(
                f"work_context().{what}() after its work ended (a plain def that outlived "
                "its timeout?): effects are only taken while the work runs"
            )

    def close(self) -> tuple[InformEffect | EnqueueEffect, ...]:
        """End the context; return its effects, in the order they were made."""
        self._open = False
        return tuple(self._effects)


class InformEffect:
    """`ctx.inform*`: objects prepared for the inform path, written by the completer."""

    __slots__ = ("_items", "_params")

    def __init__(self, items: list[Any], params: InformParams) -> None:
        self._items = items
        self._params = params

    async def write(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await drive_async(conn, inform(self._items, self._params))


class EnqueueEffect:
    """`ctx.enqueue`: a job encoded for the insert path, written by the completer."""

    __slots__ = ("_batch",)

    def __init__(self, batch: InsertBatch) -> None:
        self._batch = batch

    async def write(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await insert_jobs_async(conn, self._batch)


def work_context() -> WorkContext:
    """Return the context of the running `work` or `finalize`; raise outside one."""
    ctx = _current.get()
    if ctx is None:
        raise ConfigError(
            "delta.work_context() is only available inside a controller's work() or "
            "finalize() run by an actor; elsewhere use a delta.Client or delta.AsyncClient"
        )
    return ctx


def open_context(client: AsyncClient, app: App) -> WorkContext:
    """Open a context for the work about to run in this task (the worker calls this)."""
    ctx = WorkContext(client, app)
    _current.set(ctx)
    return ctx
