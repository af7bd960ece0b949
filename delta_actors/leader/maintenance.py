"""The leader's maintenance services: rescue, expiry, cleanup (promotion lives in
queue/promoter.py).

Each is a small service with its own interval and a `run_once()` that returns counts of
what it did; `run_periodically()` reschedules first, then works, logs only when it did
something, reports each pass to the duty's `Progress`, and survives any Exception (a
database error is logged in a line, anything else with its traceback; both are tried
again next interval). A pass that hangs is cancelled after half the duty's stall time,
so one stuck statement costs a pass, not the duty. Every statement is index-backed and
batch-limited (`BATCH` rows), so one run never holds many locks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import LiteralString

import psycopg
from psycopg_pool import AsyncConnectionPool

from delta_actors.app import App
from delta_actors.cancellation import raise_if_cancelling
from delta_actors.db import event_sql, job_sql, leader_sql, resource_sql
from delta_actors.db.connection import drive_async
from delta_actors.events import SUBSCRIBER_TTL
from delta_actors.health import Progress, log_failure
from delta_actors.leader.rescue import find_dead_actors, rescue_actors

logger = logging.getLogger(__name__)

BATCH = 1000
CLEANUP_BATCH = 5000  # rows per cleanup statement: fewer round trips, locks still bounded
EVENT_BATCHES_PER_RUN = 1000  # at 1,000 rows each: 1M events a run, ~16k/s at 60 s
ORPHAN_INTERVAL = 60.0  # seconds between looks for claims of actors without a row


async def run_periodically(
    name: str,
    interval: float,
    run_once: Callable[[], Awaitable[dict[str, int]]],
    progress: Progress | None = None,
) -> None:
    """Call `run_once` every `interval` seconds until cancelled; log what it did."""
    progress = progress or Progress(name, interval)
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        next_at = max(next_at + interval, loop.time())  # a slow pass does not pile up passes
        try:
            async with progress.deadline():
                did = await run_once()
        except Exception as exc:  # noqa: BLE001 (a duty survives anything; see the docstring)
            progress.failed(exc)
            log_failure(logger, f"{name} failed", exc, f"{name}.failed")
        else:
            progress.ok()
            if any(did.values()):
                logger.info("%s: %s", name, did, extra={"event": f"{name}.ran", **did})
        raise_if_cancelling()
        await asyncio.sleep(max(0.0, next_at - loop.time()))


class Rescuer:
    """Finds dead actors and returns their claims to work.

    Actors past the TTL are looked for every `interval`; claims of actors without a row
    (a safety net: rescue deletes the row and returns the claims in one transaction)
    every `orphan_interval`, and on the first run: that look reads the whole running
    index, which a held snapshot fills with every claim since (actor_sql.py).
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        ttl: float,
        interval: float = 1.0,
        orphan_interval: float = ORPHAN_INTERVAL,
    ) -> None:
        self._pool = pool
        self.ttl = ttl  # seconds without a heartbeat after which an actor is dead
        self.interval = interval
        self.orphan_interval = orphan_interval
        self._orphans_at = 0.0  # loop time of the next look for claims without an actor
        self.rescued_claims = 0  # since this process started (a metric)

    async def run_once(self) -> dict[str, int]:
        """Rescue once; return how many actors were dead and claims rescued."""
        now = asyncio.get_running_loop().time()
        orphans = now >= self._orphans_at
        async with self._pool.connection() as conn:
            dead = await drive_async(conn, find_dead_actors(self.ttl, orphans))
            if orphans:
                self._orphans_at = now + self.orphan_interval
            if not dead:
                return {"actors": 0, "claims": 0}
            async with conn.transaction():
                rescued = await drive_async(conn, rescue_actors(dead, "stopped heartbeating"))
        self.rescued_claims += rescued
        return {"actors": len(dead), "claims": rescued}


class Expirer:
    """Re-works synced resources older than their namespace's `resource_expiry`."""

    def __init__(self, app: App, pool: AsyncConnectionPool, *, interval: float = 5.0) -> None:
        self._namespaces = {
            name: ns.resource_expiry
            for name, ns in app.namespaces.items()
            if ns.resource_expiry is not None
        }
        self._pool = pool
        self.interval = interval

    async def run_once(self) -> dict[str, int]:
        """Expire every due resource, in batches; return how many."""
        expired = 0
        async with self._pool.connection() as conn:
            for namespace, expiry in self._namespaces.items():
                while True:
                    cur = await conn.execute(
                        resource_sql.EXPIRE_RESOURCES,
                        {"namespace": namespace, "expiry": expiry, "limit": BATCH},
                    )
                    row = await cur.fetchone()
                    count = int(row[0]) if row else 0
                    expired += count
                    if count < BATCH:
                        break
        return {"expired": expired}


class Cleaner:
    """Deletes finished jobs and deleted resources past their namespace's retention, and
    events every live subscriber has read (events.py).

    Keeping up: each run deletes batch after batch (each its own statement, `limit` rows,
    so locks stay bounded) until nothing is due, or until half its interval is spent, so
    a backlog (a retention just shortened, a leader back after an outage) is worked off
    at the speed of the deletes, not one batch per interval.
    """

    def __init__(
        self,
        app: App,
        pool: AsyncConnectionPool,
        *,
        interval: float = 60.0,
        limit: int = CLEANUP_BATCH,
    ) -> None:
        self._namespaces = dict(app.namespaces)
        self._pool = pool
        self.interval = interval
        self.limit = limit  # rows per statement

    async def run_once(self) -> dict[str, int]:
        """Delete what is due, batch after batch; return how many rows went."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.interval / 2
        jobs = resources = 0
        async with self._pool.connection() as conn:
            for name, namespace in self._namespaces.items():
                for statement, retention in (
                    (job_sql.DELETE_FINISHED_WORKS, namespace.work_retention),
                    (job_sql.DELETE_COMPLETED_JOBS, namespace.completed_retention),
                    (job_sql.DELETE_FAILED_JOBS, namespace.retention),
                ):
                    jobs += await self._until_done(
                        conn, statement, name, retention, deadline, keyset=True
                    )
                resources += await self._until_done(
                    conn, resource_sql.DELETE_DELETED_RESOURCES, name, namespace.retention,
                    deadline, keyset=False,
                )  # fmt: skip
            events = await self._delete_read_events(conn)
            cur = await conn.execute(leader_sql.DELETE_OLD_INFORMER_RUNS, {"limit": self.limit})
            informer_runs = cur.rowcount
            cur = await conn.execute(event_sql.DELETE_LAPSED_SUBSCRIBERS, {"grace": SUBSCRIBER_TTL})
            subscribers = cur.rowcount
        return {
            "jobs": jobs, "resources": resources, "events": events, "subscribers": subscribers,
            "informer_runs": informer_runs,
        }  # fmt: skip

    async def _until_done(
        self,
        conn: psycopg.AsyncConnection,
        statement: LiteralString,
        namespace: str,
        retention: float,
        deadline: float,
        *,
        keyset: bool,  # the statement returns finalized_at and takes `after` (job_sql)
    ) -> int:
        params: dict[str, object] = {
            "namespace": namespace, "retention": retention, "limit": self.limit,
            "after": "-infinity",
        }  # fmt: skip
        deleted = 0
        loop = asyncio.get_running_loop()
        while True:
            cur = await conn.execute(statement, params)
            deleted += cur.rowcount
            if cur.rowcount < self.limit or loop.time() >= deadline:
                return deleted
            if keyset:
                # The next batch starts where this one ended (see job_sql).
                params["after"] = max(row[0] for row in await cur.fetchall())

    async def _delete_read_events(self, conn: psycopg.AsyncConnection) -> int:
        # Events pile up as fast as works finish: keep deleting, a batch per statement,
        # until they are caught up or this run has done its share.
        deleted = 0
        for _ in range(EVENT_BATCHES_PER_RUN):
            cur = await conn.execute(event_sql.DELETE_READ_EVENTS, {"limit": self.limit})
            deleted += cur.rowcount
            if cur.rowcount < self.limit:
                break
        return deleted
