"""The operator's hands: resources and jobs by filter (list, count, retry, delete, cancel),
and pausing a namespace. The clients and the `delta-actors resources|jobs|pause|resume`
commands drive these.

Set-based and batched: a listing is one page per statement, keyset-paged in a stable
order ((kind, object id) for resources, id for jobs), so a page never skips or repeats a
row that stays. An operation on a filter runs in batches of `BATCH` rows, each its own
short transaction (in an autocommit connection), locking at most a batch of rows, so a
retry of a million resources neither times out nor holds informs up for long; between
batches, the caller hears how far it got. A batch that fails leaves the earlier ones done
(each is whole): running the operation again takes up the rest.

Every statement is a generator of statements, as in client.py, for `drive` (sync) or
`drive_async` to run.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any, LiteralString

from delta_actors.db import job_sql, resource_sql, status_sql
from delta_actors.db.connection import Rows, Statement
from delta_actors.errors import ConfigError
from delta_actors.model.job_row import JobRow, JobState, job_row
from delta_actors.model.names import validate_name
from delta_actors.model.page import Page
from delta_actors.model.resource import State

BATCH = 5000  # rows per statement of an operation on a filter
MAX_LIMIT = 10_000  # rows per page
Progress = Callable[[int], None]  # called with the rows done so far, after each batch


@dataclass(frozen=True, slots=True)
class ResourceFilter:
    """Which resources: every field None (or empty) matches everything."""

    kind: str | None = None
    state: State | None = None
    tags: tuple[str, ...] = ()
    error: str | None = None
    namespace: str | None = None
    ids: tuple[str, ...] | None = None

    @property
    def is_whole_kind(self) -> bool:
        """Whether it names at most a kind: acting on it takes every resource (of the kind)."""
        return self == ResourceFilter(kind=self.kind)

    def params(self, after: str | None = None) -> dict[str, Any]:
        after_kind, after_id = _resource_cursor(after)
        running = self.state is State.RUNNING
        return {
            "kind": self.kind, "state": None if running or not self.state else self.state.value,
            "running": running, "tags": list(self.tags) or None, "error": self.error or None,
            "namespace": self.namespace, "ids": list(self.ids) if self.ids is not None else None,
            "after_kind": after_kind, "after_id": after_id,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Count:
    """How many rows a filter matches, counted up to `cap` and estimated past it.

    An exact count reads every match (0.3 s for a million synced resources); past `cap`
    rows the count stops and `value` is the planner's estimate from the statistics of the
    last ANALYZE (`is_estimate`), never below `cap` + 1.
    """

    value: int
    cap: int
    is_estimate: bool = False


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which plain jobs: every field None matches everything."""

    kind: str | None = None
    state: JobState | None = None
    error: str | None = None
    namespace: str | None = None
    ids: tuple[int, ...] | None = None

    def params(self, after: str | None = None) -> dict[str, Any]:
        return {
            "kind": self.kind, "state": self.state.value if self.state else None,
            "error": self.error or None, "namespace": self.namespace,
            "ids": list(self.ids) if self.ids is not None else None,
            "after": _job_cursor(after),
        }  # fmt: skip


def resource_filter(
    kind: str | None,
    *,
    state: State | str | None = None,
    tags: Iterable[str] | None = None,
    error: str | None = None,
    namespace: str | None = None,
    ids: Iterable[str] | None = None,
) -> ResourceFilter:
    """Check the filter's values, naming the fix for a bad one."""
    if kind is not None:
        validate_name(kind, "kind")
    if namespace is not None:
        validate_name(namespace, "namespace")
    return ResourceFilter(
        kind, _enum(State, state, "state"), _strings(tags, "tags"), _text(error),
        namespace, _strings(ids, "ids") if ids is not None else None,
    )  # fmt: skip


def job_filter(
    kind: str | None,
    *,
    state: JobState | str | None = None,
    error: str | None = None,
    namespace: str | None = None,
    ids: Iterable[int] | None = None,
) -> JobFilter:
    """Check the filter's values, naming the fix for a bad one."""
    if kind is not None:
        validate_name(kind, "kind")
    if namespace is not None:
        validate_name(namespace, "namespace")
    checked_ids = None
    if ids is not None:
        checked_ids = tuple(ids)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in checked_ids):
            raise ConfigError(f"job ids are integers, got {list(checked_ids)[:5]!r}")
    return JobFilter(kind, _enum(JobState, state, "state"), _text(error), namespace, checked_ids)


def list_resources(
    where: ResourceFilter, after: str | None, limit: int
) -> Generator[Statement, Rows, tuple[Rows, str | None]]:
    """One page of stored rows (resource_columns and the object), and the next cursor."""
    rows = yield resource_sql.LIST_RESOURCES, {**where.params(after), "limit": _limit(limit)}
    if len(rows) < limit:
        return rows, None
    last = rows[-1]
    return rows, f"{last[1]}/{last[2]}"  # kind, object_id: a kind has no '/'


def list_jobs(
    where: JobFilter, after: str | None, limit: int
) -> Generator[Statement, Rows, Page[JobRow]]:
    """One page of plain jobs, and the next cursor."""
    rows = yield job_sql.LIST_JOBS, {**where.params(after), "limit": _limit(limit)}
    items = [job_row(row) for row in rows]
    return Page(items, str(items[-1].id) if len(items) == limit else None)


def count_resources(where: ResourceFilter) -> Generator[Statement, Rows, int]:
    rows = yield resource_sql.COUNT_RESOURCES, where.params()
    return int(rows[0][0])


def count_jobs(where: JobFilter) -> Generator[Statement, Rows, int]:
    rows = yield job_sql.COUNT_JOBS, where.params()
    return int(rows[0][0])


def count_resources_up_to(where: ResourceFilter, cap: int) -> Generator[Statement, Rows, Count]:
    """The matches of `where`: exact up to `cap`, past it the planner's estimate."""
    return (yield from _count_up_to(
        resource_sql.COUNT_RESOURCES_UP_TO, resource_sql.ESTIMATE_MATCHING_RESOURCES,
        where.params(), cap,
    ))  # fmt: skip


def count_jobs_up_to(where: JobFilter, cap: int) -> Generator[Statement, Rows, Count]:
    """The plain jobs matching `where`: exact up to `cap`, past it the planner's estimate."""
    return (yield from _count_up_to(
        job_sql.COUNT_JOBS_UP_TO, job_sql.ESTIMATE_MATCHING_JOBS, where.params(), cap
    ))  # fmt: skip


def _count_up_to(
    count: LiteralString, estimate: LiteralString, params: dict[str, Any], cap: int
) -> Generator[Statement, Rows, Count]:
    rows = yield count, {**params, "cap": cap}
    if int(rows[0][0]) <= cap:
        return Count(int(rows[0][0]), cap)
    plan = yield estimate, params
    return Count(status_sql.planned_rows(plan[0][0] if plan else None, cap), cap, True)


def retry_resources(
    where: ResourceFilter, progress: Progress | None = None
) -> Generator[Statement, Rows, int]:
    """Work the matching resources again (attempts reset, errors kept); return how many."""
    return (yield from _cursor_batches(resource_sql.RETRY_RESOURCES, where, progress, _key))


def retry_jobs(
    where: JobFilter, progress: Progress | None = None
) -> Generator[Statement, Rows, int]:
    """Put matching jobs that neither run nor wait back to available; return how many."""
    return (yield from _cursor_batches(job_sql.RETRY_JOBS, where, progress, _job_key))


def cancel_jobs(
    where: JobFilter, progress: Progress | None = None
) -> Generator[Statement, Rows, int]:
    """Cancel the matching jobs that still wait; return how many."""
    return (yield from _cursor_batches(job_sql.CANCEL_JOBS, where, progress, _job_key))


def delete_resources(
    where: ResourceFilter, finalize: bool, progress: Progress | None = None
) -> Generator[Statement, Rows, int]:
    """Delete the matching resources through the one way out; return how many started.

    Marked rows stop matching, so each batch takes the next ones until none is left.
    """
    done = 0
    while True:
        rows = yield resource_sql.DELETE_MATCHING_RESOURCES, {
            **where.params(), "limit": BATCH, "finalize": finalize, "reason": None,
        }  # fmt: skip
        done += len(rows)
        if progress is not None:
            progress(done)
        if len(rows) < BATCH:
            return done


def pause(namespace: str) -> Generator[Statement, Rows, None]:
    """Pause `namespace` (checked now, before any connection is taken)."""
    return _one(job_sql.PAUSE_NAMESPACE, (validate_name(namespace, "namespace"),))


def resume(namespace: str) -> Generator[Statement, Rows, None]:
    """Resume `namespace` (checked now)."""
    return _one(job_sql.RESUME_NAMESPACE, (validate_name(namespace, "namespace"),))


def _one(statement: LiteralString, params: tuple[Any, ...]) -> Generator[Statement, Rows, None]:
    yield statement, params


def _cursor_batches(
    statement: LiteralString,
    where: ResourceFilter | JobFilter,
    progress: Progress | None,
    key: Callable[[tuple[Any, ...]], str | None],
) -> Generator[Statement, Rows, int]:
    done = 0
    after: str | None = None
    while True:
        rows = yield statement, {**where.params(after), "limit": BATCH}
        changed, matched = int(rows[0][0]), int(rows[0][1])
        done += changed
        if progress is not None:
            progress(done)
        if matched < BATCH:
            return done
        after = key(rows[0])


def _key(row: tuple[Any, ...]) -> str | None:
    return f"{row[2]}/{row[3]}"


def _job_key(row: tuple[Any, ...]) -> str | None:
    return str(row[2])


def _resource_cursor(after: str | None) -> tuple[str | None, str | None]:
    if after is None:
        return None, None
    kind, sep, object_id = after.partition("/") if isinstance(after, str) else ("", "", "")
    if not sep or not kind:
        raise ConfigError(f"after={after!r} is not a cursor of this listing: pass a page's `next`")
    return kind, object_id


def _job_cursor(after: str | None) -> int | None:
    if after is None:
        return None
    if not (isinstance(after, str) and after.isdigit()):
        raise ConfigError(f"after={after!r} is not a cursor of this listing: pass a page's `next`")
    return int(after)


def _limit(limit: int) -> int:
    if not (isinstance(limit, int) and 1 <= limit <= MAX_LIMIT):
        raise ConfigError(f"limit must be 1..{MAX_LIMIT}, got {limit!r}")
    return limit


def _enum(enum_type: Any, value: Any, what: str) -> Any:
    if value is None or isinstance(value, enum_type):
        return value
    try:
        return enum_type(value)
    except ValueError:
        valid = ", ".join(member.value for member in enum_type)
        raise ConfigError(f"unknown {what} {value!r} (valid: {valid})") from None


def _strings(values: Iterable[str] | None, what: str) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        raise ConfigError(f"{what} must be a list of strings, got the string {values!r}")
    checked = tuple(values)
    if not all(isinstance(v, str) for v in checked):
        raise ConfigError(f"{what} must be strings, got {list(checked)[:5]!r}")
    return checked


def _text(value: str | None) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"error must be a string (a part of the newest error), got {value!r}")
    return value or None
