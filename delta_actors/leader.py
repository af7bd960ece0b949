"""The leader actor: the duties that run once per cluster, not once per process.

Services (each a named task; a service's failing run is logged and retried on its next
interval, never stopping the others):
- scheduler: promotes due scheduled and retryable jobs (queue/scheduler.py);
- rescuer: returns the claims of dead actors to work (rescue.py), within the heartbeat TTL.

The leader registers in `delta_actor` (role "leader") and heartbeats like any actor, so
its own death is visible too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg
from psycopg_pool import AsyncConnectionPool

from delta_actors.database import drive_async, translate_errors
from delta_actors.queue.scheduler import Scheduler
from delta_actors.registration import heartbeat, register_actor, unregister_actor
from delta_actors.rescue import find_dead_actors, rescue_actors
from delta_actors.schema import check_schema_async

logger = logging.getLogger(__name__)

LEADER_NAMESPACE = "leader"


class Rescuer:
    """Finds dead actors every `interval` seconds and rescues their claims."""

    def __init__(self, pool: AsyncConnectionPool, *, ttl: float, interval: float) -> None:
        self._pool = pool
        self.ttl = ttl  # seconds without a heartbeat after which an actor is dead
        self.interval = interval

    async def run_once(self) -> dict[str, int]:
        """Rescue once; return how many actors were dead and claims rescued."""
        async with self._pool.connection() as conn:
            dead = await drive_async(conn, find_dead_actors(self.ttl))
            if not dead:
                return {"actors": 0, "claims": 0}
            async with conn.transaction():
                rescued = await drive_async(conn, rescue_actors(dead, "stopped heartbeating"))
        logger.warning(
            "rescued %d claims of %d dead actors %s", rescued, len(dead), dead,
            extra={"event": "leader.rescued", "claims": rescued},
        )  # fmt: skip
        return {"actors": len(dead), "claims": rescued}

    async def run(self) -> None:
        """Rescue until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.run_once()
            except (psycopg.Error, OSError) as exc:
                logger.warning("rescue failed: %s", exc, extra={"event": "leader.rescue_failed"})


class Leader:
    """Runs the cluster-wide maintenance services in one actor process."""

    def __init__(
        self,
        dsn: str,
        *,
        heartbeat_interval: float = 2.0,
        rescue_ttl: float = 10.0,
        rescue_interval: float = 1.0,
    ) -> None:
        self._dsn = dsn
        self._heartbeat_interval = heartbeat_interval
        self._pool = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=3,
            kwargs={"autocommit": True},
            open=False,
            name="delta-leader",
        )
        self.scheduler = Scheduler(self._pool)
        self.rescuer = Rescuer(self._pool, ttl=rescue_ttl, interval=rescue_interval)
        self.actor_id: int | None = None
        self._main: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect, register and start the services; returns once started."""
        if self._main is not None:
            return
        with translate_errors("start leader", self._dsn):
            await self._pool.open(wait=True, timeout=30)
            async with self._pool.connection() as conn:
                await check_schema_async(conn)
                self.actor_id = await register_actor(conn, LEADER_NAMESPACE, "leader")
        self._main = asyncio.create_task(self._run_services(), name="leader:main")

    async def _run_services(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.scheduler.run(), name="leader:scheduler")
            group.create_task(self.rescuer.run(), name="leader:rescuer")
            assert self.actor_id is not None
            group.create_task(
                heartbeat(self._pool, self.actor_id, self._heartbeat_interval),
                name="leader:heartbeat",
            )

    async def wait_stopped(self) -> None:
        """Wait until the services end; re-raise what made them fail."""
        assert self._main is not None
        with contextlib.suppress(asyncio.CancelledError):
            await self._main

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop the services and unregister; idempotent."""
        if self._main is None or (self._main.done() and self._pool.closed):
            return
        self._main.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._main, timeout)
        if self.actor_id is not None:
            await unregister_actor(self._pool, self.actor_id)
        await self._pool.close()
