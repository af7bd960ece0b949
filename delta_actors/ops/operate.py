"""`delta-actors resources|jobs|pause|resume`: the bulk operations of delta_actors.bulk on
kinds named on the command line (no app, so objects stay JSON), with a dry run that
counts and names the first matches, and progress on a terminal."""

from __future__ import annotations

from collections.abc import Callable, Generator
from datetime import datetime
from typing import Any

import msgspec
import psycopg

from delta_actors import bulk
from delta_actors.db.connection import Rows, Statement, drive, translate_errors
from delta_actors.db.migrations import check_schema
from delta_actors.db.resource_sql import StoredRow
from delta_actors.model.job_row import JobRow
from delta_actors.ops.progress import Progress

FIRST = 10  # matches a dry run names


class ResourceLine(msgspec.Struct, frozen=True):
    """One resource of a listing, its newest error's message only (`inspect` has all)."""

    kind: str
    id: str
    namespace: str
    state: str
    generation: int
    attempt: int
    max_attempts: int
    tags: list[str]
    updated_at: datetime
    deletion_requested_at: datetime | None
    error: str | None


class JobLine(msgspec.Struct, frozen=True):
    """One plain job of a listing: its args as JSON, its newest error's message only."""

    id: int
    kind: str
    namespace: str
    state: str
    attempt: int
    max_attempts: int
    args: msgspec.Raw
    scheduled_at: datetime
    finalized_at: datetime | None
    error: str | None


class Listing(msgspec.Struct, frozen=True):
    """A page: `next` is the `--after` of the next one."""

    items: list[ResourceLine] | list[JobLine]
    next: str | None


class Done(msgspec.Struct, frozen=True):
    """What an operation did (or, with `dry_run`, would do): how many rows, the first ids."""

    action: str
    count: int
    dry_run: bool
    first: list[str]


def list_resources(
    conn: psycopg.Connection, where: bulk.ResourceFilter, after: str | None, limit: int
) -> Listing:
    with translate_errors("list resources"):
        check_schema(conn)
        rows, cursor = drive(conn, bulk.list_resources(where, after, limit))
    return Listing([_resource_line(StoredRow(*row)) for row in rows], cursor)


def list_jobs(
    conn: psycopg.Connection, where: bulk.JobFilter, after: str | None, limit: int
) -> Listing:
    with translate_errors("list jobs"):
        check_schema(conn)
        page = drive(conn, bulk.list_jobs(where, after, limit))
    return Listing([_job_line(job) for job in page.items], page.next)


def on_resources(
    conn: psycopg.Connection, action: str, where: bulk.ResourceFilter, *, dry_run: bool
) -> Done:
    """`retry`, `invalidate` (the same: work them again) or `delete` the matches."""
    run: Callable[[bulk.Progress], Generator[Statement, Rows, int]]
    if action == "delete":
        # No app here: a finalize may exist, so deleting; a worker without one deletes.
        def run(progress: bulk.Progress) -> Generator[Statement, Rows, int]:
            return bulk.delete_resources(where, True, progress)
    else:

        def run(progress: bulk.Progress) -> Generator[Statement, Rows, int]:
            return bulk.retry_resources(where, progress)

    def first() -> list[str]:
        rows, _ = drive(conn, bulk.list_resources(where, None, FIRST))
        return [f"{row[1]}/{row[2]}" for row in rows]

    return _operate(
        conn, action, dry_run=dry_run, count=lambda: drive(conn, bulk.count_resources(where)),
        first=first, run=run,
    )  # fmt: skip


def on_jobs(conn: psycopg.Connection, action: str, where: bulk.JobFilter, *, dry_run: bool) -> Done:
    """`retry` or `cancel` the matching plain jobs."""
    operation = bulk.retry_jobs if action == "retry" else bulk.cancel_jobs

    def first() -> list[str]:
        return [str(job.id) for job in drive(conn, bulk.list_jobs(where, None, FIRST)).items]

    return _operate(
        conn, action, dry_run=dry_run, count=lambda: drive(conn, bulk.count_jobs(where)),
        first=first, run=lambda progress: operation(where, progress),
    )  # fmt: skip


def pause(conn: psycopg.Connection, namespace: str, *, resume: bool) -> None:
    with translate_errors("resume" if resume else "pause"):
        check_schema(conn)
        drive(conn, bulk.resume(namespace) if resume else bulk.pause(namespace))


def _operate(
    conn: psycopg.Connection,
    action: str,
    *,
    dry_run: bool,
    count: Callable[[], int],
    first: Callable[[], list[str]],
    run: Callable[[bulk.Progress], Generator[Statement, Rows, int]],
) -> Done:
    with translate_errors(action):
        check_schema(conn)
        total = count()
        if dry_run:
            return Done(action, total, True, first())
        with Progress() as progress:
            done = drive(conn, run(lambda n: progress.step(n, total, f"{action}...")))
    return Done(action, done, False, [])


def _newest_error(errors: list[Any]) -> str | None:
    return errors[-1].error if errors else None


def _resource_line(row: StoredRow) -> ResourceLine:
    stored = row.resource(None)
    return ResourceLine(
        stored.kind, stored.object_id, stored.namespace, stored.state.value, stored.generation,
        stored.attempt, stored.max_attempts, stored.tags, stored.updated_at,
        stored.deletion_requested_at, _newest_error(stored.errors),
    )  # fmt: skip


def _job_line(job: JobRow) -> JobLine:
    return JobLine(
        job.id, job.kind, job.namespace, job.state.value, job.attempt, job.max_attempts,
        msgspec.Raw(bytes(job.args)) if job.args else msgspec.Raw(b"null"), job.scheduled_at,
        job.finalized_at, _newest_error(job.errors),
    )  # fmt: skip
