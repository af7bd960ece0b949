"""What the console's pages read: the overview, listings, error groups, one resource.

Every read runs on an autocommit connection of the console's pool and is bounded, so a
page costs about the same with a million resources stored as with a hundred:

- Resources by kind and state are counted exactly while the table is small (below
  EXACT_LIMIT rows by the planner's count); above, failed, degraded and running ones are
  still exact (the troubled index, the running works) and every other cell is the
  planner's estimate, marked `estimated` for the page to label. No request counts the
  whole table.
- Error groups read at most ERROR_SAMPLE troubled rows; a full sample is marked so that
  the page says "at least".
- Works finished per minute: a minute that ended more than SETTLED seconds ago no longer
  changes (its rows are written with that minute's timestamps), so its count is cached
  in the `FinishedChart` and each request counts only the minutes after it. A minute is
  counted up to FINISHED_CAP; past it the page says "at least".
- Queue depths are status's (SELECT_QUEUES): available and due later counted up to
  QUEUE_COUNT_CAP per namespace, the planner's estimate past it, labelled.
- The confirmation of a bulk action counts the matches up to CONFIRM_CAP and, past it,
  shows the planner's estimate, labelled (bulk.Count): an exact count of "every synced
  resource" read a million rows. The action itself still takes every match.
- Listings are the keyset pages of delta_actors.bulk, the operator's functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
import psycopg

from delta_actors import bulk
from delta_actors.db import console_sql, leader_sql, resource_sql, status_sql
from delta_actors.db.connection import drive_async
from delta_actors.db.resource_sql import StoredRow
from delta_actors.health import ComponentHealth
from delta_actors.model.job_row import JobError, JobRow
from delta_actors.model.page import Page
from delta_actors.model.resource import Resource, State

EXACT_LIMIT = 200_000  # rows (planner's count) under which resources are counted exactly
ERROR_SAMPLE = 10_000  # troubled rows read to group errors
# Matches a confirmation counts exactly; past them, the planner's estimate. At a million
# rows each, counting 10,000 took 6-17 ms for a resource state or a kind, 13-40 ms for
# plain jobs, 68 ms for a tag in a namespace (a match in four of the namespace's rows);
# 50,000 took up to 216 ms, and the exact counts 0.25-0.44 s.
CONFIRM_CAP = 10_000
ERROR_GROUPS = 50  # groups shown
KINDS = 100  # kinds shown on the overview
CHART_MINUTES = 60
# Works finished a minute counted on the chart; past them the minute shows "at least".
# The first view counts the hour (60 minutes, at most 120,000 rows), every later one
# its last three minutes.
FINISHED_CAP = 2_000
SETTLED = 120.0  # seconds after its end when a minute's count no longer changes
TROUBLED = (State.FAILED.value, State.DEGRADED.value)
ESTIMATED_STATES = tuple(s.value for s in State if s.value not in (*TROUBLED, "running"))


@dataclass(frozen=True, slots=True)
class Leader:
    host: str
    pid: int
    actor_id: int
    term: int
    since: datetime
    expires_in: float


@dataclass(frozen=True, slots=True)
class Actor:
    id: int
    host: str
    pid: int
    namespace: str
    role: str
    started_at: datetime
    heartbeat_age: float
    stalled: list[str]


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    paused_at: datetime | None
    available: int = 0
    running: int = 0
    waiting: int = 0
    lag: float = 0.0
    finished_per_minute: list[int] = field(default_factory=list)
    available_estimated: bool = False  # counted up to QUEUE_COUNT_CAP, then estimated
    waiting_estimated: bool = False  # the same for `waiting`
    finished_capped: list[bool] = field(default_factory=list)  # minutes counted to the cap


@dataclass(frozen=True, slots=True)
class KindCounts:
    kind: str
    states: dict[str, int]
    estimated: frozenset[str]  # states whose count is an estimate

    @property
    def total(self) -> int:
        return sum(self.states.values())


@dataclass(frozen=True, slots=True)
class Informer:
    kind: str
    last_run_at: datetime | None
    last_success_at: datetime | None
    last_error_at: datetime | None
    last_error: str
    next_in: float
    requested: bool
    runs: int
    failures: int


@dataclass(frozen=True, slots=True)
class Periodic:
    name: str
    kind: str
    namespace: str
    schedule: str
    last_run_at: datetime | None
    next_run_at: datetime
    runs: int
    last_job_id: int | None


@dataclass(frozen=True, slots=True)
class Overview:
    leader: Leader | None
    actors: list[Actor]
    namespaces: list[Namespace]
    kinds: list[KindCounts]
    informers: list[Informer]
    chart_start: float  # epoch seconds of the chart's first minute

    @property
    def estimated(self) -> bool:
        return any(k.estimated for k in self.kinds)

    @property
    def is_chart_capped(self) -> bool:
        return any(any(ns.finished_capped) for ns in self.namespaces)


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    kind: str
    state: str
    error: str
    count: int
    since: datetime
    latest: datetime


@dataclass(frozen=True, slots=True)
class ErrorGroups:
    groups: list[ErrorGroup]
    sampled: int
    is_partial: bool  # the sample was full: counts are lower bounds


@dataclass(frozen=True, slots=True)
class Work:
    id: int
    state: str
    attempt: int
    claimed_by: int | None
    created_at: datetime
    scheduled_at: datetime
    attempted_at: datetime | None
    finalized_at: datetime | None


@dataclass(frozen=True, slots=True)
class Moment:
    """One line of a resource's timeline."""

    at: datetime
    what: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ResourcePage:
    resource: Resource[Any]
    object_json: str
    works: list[Work]
    timeline: list[Moment]


@dataclass(frozen=True, slots=True)
class Minute:
    counts: dict[str, int]  # namespace -> works finished
    is_capped: bool  # counted up to FINISHED_CAP: each count is a lower bound


@dataclass(frozen=True, slots=True)
class Chart:
    start: float  # epoch seconds of the first minute
    finished: dict[str, list[int]]  # namespace -> works finished a minute
    capped: list[bool]  # per minute: Minute.is_capped


class FinishedChart:
    """Works finished per namespace and minute over the last hour, settled minutes cached."""

    def __init__(self) -> None:
        self._settled: dict[int, Minute] = {}  # minute (epoch s) -> its counts

    async def read(self, conn: psycopg.AsyncConnection) -> Chart:
        cur = await conn.execute(console_sql.SELECT_NOW)
        now = float((await cur.fetchone() or (0.0,))[0])
        current = math.floor(now / 60) * 60
        start = current - (CHART_MINUTES - 1) * 60
        minutes = list(range(start, current + 60, 60))
        settled_until = math.floor((now - SETTLED) / 60) * 60  # minutes before it settled
        for minute in [m for m in self._settled if m < start]:
            del self._settled[minute]
        counted = [m for m in minutes if m not in self._settled]
        rows = await _pipelined(conn, [
            (console_sql.SELECT_FINISHED_IN_MINUTE, {"minute": m, "cap": FINISHED_CAP})
            for m in counted
        ])  # fmt: skip
        fresh: dict[int, Minute] = {}
        for minute, counts in zip(counted, rows, strict=True):
            by_namespace = {namespace: int(n) for namespace, n in counts}
            fresh[minute] = Minute(by_namespace, sum(by_namespace.values()) > FINISHED_CAP)
            if minute < settled_until:
                self._settled[minute] = fresh[minute]
        merged = {**self._settled, **fresh}
        names = sorted({ns for minute in merged.values() for ns in minute.counts})
        return Chart(
            float(start),
            {ns: [merged[m].counts.get(ns, 0) for m in minutes] for ns in names},
            [merged[m].is_capped for m in minutes],
        )


async def read_overview(conn: psycopg.AsyncConnection, chart: FinishedChart) -> Overview:
    """Everything the overview shows, in a few bounded statements."""
    async with conn.transaction():
        await conn.execute(status_sql.WITHOUT_JIT)  # for SELECT_QUEUES (see there)
        leaders, actors, queues, namespaces, informers = await _pipelined(
            conn,
            [
                (status_sql.SELECT_LEADER, None),
                (status_sql.SELECT_ACTORS, None),
                (status_sql.SELECT_QUEUES, status_sql.QUEUE_PARAMS),
                (console_sql.SELECT_NAMESPACES, None),
                (status_sql.SELECT_INFORMERS_STATUS, None),
            ],
        )
    leader = leaders[0] if leaders else None
    chart_read = await chart.read(conn)
    finished = chart_read.finished
    kinds = await count_resources(conn)
    by_name: dict[str, Namespace] = {
        name: Namespace(name, paused_at) for name, paused_at in namespaces
    }
    for name, available, running, waiting, lag, _, capped, waiting_capped, _ in queues:
        paused = by_name[name].paused_at if name in by_name else None
        by_name[name] = Namespace(
            name, paused,
            await _past_cap(conn, status_sql.ESTIMATE_AVAILABLE, name, available, capped),
            running,
            await _past_cap(conn, status_sql.ESTIMATE_WAITING, name, waiting, waiting_capped),
            lag or 0.0, available_estimated=capped, waiting_estimated=waiting_capped,
        )  # fmt: skip
    for name in finished:
        by_name.setdefault(name, Namespace(name, None))
    return Overview(
        leader=Leader(*leader) if leader else None,
        actors=[_actor(row) for row in actors],
        namespaces=[
            Namespace(
                ns.name,
                ns.paused_at,
                ns.available,
                ns.running,
                ns.waiting,
                ns.lag,
                finished.get(ns.name, [0] * CHART_MINUTES),
                ns.available_estimated,
                ns.waiting_estimated,
                chart_read.capped,
            )
            for ns in sorted(by_name.values(), key=lambda n: n.name)
        ],
        kinds=kinds,
        informers=[
            Informer(k, r, s, ea, _last_line(e or ""), n, q, ru, f)
            for k, r, s, ea, e, _cursor, n, q, ru, f in informers
        ],
        chart_start=chart_read.start,
    )


async def count_resources(conn: psycopg.AsyncConnection) -> list[KindCounts]:
    """Resources by kind and state: exact on a small table, partly estimated on a large one."""
    row = await _one(conn, console_sql.SELECT_RESOURCE_ESTIMATE)
    reltuples = float(row[0]) if row else -1.0
    if reltuples < EXACT_LIMIT:
        counts: dict[str, dict[str, int]] = {}
        for kind, state, count in await _all(conn, status_sql.COUNT_RESOURCES_BY_STATE):
            counts.setdefault(kind, {})[state] = int(count)
        return [KindCounts(kind, states, frozenset()) for kind, states in sorted(counts.items())]
    kinds = [r[0] for r in await _all(conn, console_sql.SELECT_KINDS, {"limit": KINDS})]
    exact: dict[str, dict[str, int]] = {kind: {} for kind in kinds}
    for kind, state, count in await _all(conn, leader_sql.COUNT_TROUBLED_RESOURCES):
        exact.setdefault(kind, {})[state] = int(count)
    for kind, count in await _all(conn, console_sql.COUNT_RUNNING_RESOURCES):
        exact.setdefault(kind, {})["running"] = int(count)
    pairs = [(kind, state) for kind in kinds for state in ESTIMATED_STATES]
    plans = await _pipelined(
        conn, [(console_sql.ESTIMATE_KIND_STATE, {"kind": k, "state": s}) for k, s in pairs]
    )
    estimates = {
        pair: int(rows[0][0][0]["Plan"]["Plan Rows"])
        for pair, rows in zip(pairs, plans, strict=True)
    }
    result = []
    for kind in kinds:
        states = dict(exact.get(kind, {}))
        estimated = set()
        for state in ESTIMATED_STATES:
            rows = estimates[kind, state]
            if rows > 1:  # the planner never estimates below one row
                states[state] = rows
                estimated.add(state)
        if "synced" in states and "running" in states:
            states["synced"] = max(states["synced"] - states["running"], 0)
        result.append(KindCounts(kind, states, frozenset(estimated)))
    return result


async def list_resources(
    conn: psycopg.AsyncConnection, where: bulk.ResourceFilter, after: str | None, limit: int
) -> Page[Resource[Any]]:
    """One keyset page of resources (objects left encoded: the console has no types)."""
    rows, cursor = await drive_async(conn, bulk.list_resources(where, after, limit))
    return Page([StoredRow(*row).resource(None) for row in rows], cursor)


async def list_jobs(
    conn: psycopg.AsyncConnection, where: bulk.JobFilter, after: str | None, limit: int
) -> Page[JobRow]:
    return await drive_async(conn, bulk.list_jobs(where, after, limit))


async def read_error_groups(
    conn: psycopg.AsyncConnection, where: bulk.ResourceFilter
) -> ErrorGroups:
    """Failed and degraded resources matching `where`, grouped by their newest error."""
    params = where.params()
    params.update(sample=ERROR_SAMPLE, limit=ERROR_GROUPS)
    rows = await _all(conn, console_sql.SELECT_ERROR_GROUPS, params)
    sampled = int(rows[0][6]) if rows else 0
    return ErrorGroups(
        [ErrorGroup(kind, state, error, int(n), since, latest)
         for kind, state, error, n, since, latest, _ in rows],
        sampled, sampled >= ERROR_SAMPLE,
    )  # fmt: skip


async def count_matches(conn: psycopg.AsyncConnection, where: bulk.ResourceFilter) -> bulk.Count:
    """How many resources an action on `where` would touch (its confirmation shows it)."""
    return await drive_async(conn, bulk.count_resources_up_to(where, CONFIRM_CAP))


async def count_job_matches(conn: psycopg.AsyncConnection, where: bulk.JobFilter) -> bulk.Count:
    return await drive_async(conn, bulk.count_jobs_up_to(where, CONFIRM_CAP))


async def read_resource(
    conn: psycopg.AsyncConnection, kind: str, object_id: str
) -> ResourcePage | None:
    """One resource with its stored object, live works and timeline; None if unknown."""
    row = await _one(conn, resource_sql.GET_RESOURCE, (kind, object_id))
    if row is None:
        return None
    stored = StoredRow(*row)
    resource = stored.resource(None)
    works = [Work(*w) for w in await _all(
        conn, status_sql.SELECT_LIVE_WORKS_OF_RESOURCE, {"id": stored.id})]  # fmt: skip
    try:
        pretty = msgspec.json.format(bytes(stored.object), indent=2).decode()
    except (msgspec.DecodeError, UnicodeDecodeError):
        pretty = bytes(stored.object).decode(errors="replace")
    return ResourcePage(resource, pretty, works, _timeline(resource, works))


async def read_informers(conn: psycopg.AsyncConnection) -> list[Informer]:
    rows = await _all(conn, status_sql.SELECT_INFORMERS_STATUS)
    return [Informer(k, r, s, ea, _last_line(e or ""), n, q, ru, f)
            for k, r, s, ea, e, _cursor, n, q, ru, f in rows]  # fmt: skip


async def read_periodic(conn: psycopg.AsyncConnection) -> list[Periodic]:
    return [Periodic(*row) for row in await _all(conn, leader_sql.SELECT_PERIODICS)]


def _timeline(resource: Resource[Any], works: list[Work]) -> list[Moment]:
    """What the row remembers, newest first: its bounded errors, its live works, its marks."""
    moments = [Moment(resource.created_at, "created")]
    moments += [
        Moment(datetime.fromtimestamp(e.at, tz=resource.created_at.tzinfo),
               f"attempt {e.attempt} failed", e.error)
        for e in resource.errors
    ]  # fmt: skip
    for work in works:
        moments.append(Moment(work.created_at, f"work {work.id} queued", work.state))
        if work.attempted_at is not None:
            moments.append(Moment(work.attempted_at, f"work {work.id} started"))
    if resource.synced_at is not None:
        moments.append(Moment(resource.synced_at, "synced"))
    if resource.deletion_requested_at is not None:
        moments.append(Moment(resource.deletion_requested_at, "deletion requested"))
    moments.append(Moment(resource.updated_at, f"last change: {resource.state.value}",
                          f"generation {resource.generation}"))  # fmt: skip
    return sorted(moments, key=lambda m: m.at, reverse=True)


async def _past_cap(
    conn: psycopg.AsyncConnection, estimate: Any, namespace: str, counted: int, is_capped: bool
) -> int:
    """A queue's count, or, when it stopped at QUEUE_COUNT_CAP, the planner's estimate."""
    if not is_capped:
        return int(counted)
    row = await _one(conn, estimate, (namespace,))
    return status_sql.planned_rows(row[0] if row else None)


def _actor(row: tuple[Any, ...]) -> Actor:
    id_, host, pid, namespace, role, started, age, health = row
    components = msgspec.convert(health, list[ComponentHealth])
    stalled = [c.name for c in components if c.since_progress + age > c.stall_after]
    return Actor(id_, host, pid, namespace, role, started, age, stalled)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def newest_error(errors: list[JobError]) -> str:
    return errors[-1].error if errors else ""


async def _pipelined(
    conn: psycopg.AsyncConnection, statements: list[tuple[Any, Any]]
) -> list[list[tuple[Any, ...]]]:
    """Run independent statements in one pipeline: one round trip, not one each."""
    async with conn.pipeline():
        cursors = [await conn.execute(statement, params) for statement, params in statements]
        return [await cur.fetchall() for cur in cursors]


async def _one(
    conn: psycopg.AsyncConnection, statement: Any, params: Any = None
) -> tuple[Any, ...] | None:
    cur = await conn.execute(statement, params)
    return await cur.fetchone()


async def _all(
    conn: psycopg.AsyncConnection, statement: Any, params: Any = None
) -> list[tuple[Any, ...]]:
    cur = await conn.execute(statement, params)
    return await cur.fetchall()
