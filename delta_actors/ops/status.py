"""What `delta-actors status` and `inspect` read: the cluster's state, one resource's story.

Everything here is read-only, runs on a caller's connection, and returns msgspec Structs
that the CLI renders as a table or encodes as JSON. Times come from the database's clock
(ages are computed in SQL), so a client with a skewed clock still reports true ages.
Each statement is bounded: counts use the partial indexes of the queue's states, lists
have a LIMIT. Counting resources by kind and state would read the whole resource table
(about a second per million rows): below `EXACT_RESOURCES_BELOW` rows it does, past it
the counts are estimates (`ResourceCount.estimated`) from the planner's statistics
(`_count_resources`), except the failed, degraded and running ones, which stay exact.
A namespace's available jobs, and those due later, are counted up to `QUEUE_COUNT_CAP`
and estimated past it (`QueueStatus.available_estimated`, `waiting_estimated`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
import psycopg

from delta_actors.db import job_sql, leader_sql, migration_sql, resource_sql, status_sql
from delta_actors.db.connection import translate_errors
from delta_actors.db.migrations import check_schema
from delta_actors.db.resource_sql import StoredRow
from delta_actors.health import ComponentHealth
from delta_actors.model.job_row import JobError
from delta_actors.model.names import validate_name

RECENT_FAILURES = 10
# Rows of delta_resource (as the planner reckons) from which status estimates its counts.
EXACT_RESOURCES_BELOW = 100_000
# States whose counts an estimate would blur, counted exactly (a partial index, the slots).
_EXACT_STATES = ("failed", "degraded", "running")
RATE_WINDOW = status_sql.RATE_WINDOW  # seconds over which `finished_per_second` is averaged
QUEUE_PARAMS = status_sql.QUEUE_PARAMS


class LeaderStatus(msgspec.Struct, frozen=True):
    """The lease row: who leads, since when, and whether the lease is still valid."""

    host: str
    pid: int
    actor_id: int
    term: int
    since: datetime
    expires_in: float  # seconds; negative once the lease has expired


class ActorStatus(msgspec.Struct, frozen=True):
    """One registered actor process."""

    id: int
    host: str
    pid: int
    namespace: str
    role: str
    started_at: datetime
    heartbeat_age: float  # seconds since its last heartbeat
    # What each component last got done, as of that heartbeat (health.py); a leader
    # candidate reports its duties only while it leads.
    health: list[ComponentHealth] = []

    @property
    def stalled(self) -> list[ComponentHealth]:
        """Its components that made no progress for longer than they may, as of now."""
        return [h for h in self.health if h.since_progress + self.heartbeat_age > h.stall_after]


class ResourceCount(msgspec.Struct, frozen=True):
    """How many resources of one kind are in one state (`estimated`: from statistics)."""

    kind: str
    state: str
    count: int
    # From the planner's statistics (row count times the pair's share of ANALYZE's
    # sample): a large table, whose exact count would read every row.
    estimated: bool = False


class QueueStatus(msgspec.Struct, frozen=True):
    """One namespace's queue: waiting, running, due later, and the pace of finishing."""

    namespace: str
    available: int
    running: int
    waiting: int  # scheduled or retryable: due later
    lag: float  # seconds the oldest available work has been due; 0 when none is
    finished_per_second: float  # works and jobs finished over the last RATE_WINDOW
    paused_at: datetime | None = None  # paused (`delta-actors pause`) since then
    # `available` is the planner's estimate: the count stopped at QUEUE_COUNT_CAP.
    available_estimated: bool = False
    waiting_estimated: bool = False  # the same for `waiting`
    # The count of finished ones stopped at FINISHED_COUNT_CAP: the pace is a lower bound.
    finished_capped: bool = False


class Failure(msgspec.Struct, frozen=True):
    """A resource that failed or degraded, or a job that failed, with its last error."""

    what: str  # "resource" or "job"
    kind: str
    id: str  # the object id of a resource, the job id of a job
    namespace: str
    state: str
    attempt: int
    at: datetime
    error: str


class InformerStatus(msgspec.Struct, frozen=True):
    """One kind's informer: its last run, last success and last error, cursor, next run."""

    kind: str
    last_run_at: datetime | None  # when the last run started
    last_success_at: datetime | None
    last_error_at: datetime | None
    last_error: str  # the last failed run's error (`Type: message`); "" after a success
    cursor: datetime | None
    next_in: float  # seconds until the next run is due; negative: overdue
    requested: bool  # a run was asked for (run_informer) and has not started yet
    runs: int  # runs that succeeded
    failures: int  # runs that failed


class PeriodicStatus(msgspec.Struct, frozen=True):
    """One stored periodic job: its schedule, last and next run, and the last job's id."""

    name: str
    kind: str
    namespace: str
    schedule: str
    last_run_at: datetime | None  # when the last run enqueued was due
    next_run_at: datetime
    runs: int
    last_job_id: int | None


class Status(msgspec.Struct, frozen=True):
    """Everything `delta-actors status` shows."""

    schema_version: int
    leader: LeaderStatus | None
    actors: list[ActorStatus]
    resources: list[ResourceCount]
    queues: list[QueueStatus]
    failures: list[Failure]
    informers: list[InformerStatus] = []
    periodic: list[PeriodicStatus] = []


class WorkStatus(msgspec.Struct, frozen=True):
    """A queued or running work (job row) of a resource."""

    id: int
    state: str
    attempt: int
    claimed_by: int | None
    created_at: datetime
    scheduled_at: datetime
    attempted_at: datetime | None
    finalized_at: datetime | None


class ResourceDetail(msgspec.Struct, frozen=True):
    """One resource, as `delta-actors inspect` shows it; `object` is its stored JSON.

    `errors` is the bounded history of failed attempts, newest last; `works` the queued
    and running works (finished ones are not indexed by resource, so not listed).
    """

    id: int
    kind: str
    object_id: str
    namespace: str
    state: str
    generation: int
    attempt: int
    max_attempts: int
    object: msgspec.Raw
    errors: list[JobError]
    tags: list[str]
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    attempted_at: datetime | None
    synced_at: datetime | None
    deletion_requested_at: datetime | None
    works: list[WorkStatus]


class NotFoundError(LookupError):
    """Raised by inspect_resource when no resource has the kind and id asked for."""


_error_decoder = msgspec.json.Decoder(JobError)


def read_status(conn: psycopg.Connection, *, exact_below: float = EXACT_RESOURCES_BELOW) -> Status:
    """Read the cluster's state (a few read-only statements, none holding locks).

    Resources are counted exactly while the table holds fewer than `exact_below` rows.
    """
    with translate_errors("read status"):
        check_schema(conn)
        version = conn.execute(migration_sql.SELECT_SCHEMA_VERSION).fetchone()
        leader = conn.execute(status_sql.SELECT_LEADER).fetchone()
        actors = conn.execute(status_sql.SELECT_ACTORS).fetchall()
        resources = count_resources(conn, exact_below)
        queues = read_queues(conn)
        estimates: dict[str, int] = {
            ns: estimate_available(conn, ns) for ns, *_, capped, _, _ in queues if capped
        }
        waiting_estimates: dict[str, int] = {
            ns: estimate_waiting(conn, ns) for ns, *_, capped, _ in queues if capped
        }
        paused: dict[str, datetime] = dict(
            conn.execute(job_sql.SELECT_PAUSED_NAMESPACES).fetchall()
        )
        failures = conn.execute(
            status_sql.SELECT_RECENT_FAILURES, {"limit": RECENT_FAILURES}
        ).fetchall()
        informers = conn.execute(status_sql.SELECT_INFORMERS_STATUS).fetchall()
        periodic = conn.execute(leader_sql.SELECT_PERIODICS).fetchall()
    return Status(
        schema_version=int(version[0]) if version else 0,
        leader=LeaderStatus(*leader) if leader else None,
        actors=[
            ActorStatus(
                id_,
                host,
                pid,
                ns,
                role,
                started,
                age,
                msgspec.convert(health, list[ComponentHealth]),
            )
            for id_, host, pid, ns, role, started, age, health in actors
        ],
        resources=resources,
        queues=[
            QueueStatus(
                ns,
                estimates.get(ns, int(available)),
                running,
                waiting_estimates.get(ns, int(waiting)),
                lag or 0.0,
                finished / RATE_WINDOW,
                paused.pop(ns, None),
                available_estimated=capped,
                waiting_estimated=waiting_capped,
                finished_capped=finished_capped,
            )
            for (
                ns,
                available,
                running,
                waiting,
                lag,
                finished,
                capped,
                waiting_capped,
                finished_capped,
            ) in queues
        ]
        + [QueueStatus(ns, 0, 0, 0, 0.0, 0.0, at) for ns, at in sorted(paused.items())],
        failures=[
            Failure(what, kind, str(id_), ns, state, attempt, at, _last_error(error))
            for what, kind, id_, ns, state, attempt, at, error in failures
        ],
        informers=[
            InformerStatus(kind, run, ok, err_at, _last_line(err or ""), cur, next_in, req, n, f)
            for kind, run, ok, err_at, err, cur, next_in, req, n, f in informers
        ],
        periodic=[PeriodicStatus(*row) for row in periodic],
    )


def read_queues(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    """SELECT_QUEUES's rows, read without JIT (see there)."""
    with conn.transaction():
        conn.execute(status_sql.WITHOUT_JIT)
        return conn.execute(status_sql.SELECT_QUEUES, QUEUE_PARAMS).fetchall()


def estimate_available(conn: psycopg.Connection, namespace: str) -> int:
    """A namespace's available jobs as the planner reckons, past the counted cap."""
    row = conn.execute(status_sql.ESTIMATE_AVAILABLE, (namespace,)).fetchone()
    return status_sql.planned_rows(row[0] if row else None)


def estimate_waiting(conn: psycopg.Connection, namespace: str) -> int:
    """A namespace's jobs due later as the planner reckons, past the counted cap."""
    row = conn.execute(status_sql.ESTIMATE_WAITING, (namespace,)).fetchone()
    return status_sql.planned_rows(row[0] if row else None)


def count_resources(
    conn: psycopg.Connection, exact_below: float = EXACT_RESOURCES_BELOW
) -> list[ResourceCount]:
    """Resources by kind and state: exact on a small table, else estimated (see above)."""
    row = conn.execute(status_sql.ESTIMATE_RESOURCE_ROWS).fetchone()
    rows = float(row[0]) if row and row[0] is not None else -1.0
    if rows < 0 or rows < exact_below:  # never analyzed, or small: count them
        exact = conn.execute(status_sql.COUNT_RESOURCES_BY_STATE).fetchall()
        return [ResourceCount(kind, state, int(n)) for kind, state, n in exact]
    shares = conn.execute(status_sql.SELECT_RESOURCE_SHARES).fetchall()
    if not shares:
        shares = conn.execute(status_sql.SELECT_RESOURCE_SHARES_BY_COLUMN).fetchall()
    if not shares:  # statistics not gathered yet
        exact = conn.execute(status_sql.COUNT_RESOURCES_BY_STATE).fetchall()
        return [ResourceCount(kind, state, int(n)) for kind, state, n in exact]
    counts: dict[tuple[str, str], float] = {}
    for kind, state, share in shares:
        if state not in _EXACT_STATES:
            counts[(kind, state)] = counts.get((kind, state), 0.0) + float(share) * rows
    exact_counts: dict[tuple[str, str], int] = {}
    troubled = conn.execute(status_sql.COUNT_TROUBLED_AND_RUNNING).fetchall()
    # Stored states first, so that a running one's stored count exists to subtract from.
    for kind, state, n in sorted(troubled, key=lambda r: str(r[1]).startswith("running:")):
        stored, _, running_from = str(state).partition("running:")
        if running_from:  # counted as running, not as its stored state
            exact_counts[(kind, "running")] = exact_counts.get((kind, "running"), 0) + int(n)
            key = (kind, running_from)
            if key in exact_counts:
                exact_counts[key] -= int(n)
            elif key in counts:
                counts[key] -= int(n)
        else:
            exact_counts[(kind, stored)] = exact_counts.get((kind, stored), 0) + int(n)
    found = [
        ResourceCount(kind, state, round(n), estimated=True)
        for (kind, state), n in counts.items()
        if round(n) > 0
    ] + [ResourceCount(kind, state, n) for (kind, state), n in exact_counts.items() if n > 0]
    return sorted(found, key=lambda c: (c.kind, c.state))


def inspect_resource(conn: psycopg.Connection, kind: str, object_id: str) -> ResourceDetail:
    """Read one resource and its latest works; raise NotFoundError naming what exists."""
    validate_name(kind, "kind")
    with translate_errors(f"inspect {kind} {object_id!r}"):
        check_schema(conn)
        row = conn.execute(resource_sql.GET_RESOURCE, (kind, object_id)).fetchone()
        if row is None:
            raise NotFoundError(_not_found(conn, kind, object_id))
        found = StoredRow(*row)
        works = conn.execute(status_sql.SELECT_LIVE_WORKS_OF_RESOURCE, {"id": found.id}).fetchall()
    stored = found.resource(msgspec.Raw(bytes(found.object)))
    return ResourceDetail(
        stored.id, stored.kind, stored.object_id, stored.namespace, stored.state.value,
        stored.generation, stored.attempt, stored.max_attempts, stored.object, stored.errors,
        stored.tags, stored.metadata, stored.created_at, stored.updated_at,
        stored.attempted_at, stored.synced_at, stored.deletion_requested_at,
        [WorkStatus(*work) for work in works],
    )  # fmt: skip


def _not_found(conn: psycopg.Connection, kind: str, object_id: str) -> str:
    if conn.execute(status_sql.SELECT_KIND_EXISTS, (kind,)).fetchone() == (True,):
        return f"no {kind} resource with id {object_id!r}"
    kinds = [row[0] for row in conn.execute(status_sql.SELECT_RESOURCE_KINDS)]
    stored = ", ".join(kinds) if kinds else "none"
    return f"no resources of kind {kind!r} (kinds stored: {stored})"


def _last_line(text: str) -> str:
    """The last line of a traceback: `Type: message`."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _last_error(entry: str | None) -> str:
    if not entry:
        return ""
    try:
        return _error_decoder.decode(entry).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return entry
