"""`delta.Client` and `delta.AsyncClient`: what application code imports.

Twins like psycopg's Connection and AsyncConnection: the same methods, blocking or awaited.
A client owns a connection pool (`Client.connect(dsn)`) or uses one it is given
(`Client(pool)`). Every `*_tx` method runs in the caller's connection and transaction, so
the work it creates commits or rolls back with the caller's own writes.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any, TypeVar, overload

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from delta_actors import bulk, tracing
from delta_actors.app import App
from delta_actors.controller import runs_informer
from delta_actors.db import job_sql, leader_sql, resource_sql
from delta_actors.db.connection import (
    Rows,
    Statement,
    connect,
    connect_async,
    drive,
    drive_async,
    make_async_pool,
    make_pool,
    resolve_dsn,
    translate_errors,
)
from delta_actors.db.migrations import check_schema, check_schema_async
from delta_actors.db.orm import (
    AsyncTransaction,
    SyncTransaction,
    async_connection,
    sync_connection,
)
from delta_actors.db.resource_sql import StoredRow
from delta_actors.errors import ConfigError, DatabaseError, DecodeError, UnknownKindError
from delta_actors.events import AsyncSubscription, Subscription, make_filters
from delta_actors.local.embedded import DATABASE as EMBEDDED_DATABASE
from delta_actors.local.embedded import embedded_cluster
from delta_actors.model.job import Job
from delta_actors.model.job_row import EnqueuedJob, JobRow, JobState, job_row
from delta_actors.model.kinds import Kinded, kind_of
from delta_actors.model.names import validate_name
from delta_actors.model.object import Object
from delta_actors.model.page import Page
from delta_actors.model.resource import InformResult, Resource, State
from delta_actors.queue.insert import (
    InsertBatch,
    InsertOptions,
    JobSpec,
    build_batch,
    insert_jobs,
    insert_jobs_async,
)
from delta_actors.resources.store import InformParams, inform, prepare

T = TypeVar("T", bound=Object)
logger = logging.getLogger(__name__)


def inform_params(
    namespace: str | None,
    tags: Iterable[str],
    metadata: dict[str, Any] | None,
    max_attempts: int | None,
) -> InformParams:
    if isinstance(tags, str):
        raise ConfigError(f"tags must be a list of strings, got the string {tags!r}")
    return InformParams(
        namespace=namespace, tags=tuple(tags), metadata=metadata, max_attempts=max_attempts
    )


# The logic of each call, once, as statements for `drive` (Client) or `drive_async`
# (AsyncClient) to run: the two clients only open a connection and drive these.


def _get(object_type: type[T], object_id: str) -> Generator[Statement, Rows, Resource[T] | None]:
    rows = yield resource_sql.GET_RESOURCE, (kind_of(object_type), object_id)
    return _resource(object_type, rows[0] if rows else None)


def _invalidate(
    object_type: type[T], object_id: str
) -> Generator[Statement, Rows, Resource[T] | None]:
    kind = kind_of(object_type)
    yield from bulk.retry_resources(bulk.resource_filter(kind, ids=[object_id]))
    rows = yield resource_sql.GET_RESOURCE, (kind, object_id)
    return _resource(object_type, rows[0] if rows else None)


def _delete(
    object_type: type[T], object_ids: list[str], finalize: bool
) -> Generator[Statement, Rows, list[Resource[T] | None]]:
    kind = kind_of(object_type)
    params = {"kind": kind, "object_ids": object_ids, "finalize": finalize, "reason": None}
    yield resource_sql.DELETE_RESOURCES, params
    rows = yield resource_sql.GET_RESOURCES, (kind, object_ids)
    found = {row.object_id: row for row in (StoredRow(*values) for values in rows)}
    return [_resource_of(object_type, found.get(object_id)) for object_id in object_ids]


def _deletion(
    object_type: type[Object], object_ids: Iterable[str], app: App | None
) -> tuple[list[str], bool]:
    """The ids to delete, checked, and whether their deletion runs a `finalize`.

    A client with an app knows; one without marks them `deleting` and leaves it to the
    worker, which deletes at once when its controller has no `finalize`.
    """
    if isinstance(object_ids, str):
        raise ConfigError(f"object_ids must be a list of ids, got the string {object_ids!r}")
    ids = list(object_ids)
    for object_id in ids:
        if not isinstance(object_id, str):
            raise ConfigError(f"object ids are strings, got {object_id!r}")
    kind = kind_of(object_type)
    if app is None:
        return ids, True
    return ids, app.controller(kind).finalizes


def _get_job(job_id: int) -> Generator[Statement, Rows, JobRow | None]:
    rows = yield job_sql.GET_JOB, (job_id,)
    return job_row(rows[0]) if rows else None


def _cancel_job(job_id: int) -> Generator[Statement, Rows, JobRow | None]:
    rows = yield job_sql.CANCEL_JOB, (job_id,)
    if not rows:
        rows = yield job_sql.GET_JOB, (job_id,)
    return job_row(rows[0]) if rows else None


def _request_informer(kind: str, full: bool) -> Generator[Statement, Rows, None]:
    rows = yield leader_sql.REQUEST_INFORMER, {"kind": kind, "full": full}
    if rows:
        return
    known = yield leader_sql.SELECT_INFORMER_KINDS, None
    names = ", ".join(row[0] for row in known) or "none"
    raise UnknownKindError(
        f"no informer of kind {kind!r} in this database (informers: {names}); a kind's "
        "informer is known once the leader of an app whose controller has one started"
    )


def _informer_kind(object_type: type[Object] | str, app: App | None) -> str:
    kind = object_type if isinstance(object_type, str) else kind_of(object_type)
    validate_name(kind, "kind")
    if app is not None:
        registration = app.controllers.get(kind)
        if registration is None or not runs_informer(registration.controller):
            informers = sorted(k for k, r in app.controllers.items() if runs_informer(r.controller))
            raise UnknownKindError(
                f"the app has no informer of kind {kind!r} (informers: "
                f"{', '.join(informers) or 'none'})"
            )
    return kind


def _resource(object_type: type[T], values: tuple[Any, ...] | None) -> Resource[T] | None:
    return _resource_of(object_type, None if values is None else StoredRow(*values))


def _resource_of(object_type: type[T], row: StoredRow | None) -> Resource[T] | None:
    if row is None:
        return None
    try:
        obj = msgspec.json.decode(row.object, type=object_type)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(
            f"stored {row.kind} {row.object_id!r} no longer decodes into "
            f"{object_type.__qualname__} ({exc}); inform a current object to replace it"
        ) from exc
    return row.resource(obj)


def _pool_of(pool: Any, kind: type[ConnectionPool] | type[AsyncConnectionPool], client: str) -> Any:
    """`pool` if it is a pool of `kind`; else a ConfigError naming what to pass."""
    if isinstance(pool, kind):
        return pool
    hint = f"make the client with {client}.connect(dsn), or pass a pool of your own"
    if isinstance(pool, ConnectionPool | AsyncConnectionPool):
        other = "delta.AsyncClient" if kind is ConnectionPool else "delta.Client"
        hint = f"for a psycopg_pool.{type(pool).__name__} use {other}"
    raise ConfigError(
        f"{client} takes a psycopg_pool.{kind.__name__}, got "
        f"{type(pool).__module__}.{type(pool).__qualname__}; {hint}"
    )


def _conninfo(pool: ConnectionPool | AsyncConnectionPool) -> str:
    """The pool's connection string: a subscription opens its own connection with it."""
    if pool.closed:
        # Its own connection would work, but the client is done with: as every other call.
        raise DatabaseError(f"subscribe: the client's pool {pool.name!r} is closed")
    if not isinstance(pool.conninfo, str):
        raise ConfigError(
            "subscribe needs a pool whose conninfo is a string, not a callable: "
            "create the client with Client.connect(dsn) or a pool built from a DSN"
        )
    return pool.conninfo


def _require_dsn(dsn: str | None) -> str:
    """The DSN given, else $DELTA_DATABASE_URL, else the embedded database of this folder
    (or $DELTA_DATA_DIR) when it runs, as the CLI finds it; said in the log."""
    resolved = resolve_dsn(dsn)
    if resolved is not None:
        return resolved
    cluster = embedded_cluster()
    if cluster.is_initialized() and cluster.is_running():
        logger.info(
            "no DSN given: using the embedded database in %s", cluster.data_dir,
            extra={"event": "client.embedded"},
        )  # fmt: skip
        return cluster.dsn(EMBEDDED_DATABASE)
    raise ConfigError(
        "no database given: pass a DSN, set DELTA_DATABASE_URL, or start the embedded "
        f"database in {cluster.data_dir} (`delta-actors db start`)"
    )


def _where(
    object_type: type[Object],
    app: App | None,
    *,
    state: State | str | None,
    tags: Iterable[str] | None,
    error: str | None,
    namespace: str | None,
    ids: Iterable[str] | None,
) -> bulk.ResourceFilter:
    kind = kind_of(object_type)
    if app is not None:
        app.controller(kind)  # an unknown kind raises, naming the registered ones
    return bulk.resource_filter(
        kind, state=state, tags=tags, error=error, namespace=namespace, ids=ids
    )


def _decoded_page(object_type: type[T], page: tuple[Rows, str | None]) -> Page[Resource[T]]:
    rows, after = page
    items = [_resource(object_type, row) for row in rows]
    return Page([item for item in items if item is not None], after)


def _bulk_delete(
    object_type: type[Object],
    app: App | None,
    where: bulk.ResourceFilter,
) -> Generator[Statement, Rows, int]:
    if where.is_whole_kind:
        raise ConfigError(
            f"delete({object_type.__qualname__}) with neither an id nor a filter would delete "
            "every resource of the kind: pass an id, or a filter (state=, tags=, error=, "
            "namespace=, ids=)"
        )
    finalize = True if app is None else app.controller(kind_of(object_type)).finalizes
    return (yield from bulk.delete_resources(where, finalize))


def _job_where(
    kind: str | type[Job] | None,
    state: JobState | str | None,
    error: str | None,
    namespace: str | None,
    ids: Iterable[int] | None,
) -> bulk.JobFilter:
    name = kind if kind is None or isinstance(kind, str) else kind_of(kind)
    return bulk.job_filter(name, state=state, error=error, namespace=namespace, ids=ids)


def _single(object_id: str | None, filters: tuple[Any, ...]) -> bool:
    if object_id is None:
        return False
    if any(f is not None for f in filters):
        raise ConfigError("delete takes an object id or filters, not both")
    return True


def _sync_conn(conn: Any, method: str) -> psycopg.Connection:
    """The psycopg.Connection of `conn` (db/orm.py); else a ConfigError naming what to pass."""
    return sync_connection(conn, method)


async def _async_conn(conn: Any, method: str) -> psycopg.AsyncConnection:
    """The psycopg.AsyncConnection of `conn` (db/orm.py); else a ConfigError naming the fix."""
    return await async_connection(conn, method)


def _traced(items: list[Any]) -> AbstractContextManager[Any]:
    """The inform's span (tracing.py), or nothing without the `otel` extra."""
    return tracing.inform_span(items) if tracing.recording() else nullcontext()


def _insert(conn: psycopg.Connection, batch: InsertBatch) -> list[EnqueuedJob]:
    """insert_jobs, in an `enqueue` span whose trace context the jobs carry, when tracing
    records (tracing.py); else just insert_jobs."""
    if not batch or not tracing.recording():
        return insert_jobs(conn, batch)
    with tracing.enqueue_span(batch.kinds, batch.namespaces) as span:
        batch.metadata = tracing.carrier()
        jobs = insert_jobs(conn, batch)
        tracing.enqueue_done(span, jobs)
        return jobs


async def _insert_async(conn: psycopg.AsyncConnection, batch: InsertBatch) -> list[EnqueuedJob]:
    """Async twin of _insert."""
    if not batch or not tracing.recording():
        return await insert_jobs_async(conn, batch)
    with tracing.enqueue_span(batch.kinds, batch.namespaces) as span:
        batch.metadata = tracing.carrier()
        jobs = await insert_jobs_async(conn, batch)
        tracing.enqueue_done(span, jobs)
        return jobs


def insert_options(
    namespace: str | None,
    priority: int,
    scheduled_at: datetime | None,
    unique_key: str | None,
    max_attempts: int,
) -> InsertOptions:
    return InsertOptions(
        namespace=namespace,
        priority=priority,
        scheduled_at=scheduled_at,
        unique_key=unique_key,
        max_attempts=max_attempts,
    )


class Client:
    """Enqueue jobs and read their state (blocking).

    Args:
        pool: a psycopg_pool.ConnectionPool to borrow connections from.
        app: when given, kinds and namespaces are checked against it before writing.
    """

    def __init__(self, pool: ConnectionPool, *, app: App | None = None) -> None:
        self._pool: ConnectionPool = _pool_of(pool, ConnectionPool, "Client")
        self._owns_pool = False
        self.app = app

    @classmethod
    def connect(
        cls, dsn: str | None = None, *, app: App | None = None, max_size: int = 4
    ) -> Client:
        """Connect to `dsn` (default `$DELTA_DATABASE_URL`), checking it and its schema."""
        dsn = _require_dsn(dsn)
        with connect(dsn, action="connect client") as probe, translate_errors("connect client"):
            check_schema(probe)
        pool = make_pool(dsn, min_size=1, max_size=max_size, name="delta-client")
        with translate_errors("open client pool", dsn):
            pool.open(wait=True, timeout=30)
        client = cls(pool, app=app)
        client._owns_pool = True
        return client

    def close(self) -> None:
        """Close the pool if this client opened it."""
        if self._owns_pool:
            self._pool.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def enqueue(
        self,
        job: Job,
        *,
        namespace: str | None = None,
        priority: int = 1,
        scheduled_at: datetime | None = None,
        unique_key: str | None = None,
        max_attempts: int = 25,
    ) -> EnqueuedJob:
        """Enqueue one job in its own transaction.

        Args:
            job: the job's arguments.
            namespace: the queue whose workers run it; default: the job type's
                `namespace=`, else "default".
            priority: 1 (first) to 4 (last).
            scheduled_at: an aware datetime before which it does not run; None: now.
            unique_key: while a live job of this kind holds the key, return that job instead.
            max_attempts: failed attempts before the job is discarded.
        """
        options = insert_options(namespace, priority, scheduled_at, unique_key, max_attempts)
        batch = build_batch([job], options, self.app)
        with translate_errors("enqueue"), self._pool.connection() as conn:
            return _insert(conn, batch)[0]

    def enqueue_tx(
        self,
        conn: SyncTransaction,
        job: Job,
        *,
        namespace: str | None = None,
        priority: int = 1,
        scheduled_at: datetime | None = None,
        unique_key: str | None = None,
        max_attempts: int = 25,
    ) -> EnqueuedJob:
        """Enqueue one job in `conn`'s transaction: visible and woken at its commit."""
        conn = _sync_conn(conn, "enqueue_tx")
        options = insert_options(namespace, priority, scheduled_at, unique_key, max_attempts)
        batch = build_batch([job], options, self.app)
        with translate_errors("enqueue"):
            return _insert(conn, batch)[0]

    def enqueue_many(
        self,
        jobs: Iterable[Job | JobSpec],
        *,
        namespace: str | None = None,
        priority: int = 1,
        scheduled_at: datetime | None = None,
        max_attempts: int = 25,
    ) -> list[EnqueuedJob]:
        """Enqueue many jobs atomically, in input order; a JobSpec overrides options per job."""
        options = insert_options(namespace, priority, scheduled_at, None, max_attempts)
        batch = build_batch(jobs, options, self.app)
        with translate_errors("enqueue"), self._pool.connection() as conn:
            return _insert(conn, batch)

    def enqueue_many_tx(
        self,
        conn: SyncTransaction,
        jobs: Iterable[Job | JobSpec],
        *,
        namespace: str | None = None,
        priority: int = 1,
        scheduled_at: datetime | None = None,
        max_attempts: int = 25,
    ) -> list[EnqueuedJob]:
        """Enqueue many jobs in `conn`'s transaction."""
        conn = _sync_conn(conn, "enqueue_many_tx")
        options = insert_options(namespace, priority, scheduled_at, None, max_attempts)
        batch = build_batch(jobs, options, self.app)
        with translate_errors("enqueue"):
            return _insert(conn, batch)

    def get_job(self, job_id: int) -> JobRow | None:
        """Return the job with id `job_id`, or None."""
        with translate_errors("get job"), self._pool.connection() as conn:
            return drive(conn, _get_job(job_id))

    def cancel_job(self, job_id: int) -> JobRow | None:
        """Cancel a job that is waiting to run; return it as it now is (None if unknown).

        A running job finishes its current attempt; a finished one stays as it is.
        """
        with translate_errors("cancel job"), self._pool.connection() as conn:
            return drive(conn, _cancel_job(job_id))

    # ------------------------------------------------------------------ resources

    def inform(
        self,
        obj: T,
        *,
        namespace: str | None = None,
        tags: Iterable[str] = (),
        metadata: dict[str, Any] | None = None,
        max_attempts: int | None = None,
    ) -> InformResult[T]:
        """Store `obj` as a resource and queue its work if it changed (its own transaction).

        Args:
            obj: the object, a delta.Object.
            namespace: where the resource lives; default: its controller's, else "default".
            tags: labels stored with the resource (set with each change).
            metadata: a JSON object stored with the resource (set with each change).
            max_attempts: failed attempts of one generation before it is degraded;
                default: its controller's, else 10.
        """
        return self.inform_many(
            [obj], namespace=namespace, tags=tags, metadata=metadata, max_attempts=max_attempts
        )[0]

    def inform_tx(
        self,
        conn: SyncTransaction,
        obj: T,
        *,
        namespace: str | None = None,
        tags: Iterable[str] = (),
        metadata: dict[str, Any] | None = None,
        max_attempts: int | None = None,
    ) -> InformResult[T]:
        """Inform in `conn`'s transaction: rollback leaves no trace, commit wakes a worker."""
        conn = _sync_conn(conn, "inform_tx")
        return self.inform_many_tx(
            conn, [obj], namespace=namespace, tags=tags, metadata=metadata,
            max_attempts=max_attempts,
        )[0]  # fmt: skip

    def inform_many(
        self,
        objects: Iterable[T],
        *,
        namespace: str | None = None,
        tags: Iterable[str] = (),
        metadata: dict[str, Any] | None = None,
        max_attempts: int | None = None,
    ) -> list[InformResult[T]]:
        """Inform about many objects atomically; results come in input order."""
        params = inform_params(namespace, tags, metadata, max_attempts)
        items = prepare(objects, params, self.app)
        if not items:
            return []
        with _traced(items) as span:
            with translate_errors("inform"), self._pool.connection() as conn, conn.transaction():
                results = drive(conn, inform(items, params))
            tracing.inform_done(span, results)
        return results

    def inform_many_tx(
        self,
        conn: SyncTransaction,
        objects: Iterable[T],
        *,
        namespace: str | None = None,
        tags: Iterable[str] = (),
        metadata: dict[str, Any] | None = None,
        max_attempts: int | None = None,
    ) -> list[InformResult[T]]:
        """Inform about many objects in `conn`'s transaction."""
        conn = _sync_conn(conn, "inform_many_tx")
        params = inform_params(namespace, tags, metadata, max_attempts)
        items = prepare(objects, params, self.app)
        if not items:
            return []
        with _traced(items) as span:
            with translate_errors("inform"):
                results = drive(conn, inform(items, params))
            tracing.inform_done(span, results)
        return results

    def get(self, object_type: type[T], object_id: str) -> Resource[T] | None:
        """Return the resource of `object_type` with id `object_id`, or None."""
        with translate_errors("get resource"), self._pool.connection() as conn:
            return drive(conn, _get(object_type, object_id))

    def invalidate(self, object_type: type[T], object_id: str) -> Resource[T] | None:
        """Work the resource again with its stored object; return it (None if unknown).

        A deleted resource stays deleted: only a newer change brings it back.
        """
        with translate_errors("invalidate"), self._pool.connection() as conn:
            return drive(conn, _invalidate(object_type, object_id))

    @overload
    def delete(self, object_type: type[T], object_id: str) -> Resource[T] | None: ...

    @overload
    def delete(
        self,
        object_type: type[T],
        object_id: None = None,
        *,
        state: State | str | None = None,
        tags: Iterable[str] | None = None,
        error: str | None = None,
        namespace: str | None = None,
        ids: Iterable[str] | None = None,
    ) -> int: ...

    def delete(
        self,
        object_type: type[T],
        object_id: str | None = None,
        *,
        state: State | str | None = None,
        tags: Iterable[str] | None = None,
        error: str | None = None,
        namespace: str | None = None,
        ids: Iterable[str] | None = None,
    ) -> Resource[T] | int | None:
        """Start deleting one resource, or every one that matches the filters of `list`.

        With an id, return the resource (None if unknown: nothing is written); with
        filters, how many began deleting (in batches, as `retry`). Without a `finalize`
        on its controller a resource is `deleted` at once; with one it is `deleting`
        until its `finalize` returns. Deleting a deleted (or deleting) resource changes
        nothing; a newer inform revives it.
        """
        if _single(object_id, (state, tags, error, namespace, ids)):
            assert object_id is not None
            return self.delete_many(object_type, [object_id])[0]
        where = _where(
            object_type, self.app, state=state, tags=tags, error=error, namespace=namespace, ids=ids
        )
        with translate_errors("delete"), self._pool.connection() as conn:
            return drive(conn, _bulk_delete(object_type, self.app, where))

    def delete_tx(
        self, conn: SyncTransaction, object_type: type[T], object_id: str
    ) -> Resource[T] | None:
        """Delete in `conn`'s transaction: rollback leaves no trace, commit starts it."""
        conn = _sync_conn(conn, "delete_tx")
        return self.delete_many_tx(conn, object_type, [object_id])[0]

    def delete_many(
        self, object_type: type[T], object_ids: Iterable[str]
    ) -> list[Resource[T] | None]:
        """Delete many resources of one kind atomically; results come in input order."""
        ids, finalize = _deletion(object_type, object_ids, self.app)
        if not ids:
            return []
        with translate_errors("delete"), self._pool.connection() as conn, conn.transaction():
            return drive(conn, _delete(object_type, ids, finalize))

    def delete_many_tx(
        self, conn: SyncTransaction, object_type: type[T], object_ids: Iterable[str]
    ) -> list[Resource[T] | None]:
        """Delete many resources of one kind in `conn`'s transaction."""
        conn = _sync_conn(conn, "delete_many_tx")
        ids, finalize = _deletion(object_type, object_ids, self.app)
        if not ids:
            return []
        with translate_errors("delete"):
            return drive(conn, _delete(object_type, ids, finalize))

    def run_informer(self, object_type: type[Object] | str, *, full: bool = False) -> None:
        """Ask the leader to run this kind's informer now (within about a second).

        Args:
            object_type: the Object type (or kind name) whose controller's informer runs.
            full: list everything (tombstones included, if the controller has them)
                instead of the changes after the cursor.

        A run already in progress is not doubled: the request runs once more after it.
        Works from any client, with or without an app: the request goes through the
        database to whichever leader holds the lease.
        """
        kind = _informer_kind(object_type, self.app)
        with translate_errors("run informer"), self._pool.connection() as conn:
            drive(conn, _request_informer(kind, full))

    # ------------------------------------------------------------------ operators

    def list(
        self,
        object_type: type[T],
        *,
        state: State | str | None = None,
        tags: Iterable[str] | None = None,
        error: str | None = None,
        namespace: str | None = None,
        ids: Iterable[str] | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> Page[Resource[T]]:
        """One page of the resources of `object_type` that match, in object id order.

        Args:
            state: the stored state (RUNNING: those whose work runs).
            tags: resources that carry all of them.
            error: a part of the newest error (case-insensitive).
            namespace, ids: where they live; which object ids.
            after: the `next` of the previous page; limit: items per page (1..10000).
        """
        where = _where(
            object_type, self.app, state=state, tags=tags, error=error, namespace=namespace, ids=ids
        )
        with translate_errors("list resources"), self._pool.connection() as conn:
            return _decoded_page(object_type, drive(conn, bulk.list_resources(where, after, limit)))

    def retry(
        self,
        object_type: type[T],
        *,
        state: State | str | None = None,
        tags: Iterable[str] | None = None,
        error: str | None = None,
        namespace: str | None = None,
        ids: Iterable[str] | None = None,
    ) -> int:
        """Work the matching resources again with their stored objects: attempts reset,
        errors kept, one work each (folded into a queued one). Deleted ones are skipped;
        one being deleted runs its `finalize` again. Returns how many were queued.

        In batches of a few thousand, each its own transaction: informs go on meanwhile.
        """
        where = _where(
            object_type, self.app, state=state, tags=tags, error=error, namespace=namespace, ids=ids
        )
        with translate_errors("retry resources"), self._pool.connection() as conn:
            return drive(conn, bulk.retry_resources(where))

    def list_jobs(
        self,
        kind: str | type[Job] | None = None,
        *,
        state: JobState | str | None = None,
        error: str | None = None,
        namespace: str | None = None,
        ids: Iterable[int] | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> Page[JobRow]:
        """One page of plain jobs that match, in id order (filters as in `list`)."""
        where = _job_where(kind, state, error, namespace, ids)
        with translate_errors("list jobs"), self._pool.connection() as conn:
            return drive(conn, bulk.list_jobs(where, after, limit))

    def retry_jobs(
        self,
        kind: str | type[Job] | None = None,
        *,
        state: JobState | str | None = None,
        error: str | None = None,
        namespace: str | None = None,
        ids: Iterable[int] | None = None,
    ) -> int:
        """Put matching jobs that are neither running nor available back to available now
        (one more attempt allowed if they used theirs up); return how many."""
        where = _job_where(kind, state, error, namespace, ids)
        with translate_errors("retry jobs"), self._pool.connection() as conn:
            return drive(conn, bulk.retry_jobs(where))

    def cancel_jobs(
        self,
        kind: str | type[Job] | None = None,
        *,
        state: JobState | str | None = None,
        error: str | None = None,
        namespace: str | None = None,
        ids: Iterable[int] | None = None,
    ) -> int:
        """Cancel the matching jobs that still wait, and ask the running ones to stop
        (their worker cancels the run within a second or two; it ends `cancelled`);
        return how many."""
        where = _job_where(kind, state, error, namespace, ids)
        with translate_errors("cancel jobs"), self._pool.connection() as conn:
            return drive(conn, bulk.cancel_jobs(where))

    def pause(self, namespace: str) -> None:
        """Stop claims of `namespace` on every host until `resume`; running works finish,
        informs and enqueues are still accepted. Stored, so it outlives restarts."""
        statements = bulk.pause(namespace)
        with translate_errors("pause"), self._pool.connection() as conn:
            drive(conn, statements)

    def resume(self, namespace: str) -> None:
        """Let claims of a paused namespace go on (a no-op if it is not paused)."""
        statements = bulk.resume(namespace)
        with translate_errors("resume"), self._pool.connection() as conn:
            drive(conn, statements)

    # ------------------------------------------------------------------ events

    def subscribe(
        self,
        kinds: Iterable[str | type[Kinded]] | None = None,
        events: Iterable[str | State] | None = None,
        *,
        buffer_size: int = 10_000,
        poll_interval: float = 0.1,
    ) -> Subscription:
        """Receive resource events from every process and host, until closed.

        Iterate the returned Subscription (use it as a context manager, so its connection
        and lease are released) for `Event` items, in commit order per resource, and a
        `Gap(missed=n)` wherever this consumer fell more than `buffer_size` events behind.
        Results written after this returns are covered; workers never wait for it.

        Args:
            kinds: kinds (names or Object types) to receive; None: all.
            events: any of "synced", "failed", "degraded", "deleting",
                "deleted"; None: all.
            buffer_size: events held for a slow consumer before they are dropped and counted.
            poll_interval: seconds between reads of new events (the added latency).
        """
        filters = make_filters(kinds, events, self.app)
        return Subscription(
            _conninfo(self._pool), filters, buffer_size=buffer_size, poll_interval=poll_interval
        )


class AsyncClient:
    """Enqueue jobs and read their state (async twin of Client)."""

    def __init__(self, pool: AsyncConnectionPool, *, app: App | None = None) -> None:
        self._pool: AsyncConnectionPool = _pool_of(pool, AsyncConnectionPool, "AsyncClient")
        self._owns_pool = False
        self.app = app

    @classmethod
    async def connect(
        cls, dsn: str | None = None, *, app: App | None = None, max_size: int = 4
    ) -> AsyncClient:
        """Connect to `dsn` (default `$DELTA_DATABASE_URL`), checking it and its schema."""
        dsn = _require_dsn(dsn)
        async with await connect_async(dsn, action="connect client") as probe:
            with translate_errors("connect client"):
                await check_schema_async(probe)
        pool = make_async_pool(dsn, min_size=1, max_size=max_size, name="delta-client")
        with translate_errors("open client pool", dsn):
            await pool.open(wait=True, timeout=30)
        client = cls(pool, app=app)
        client._owns_pool = True
        return client

    async def close(self) -> None:
        """Close the pool if this client opened it."""
        if self._owns_pool:
            await self._pool.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def enqueue(
        self,
        job: Job,
        *,
        namespace: str | None = None,
        priority: int = 1,
        scheduled_at: datetime | None = None,
        unique_key: str | None = None,
        max_attempts: int = 25,
    ) -> EnqueuedJob:
        """Enqueue one job in its own transaction (see Client.enqueue)."""
        options = insert_options(namespace, priority, scheduled_at, unique_key, max_attempts)
        batch = build_batch([job], options, self.app)
        with translate_errors("enqueue"):
            async with self._pool.connection() as conn:
                return (await _insert_async(conn, batch))[0]

    async def enqueue_tx(
        self,
        conn: AsyncTransaction,
        job: Job,
        *,
        namespace: str | None = None,
        priority: int = 1,
        scheduled_at: datetime | None = None,
        unique_key: str | None = None,
        max_attempts: int = 25,
    ) -> EnqueuedJob:
        """Enqueue one job in `conn`'s transaction: visible and woken at its commit."""
        conn = await _async_conn(conn, "enqueue_tx")
        options = insert_options(namespace, priority, scheduled_at, unique_key, max_attempts)
        batch = build_batch([job], options, self.app)
        with translate_errors("enqueue"):
            return (await _insert_async(conn, batch))[0]

    async def enqueue_many(
        self,
        jobs: Iterable[Job | JobSpec],
        *,
        namespace: str | None = None,
        priority: int = 1,
        scheduled_at: datetime | None = None,
        max_attempts: int = 25,
    ) -> list[EnqueuedJob]:
        """Enqueue many jobs atomically, in input order; a JobSpec overrides options per job."""
        options = insert_options(namespace, priority, scheduled_at, None, max_attempts)
        batch = build_batch(jobs, options, self.app)
        with translate_errors("enqueue"):
            async with self._pool.connection() as conn:
                return await _insert_async(conn, batch)

    async def enqueue_many_tx(
        self,
        conn: AsyncTransaction,
        jobs: Iterable[Job | JobSpec],
        *,
        namespace: str | None = None,
        priority: int = 1,
        scheduled_at: datetime | None = None,
        max_attempts: int = 25,
    ) -> list[EnqueuedJob]:
        """Enqueue many jobs in `conn`'s transaction."""
        conn = await _async_conn(conn, "enqueue_many_tx")
        options = insert_options(namespace, priority, scheduled_at, None, max_attempts)
        batch = build_batch(jobs, options, self.app)
        with translate_errors("enqueue"):
            return await _insert_async(conn, batch)

    async def get_job(self, job_id: int) -> JobRow | None:
        """Return the job with id `job_id`, or None."""
        with translate_errors("get job"):
            async with self._pool.connection() as conn:
                return await drive_async(conn, _get_job(job_id))

    async def cancel_job(self, job_id: int) -> JobRow | None:
        """Cancel a job that is waiting to run (see Client.cancel_job)."""
        with translate_errors("cancel job"):
            async with self._pool.connection() as conn:
                return await drive_async(conn, _cancel_job(job_id))

    # ------------------------------------------------------------------ resources

    async def inform(
        self,
        obj: T,
        *,
        namespace: str | None = None,
        tags: Iterable[str] = (),
        metadata: dict[str, Any] | None = None,
        max_attempts: int | None = None,
    ) -> InformResult[T]:
        """Store `obj` as a resource and queue its work if it changed (see Client.inform)."""
        return (
            await self.inform_many(
                [obj], namespace=namespace, tags=tags, metadata=metadata,
                max_attempts=max_attempts,
            )
        )[0]  # fmt: skip

    async def inform_tx(
        self,
        conn: AsyncTransaction,
        obj: T,
        *,
        namespace: str | None = None,
        tags: Iterable[str] = (),
        metadata: dict[str, Any] | None = None,
        max_attempts: int | None = None,
    ) -> InformResult[T]:
        """Inform in `conn`'s transaction: rollback leaves no trace, commit wakes a worker."""
        conn = await _async_conn(conn, "inform_tx")
        return (
            await self.inform_many_tx(
                conn, [obj], namespace=namespace, tags=tags, metadata=metadata,
                max_attempts=max_attempts,
            )
        )[0]  # fmt: skip

    async def inform_many(
        self,
        objects: Iterable[T],
        *,
        namespace: str | None = None,
        tags: Iterable[str] = (),
        metadata: dict[str, Any] | None = None,
        max_attempts: int | None = None,
    ) -> list[InformResult[T]]:
        """Inform about many objects atomically; results come in input order."""
        params = inform_params(namespace, tags, metadata, max_attempts)
        items = prepare(objects, params, self.app)
        if not items:
            return []
        with _traced(items) as span:
            with translate_errors("inform"):
                async with self._pool.connection() as conn, conn.transaction():
                    results = await drive_async(conn, inform(items, params))
            tracing.inform_done(span, results)
        return results

    async def inform_many_tx(
        self,
        conn: AsyncTransaction,
        objects: Iterable[T],
        *,
        namespace: str | None = None,
        tags: Iterable[str] = (),
        metadata: dict[str, Any] | None = None,
        max_attempts: int | None = None,
    ) -> list[InformResult[T]]:
        """Inform about many objects in `conn`'s transaction."""
        conn = await _async_conn(conn, "inform_many_tx")
        params = inform_params(namespace, tags, metadata, max_attempts)
        items = prepare(objects, params, self.app)
        if not items:
            return []
        with _traced(items) as span:
            with translate_errors("inform"):
                results = await drive_async(conn, inform(items, params))
            tracing.inform_done(span, results)
        return results

    async def get(self, object_type: type[T], object_id: str) -> Resource[T] | None:
        """Return the resource of `object_type` with id `object_id`, or None."""
        with translate_errors("get resource"):
            async with self._pool.connection() as conn:
                return await drive_async(conn, _get(object_type, object_id))

    async def invalidate(self, object_type: type[T], object_id: str) -> Resource[T] | None:
        """Work the resource again with its stored object (see Client.invalidate)."""
        with translate_errors("invalidate"):
            async with self._pool.connection() as conn:
                return await drive_async(conn, _invalidate(object_type, object_id))

    @overload
    async def delete(self, object_type: type[T], object_id: str) -> Resource[T] | None: ...

    @overload
    async def delete(
        self,
        object_type: type[T],
        object_id: None = None,
        *,
        state: State | str | None = None,
        tags: Iterable[str] | None = None,
        error: str | None = None,
        namespace: str | None = None,
        ids: Iterable[str] | None = None,
    ) -> int: ...

    async def delete(
        self,
        object_type: type[T],
        object_id: str | None = None,
        *,
        state: State | str | None = None,
        tags: Iterable[str] | None = None,
        error: str | None = None,
        namespace: str | None = None,
        ids: Iterable[str] | None = None,
    ) -> Resource[T] | int | None:
        """Start deleting one resource (return it, None if unknown) or every match of the
        filters (return how many): see Client.delete."""
        if _single(object_id, (state, tags, error, namespace, ids)):
            assert object_id is not None
            return (await self.delete_many(object_type, [object_id]))[0]
        where = _where(
            object_type, self.app, state=state, tags=tags, error=error, namespace=namespace, ids=ids
        )
        with translate_errors("delete"):
            async with self._pool.connection() as conn:
                return await drive_async(conn, _bulk_delete(object_type, self.app, where))

    async def delete_tx(
        self, conn: AsyncTransaction, object_type: type[T], object_id: str
    ) -> Resource[T] | None:
        """Delete in `conn`'s transaction: rollback leaves no trace, commit starts it."""
        conn = await _async_conn(conn, "delete_tx")
        return (await self.delete_many_tx(conn, object_type, [object_id]))[0]

    async def delete_many(
        self, object_type: type[T], object_ids: Iterable[str]
    ) -> list[Resource[T] | None]:
        """Delete many resources of one kind atomically; results come in input order."""
        ids, finalize = _deletion(object_type, object_ids, self.app)
        if not ids:
            return []
        with translate_errors("delete"):
            async with self._pool.connection() as conn, conn.transaction():
                return await drive_async(conn, _delete(object_type, ids, finalize))

    async def delete_many_tx(
        self, conn: AsyncTransaction, object_type: type[T], object_ids: Iterable[str]
    ) -> list[Resource[T] | None]:
        """Delete many resources of one kind in `conn`'s transaction."""
        conn = await _async_conn(conn, "delete_many_tx")
        ids, finalize = _deletion(object_type, object_ids, self.app)
        if not ids:
            return []
        with translate_errors("delete"):
            return await drive_async(conn, _delete(object_type, ids, finalize))

    async def run_informer(self, object_type: type[Object] | str, *, full: bool = False) -> None:
        """Ask the leader to run this kind's informer now (see Client.run_informer)."""
        kind = _informer_kind(object_type, self.app)
        with translate_errors("run informer"):
            async with self._pool.connection() as conn:
                await drive_async(conn, _request_informer(kind, full))

    # ------------------------------------------------------------------ operators

    async def list(
        self,
        object_type: type[T],
        *,
        state: State | str | None = None,
        tags: Iterable[str] | None = None,
        error: str | None = None,
        namespace: str | None = None,
        ids: Iterable[str] | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> Page[Resource[T]]:
        """One page of matches (see Client.list)."""
        where = _where(
            object_type, self.app, state=state, tags=tags, error=error, namespace=namespace, ids=ids
        )
        with translate_errors("list resources"):
            async with self._pool.connection() as conn:
                page = await drive_async(conn, bulk.list_resources(where, after, limit))
        return _decoded_page(object_type, page)

    async def retry(
        self,
        object_type: type[T],
        *,
        state: State | str | None = None,
        tags: Iterable[str] | None = None,
        error: str | None = None,
        namespace: str | None = None,
        ids: Iterable[str] | None = None,
    ) -> int:
        """Work the matching resources again; return how many (see Client.retry)."""
        where = _where(
            object_type, self.app, state=state, tags=tags, error=error, namespace=namespace, ids=ids
        )
        with translate_errors("retry resources"):
            async with self._pool.connection() as conn:
                return await drive_async(conn, bulk.retry_resources(where))

    async def list_jobs(
        self,
        kind: str | type[Job] | None = None,
        *,
        state: JobState | str | None = None,
        error: str | None = None,
        namespace: str | None = None,
        ids: Iterable[int] | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> Page[JobRow]:
        """One page of matching plain jobs (see Client.list_jobs)."""
        where = _job_where(kind, state, error, namespace, ids)
        with translate_errors("list jobs"):
            async with self._pool.connection() as conn:
                return await drive_async(conn, bulk.list_jobs(where, after, limit))

    async def retry_jobs(
        self,
        kind: str | type[Job] | None = None,
        *,
        state: JobState | str | None = None,
        error: str | None = None,
        namespace: str | None = None,
        ids: Iterable[int] | None = None,
    ) -> int:
        """Retry matching jobs; return how many (see Client.retry_jobs)."""
        where = _job_where(kind, state, error, namespace, ids)
        with translate_errors("retry jobs"):
            async with self._pool.connection() as conn:
                return await drive_async(conn, bulk.retry_jobs(where))

    async def cancel_jobs(
        self,
        kind: str | type[Job] | None = None,
        *,
        state: JobState | str | None = None,
        error: str | None = None,
        namespace: str | None = None,
        ids: Iterable[int] | None = None,
    ) -> int:
        """Cancel matching jobs, running ones asked to stop (see Client.cancel_jobs)."""
        where = _job_where(kind, state, error, namespace, ids)
        with translate_errors("cancel jobs"):
            async with self._pool.connection() as conn:
                return await drive_async(conn, bulk.cancel_jobs(where))

    async def pause(self, namespace: str) -> None:
        """Pause a namespace's claims cluster-wide (see Client.pause)."""
        statements = bulk.pause(namespace)
        with translate_errors("pause"):
            async with self._pool.connection() as conn:
                await drive_async(conn, statements)

    async def resume(self, namespace: str) -> None:
        """Resume a paused namespace (see Client.resume)."""
        statements = bulk.resume(namespace)
        with translate_errors("resume"):
            async with self._pool.connection() as conn:
                await drive_async(conn, statements)

    # ------------------------------------------------------------------ events

    def subscribe(
        self,
        kinds: Iterable[str | type[Kinded]] | None = None,
        events: Iterable[str | State] | None = None,
        *,
        buffer_size: int = 10_000,
        poll_interval: float = 0.1,
    ) -> AsyncSubscription:
        """Receive resource events as an async iterator (see Client.subscribe).

        Coverage starts when the subscription is entered (`async with`) or first iterated.
        """
        filters = make_filters(kinds, events, self.app)
        return AsyncSubscription(
            _conninfo(self._pool), filters, buffer_size=buffer_size, poll_interval=poll_interval
        )
