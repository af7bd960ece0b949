"""Inserting jobs, in the caller's connection and transaction.

One job without a unique key is a plain VALUES insert that wakes its queue. Other small
batches, and batches with unique keys, are one INSERT over `unnest` that skips rows
whose unique key a live job holds and sends one NOTIFY per queue that got available work
(Postgres folds identical notifications of a transaction into one and delivers them only
at commit). Duplicates are then looked up and reported as the existing job. Large batches
without unique keys reserve their ids from the sequence, read the transaction's clock,
are COPYed in, and notify each queue once. Sync and async twins share every step but the
I/O calls.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, LiteralString, TypeVar

import msgspec
import psycopg
from psycopg.types.json import Jsonb

from delta_actors.config import DEFAULT_NAMESPACE
from delta_actors.db import job_sql
from delta_actors.db.connection import Rows, Statement, drive, drive_async
from delta_actors.db.job_sql import InsertedJob
from delta_actors.errors import ConfigError, EncodeError
from delta_actors.model.job import Job
from delta_actors.model.job_row import EnqueuedJob, JobState
from delta_actors.model.kinds import kind_of
from delta_actors.model.names import validate_name

if TYPE_CHECKING:
    from delta_actors.app import App

# Batches at least this large and without unique keys are COPYed in, twice as fast as
# the INSERT (they need no conflict handling).
COPY_THRESHOLD = 256
# Rows per statement: large enough to amortize the round trip, small enough that one
# statement's parameters stay a few MB.
INSERT_CHUNK = 10_000
_MAX_ATTEMPTS_LIMIT = 32_767
_encoder = msgspec.json.Encoder()
_T = TypeVar("_T")


class JobSpec(msgspec.Struct, frozen=True):
    """One job with per-job options for `enqueue_many`; None takes the call's default."""

    job: Job
    namespace: str | None = None
    priority: int | None = None
    scheduled_at: datetime | None = None
    unique_key: str | None = None
    max_attempts: int | None = None


@dataclass(frozen=True, slots=True)
class InsertOptions:
    """The defaults of one enqueue call."""

    namespace: str | None = None  # None: the job type's `namespace=`, else "default"
    priority: int = 1
    scheduled_at: datetime | None = None
    unique_key: str | None = None
    max_attempts: int = 25


@dataclass(slots=True)
class InsertBatch:
    """Column arrays for INSERT_JOBS, one entry per job, in input order."""

    kinds: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    args: list[bytes] = field(default_factory=list)
    priorities: list[int] = field(default_factory=list)
    max_attempts: list[int] = field(default_factory=list)
    unique_keys: list[str | None] = field(default_factory=list)
    scheduled_at: list[datetime | None] = field(default_factory=list)
    # What every job of the batch carries in `delta_job.metadata` (JSON text): the trace
    # context of a traced enqueue (tracing.py), else None.
    metadata: str | None = None

    def __len__(self) -> int:
        return len(self.kinds)

    def params(self, start: int, stop: int) -> tuple[Any, ...]:
        """Return the statement parameters for rows start..stop."""
        return (
            self.metadata,
            self.kinds[start:stop],
            self.namespaces[start:stop],
            self.args[start:stop],
            self.priorities[start:stop],
            self.max_attempts[start:stop],
            self.unique_keys[start:stop],
            self.scheduled_at[start:stop],
        )


def build_batch(
    jobs: Iterable[Job | JobSpec], options: InsertOptions, app: App | None
) -> InsertBatch:
    """Validate and encode `jobs`; raise before anything is written if one is bad."""
    batch = InsertBatch()
    checks = _Checks(app)
    # The Job types that passed as plain items: a later plain item of such a type takes
    # the same (checked) options and kind, and only needs encoding.
    plain: dict[type, tuple[str, InsertOptions]] = {}
    for position, item in enumerate(jobs):
        known = plain.get(type(item))
        if known is None:
            kind, job_options = checks.item(position, item, options)
            if not isinstance(item, JobSpec):
                plain[type(item)] = (kind, job_options)
        else:
            kind, job_options = known
        job = item.job if isinstance(item, JobSpec) else item
        try:
            encoded = _encoder.encode(job)
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            raise EncodeError(f"job {position} of kind {kind!r} does not encode: {exc}") from exc
        batch.kinds.append(kind)
        batch.namespaces.append(_namespace(job_options))
        batch.args.append(encoded)
        batch.priorities.append(job_options.priority)
        batch.max_attempts.append(job_options.max_attempts)
        batch.unique_keys.append(job_options.unique_key)
        batch.scheduled_at.append(job_options.scheduled_at)
    return batch


class _Checks:
    """Checks an item and its options, each job type and namespace against the app once."""

    def __init__(self, app: App | None) -> None:
        self.app = app
        self.namespaces: set[str] = set()
        self.types: set[type] = set()

    def item(
        self, position: int, item: Job | JobSpec, options: InsertOptions
    ) -> tuple[str, InsertOptions]:
        """The item's kind and options: `options` itself for a plain Job, else the spec's."""
        spec = item if isinstance(item, JobSpec) else None
        job = spec.job if spec else item
        if not isinstance(job, Job):
            raise ConfigError(
                f"item {position} is {type(job).__name__}, not a delta.Job (or delta.JobSpec)"
            )
        job_type = type(job)
        kind = kind_of(job_type)
        if job_type not in self.types:
            if self.app is not None:
                self.app.job(kind)
            self.types.add(job_type)
        declared = job_type.default_namespace
        if spec is not None or (options.namespace is None and declared is not None):
            options = InsertOptions(
                namespace=_first(spec.namespace if spec else None, options.namespace, declared),
                priority=_pick(spec.priority if spec else None, options.priority),
                scheduled_at=(spec.scheduled_at if spec else None) or options.scheduled_at,
                unique_key=(spec.unique_key if spec else None) or options.unique_key,
                max_attempts=_pick(spec.max_attempts if spec else None, options.max_attempts),
            )
        if self.app is not None and declared is not None and options.namespace != declared:
            raise ConfigError(
                f"job kind {kind!r} runs in namespace {declared!r} ({job_type.__qualname__} "
                f"declares it), not {options.namespace!r}: leave namespace= out, or enqueue "
                "it where it runs"
            )
        self._options(options)
        return kind, options

    def _options(self, options: InsertOptions) -> None:
        namespace = _namespace(options)
        if namespace not in self.namespaces:
            validate_name(namespace, "namespace")
            if self.app is not None:
                self.app.namespace(namespace)
            self.namespaces.add(namespace)
        priority, max_attempts = options.priority, options.max_attempts
        if not (isinstance(priority, int) and 1 <= priority <= 4):
            raise ConfigError(f"priority must be 1 (first) to 4 (last), got {priority!r}")
        if not (isinstance(max_attempts, int) and 1 <= max_attempts <= _MAX_ATTEMPTS_LIMIT):
            raise ConfigError(
                f"max_attempts must be 1..{_MAX_ATTEMPTS_LIMIT}, got {max_attempts!r}"
            )
        scheduled_at = options.scheduled_at
        if scheduled_at is not None and scheduled_at.tzinfo is None:
            raise ConfigError(
                f"scheduled_at {scheduled_at.isoformat()} has no time zone: pass an aware "
                "datetime, e.g. datetime.now(timezone.utc) + timedelta(minutes=5)"
            )


def _namespace(options: InsertOptions) -> str:
    return DEFAULT_NAMESPACE if options.namespace is None else options.namespace


def _first(*values: str | None) -> str | None:
    """The first value given (not None); an empty string counts, to be refused later."""
    return next((value for value in values if value is not None), None)


def _pick(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def _match(
    batch: InsertBatch, start: int, stop: int, inserted: Sequence[tuple[Any, ...]]
) -> tuple[list[EnqueuedJob | None], list[int]]:
    """Pair inserted rows with inputs; return results (None for duplicates) and their indexes.

    Rows come back ordered by id, which follows input order; an input with a unique key
    that no returned row carries lost to a live job.
    """
    rows = [InsertedJob(*values) for values in inserted]
    inserted_keys = {(row.kind, row.unique_key) for row in rows if row.unique_key is not None}
    results: list[EnqueuedJob | None] = []
    duplicates: list[int] = []
    next_row = iter(rows)
    for index in range(start, stop):
        key = batch.unique_keys[index]
        if key is not None:
            pair = (batch.kinds[index], key)
            if pair not in inserted_keys:
                results.append(None)
                duplicates.append(index)
                continue
            inserted_keys.discard(pair)  # a repeat within the batch is a duplicate of this one
        results.append(_enqueued(next(next_row), duplicate=False))
    return results, duplicates


def _enqueued(row: InsertedJob, *, duplicate: bool) -> EnqueuedJob:
    return EnqueuedJob(
        id=row.id, kind=row.kind, namespace=row.namespace, state=JobState(row.state),
        duplicate=duplicate,
    )  # fmt: skip


def _inserted(values: tuple[Any, ...]) -> InsertedJob:
    return InsertedJob(*values)


def _duplicate_params(batch: InsertBatch, indexes: list[int]) -> tuple[list[str], list[str]]:
    return [batch.kinds[i] for i in indexes], [batch.unique_keys[i] or "" for i in indexes]


def _resolve_duplicates(
    batch: InsertBatch,
    results: list[EnqueuedJob | None],
    indexes: list[int],
    offset: int,
    live: Sequence[tuple[Any, ...]],
) -> list[int]:
    """Fill in duplicates from live rows; return the indexes whose live job has finished."""
    by_key = {(row.kind, row.unique_key): row for row in map(_inserted, live)}
    missing = []
    for index in indexes:
        row = by_key.get((batch.kinds[index], batch.unique_keys[index]))
        if row is None:
            missing.append(index)
        else:
            results[index - offset] = _enqueued(row, duplicate=True)
    return missing


def _needs_transaction(batch: InsertBatch) -> bool:
    # One statement is atomic by itself; chunks and duplicate look-ups are several.
    return len(batch) > INSERT_CHUNK or any(key is not None for key in batch.unique_keys)


# On a connection that is not in autocommit our statements join the caller's transaction,
# begun already or begun implicitly by our first statement: `conn.transaction()` there
# would commit at its exit when no transaction was open yet, committing for the caller.
def _atomic(conn: psycopg.Connection, batch: InsertBatch) -> AbstractContextManager[Any]:
    own = conn.autocommit and _needs_transaction(batch)
    return conn.transaction() if own else nullcontext()


def _atomic_async(
    conn: psycopg.AsyncConnection, batch: InsertBatch
) -> AbstractAsyncContextManager[Any]:
    own = conn.autocommit and _needs_transaction(batch)
    return conn.transaction() if own else nullcontext()


def _use_copy(batch: InsertBatch) -> bool:
    return len(batch) >= COPY_THRESHOLD and all(key is None for key in batch.unique_keys)


# Binary COPY types of COPY_JOBS' columns; a label is sent as text, which is also the
# binary form an enum receives.
_COPY_TYPES = ["int8", "text", "text", "bytea", "int2", "int2", "text", "timestamptz"]
_COPY_DUE_TYPES = _COPY_TYPES[:6]
_COPY_TRACED_TYPES = [*_COPY_TYPES, "jsonb"]


def _copy_plan(
    batch: InsertBatch, now: datetime, ids: list[int]
) -> tuple[LiteralString, list[str], Iterable[tuple[Any, ...]]]:
    """COPY_JOBS' statement, column types and rows, with ids reserved and states decided.

    A batch with no scheduled job leaves state and scheduled_at to their defaults:
    'available' and the clock of the transaction that reserved the ids.
    """
    columns = (ids, batch.kinds, batch.namespaces, batch.args, batch.priorities, batch.max_attempts)
    if batch.metadata is None and all(at is None for at in batch.scheduled_at):
        return job_sql.COPY_DUE_JOBS, _COPY_DUE_TYPES, zip(*columns, strict=True)
    states = [_state(at, now).value for at in batch.scheduled_at]
    times = [at or now for at in batch.scheduled_at]
    if batch.metadata is not None:
        metadata = [Jsonb(json.loads(batch.metadata))] * len(batch)
        rows = zip(*columns, states, times, metadata, strict=True)
        return job_sql.COPY_TRACED_JOBS, _COPY_TRACED_TYPES, rows
    return job_sql.COPY_JOBS, _COPY_TYPES, zip(*columns, states, times, strict=True)


def _copy_results(
    batch: InsertBatch, now: datetime, ids: list[int]
) -> tuple[list[EnqueuedJob], list[str]]:
    """What a COPY inserted, in input order, and the queues it made work available in."""
    results = [
        EnqueuedJob(id=job_id, kind=kind, namespace=namespace, state=_state(at, now))
        for job_id, kind, namespace, at in zip(
            ids, batch.kinds, batch.namespaces, batch.scheduled_at, strict=True
        )
    ]
    woken = {job.namespace for job in results if job.state is JobState.AVAILABLE}
    return results, sorted(woken)


def _state(at: datetime | None, now: datetime) -> JobState:
    return JobState.AVAILABLE if at is None or at <= now else JobState.SCHEDULED


# The results are made while the server still works through the rows sent.
def _copy_jobs(conn: psycopg.Connection, batch: InsertBatch) -> list[EnqueuedJob]:
    with conn.transaction() if conn.autocommit else nullcontext():
        reserved = conn.execute(job_sql.RESERVE_JOB_IDS, (len(batch),)).fetchone()
        assert reserved is not None
        statement, types, rows = _copy_plan(batch, *reserved)
        with conn.cursor().copy(statement) as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)
            results, woken = _copy_results(batch, *reserved)
        if woken:
            conn.execute(job_sql.NOTIFY_QUEUES, (woken,))
    return results


async def _copy_jobs_async(conn: psycopg.AsyncConnection, batch: InsertBatch) -> list[EnqueuedJob]:
    async with conn.transaction() if conn.autocommit else nullcontext():
        reserved = await (await conn.execute(job_sql.RESERVE_JOB_IDS, (len(batch),))).fetchone()
        assert reserved is not None
        statement, types, rows = _copy_plan(batch, *reserved)
        async with conn.cursor().copy(statement) as copy:
            copy.set_types(types)
            for row in rows:
                await copy.write_row(row)
            results, woken = _copy_results(batch, *reserved)
        if woken:
            await conn.execute(job_sql.NOTIFY_QUEUES, (woken,))
    return results


def _one_job(batch: InsertBatch) -> dict[str, Any] | None:
    """INSERT_ONE_JOB's parameters when `batch` is one job without a unique key, else None."""
    if len(batch) != 1 or batch.unique_keys[0] is not None:
        return None
    return {
        "kind": batch.kinds[0],
        "namespace": batch.namespaces[0],
        "args": batch.args[0],
        "priority": batch.priorities[0],
        "max_attempts": batch.max_attempts[0],
        "scheduled_at": batch.scheduled_at[0],
        "metadata": batch.metadata,
    }


def _insert_chunks(batch: InsertBatch) -> Generator[Statement, Rows, list[EnqueuedJob]]:
    """INSERT_JOBS a chunk at a time, resolving unique keys; a generator of statements."""
    out: list[EnqueuedJob] = []
    for start in range(0, len(batch), INSERT_CHUNK):
        stop = min(start + INSERT_CHUNK, len(batch))
        inserted = yield job_sql.INSERT_JOBS, batch.params(start, stop)
        results, duplicates = _match(batch, start, stop, inserted)
        # A live duplicate may finish between the insert and the lookup: insert again.
        while duplicates:
            live = yield job_sql.SELECT_LIVE_UNIQUE_JOBS, _duplicate_params(batch, duplicates)
            missing = _resolve_duplicates(batch, results, duplicates, start, live)
            duplicates = []
            for index in missing:
                row = yield job_sql.INSERT_JOBS, batch.params(index, index + 1)
                retried, again = _match(batch, index, index + 1, row)
                results[index - start] = retried[0]
                duplicates.extend(again)
        out.extend(r for r in results if r is not None)
    return out


# Both twins: one job is one plain statement, a large batch a COPY (their protocols
# differ between sync and async psycopg), anything else the chunks above. Repeated
# statements may be prepared here, as psycopg does by default.


def insert_jobs(conn: psycopg.Connection, batch: InsertBatch) -> list[EnqueuedJob]:
    """Insert `batch` in the connection's current transaction (or its own, in autocommit)."""
    one = _one_job(batch)
    if one is not None:
        inserted_one = conn.execute(job_sql.INSERT_ONE_JOB, one).fetchone()
        assert inserted_one is not None
        return [_enqueued(InsertedJob(*inserted_one), duplicate=False)]
    if _use_copy(batch):
        return _copy_jobs(conn, batch)
    with _atomic(conn, batch):
        return drive(conn, _insert_chunks(batch), prepare=None)


async def insert_jobs_async(conn: psycopg.AsyncConnection, batch: InsertBatch) -> list[EnqueuedJob]:
    """Async twin of insert_jobs."""
    one = _one_job(batch)
    if one is not None:
        inserted_one = await (await conn.execute(job_sql.INSERT_ONE_JOB, one)).fetchone()
        assert inserted_one is not None
        return [_enqueued(InsertedJob(*inserted_one), duplicate=False)]
    if _use_copy(batch):
        return await _copy_jobs_async(conn, batch)
    async with _atomic_async(conn, batch):
        return await drive_async(conn, _insert_chunks(batch), prepare=None)
